"""The Wahero client over real loopback HTTP: one test per row of WAHERO_API.md's outcome table."""

from __future__ import annotations

import json
import logging
import os
import pickle
import socket
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import worker
from tests.simfixture import SIM_KEY, SimControl
from worker.apikey import ApiKeySource, fingerprint
from worker.client import SendResult, WaheroClient, classify_response
from worker.errors import (
    AmbiguousError,
    ForbiddenError,
    InvalidRequestError,
    QuotaExceededError,
    RateLimitedError,
    SendError,
    TransientError,
    UnauthorizedError,
)
from worker.settings import ConfigError, Settings

# Until tests/conftest.py lists it, load the simulator fixtures here.

INSTANCE = "0b6c3c9e-4a53-4d0e-9d59-0d2f7c2d9b1a"
PHONE = "628123456789"


def make_settings(url: str, key: str | None = SIM_KEY, **env: Any) -> Settings:
    values: dict[str, Any] = {"WAHERO_BASE_URL": url, "WAHERO_READ_TIMEOUT": 5, **env}
    if key is not None:
        values["WAHERO_API_KEY"] = key
    return Settings.model_validate(values)


@pytest.fixture
def client_for() -> Iterator[Callable[..., WaheroClient]]:
    """Factory: a WaheroClient for a URL (and settings overrides), closed at teardown."""
    clients: list[WaheroClient] = []

    def make(url: str, key: str | None = SIM_KEY, **env: Any) -> WaheroClient:
        client = WaheroClient(make_settings(url, key, **env), pool_size=4)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


class Canned(ThreadingHTTPServer):
    """A tiny server answering whatever the test sets: for bodies the simulator never sends."""

    daemon_threads = True
    status = 200
    headers: dict[str, str] = {}
    body = b""
    seen: list[tuple[dict[str, str], bytes]]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def answer(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.body = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.headers = headers or {}


class _Handler(BaseHTTPRequestHandler):
    server: Canned

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        self.server.seen.append((dict(self.headers), self.rfile.read(length)))
        self.send_response(self.server.status)
        for name, value in self.server.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(self.server.body)))
        self.end_headers()
        self.wfile.write(self.server.body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def canned() -> Iterator[Canned]:
    server = Canned(("127.0.0.1", 0), _Handler)
    server.seen = []
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def send(client: WaheroClient, phone: str = PHONE, message: str = "halo") -> SendResult:
    return client.send(INSTANCE, phone, message)


# ------------------------------------------------------------------ 2xx, success: true


def test_accepted_message_carries_id_cost_and_rate_limit(
    sim_thread: Callable[..., SimControl], client_for: Callable[..., WaheroClient]
) -> None:
    sim = sim_thread(rate_limit=100, rate_window=60.0)
    result = send(client_for(sim.url))
    assert result.provider_message_id == "SIM0000000001"
    assert result.cost == Decimal("350.00") and result.currency == "IDR"
    assert result.http_status == 200 and result.elapsed > 0
    assert result.key_fingerprint == fingerprint(SIM_KEY)
    assert result.rate_limit is not None
    assert (result.rate_limit.limit, result.rate_limit.remaining) == (100, 99)
    assert result.rate_limit.reset is not None and result.rate_limit.reset > datetime.now(UTC)
    [record] = sim.received()
    assert (record["phone"], record["instance_id"], record["message"]) == (PHONE, INSTANCE, "halo")


def test_request_shape(canned: Canned, client_for: Callable[..., WaheroClient]) -> None:
    canned.answer(200, {"success": True, "data": {"messageId": "m1"}})
    send(client_for(canned.url))
    [(headers, body)] = canned.seen
    assert headers["X-Api-Key"] == SIM_KEY
    assert headers["User-Agent"] == f"wahero-bulk/{worker.__version__}"
    assert json.loads(body) == {"instanceId": INSTANCE, "phone": PHONE, "message": "halo"}


@pytest.mark.parametrize(
    "body",
    [
        {"success": True, "message_id": "X1"},
        {"success": True, "messageId": "X1"},
        {"success": True, "data": {"message_id": "X1"}},
        {"success": True, "data": {"messageId": "X1"}},
        {"success": True, "data": {"id": "X1"}},
    ],
)
def test_message_id_variants(
    body: dict[str, Any], canned: Canned, client_for: Callable[..., WaheroClient]
) -> None:
    canned.answer(200, body)
    assert send(client_for(canned.url)).provider_message_id == "X1"


@pytest.mark.parametrize(
    ("payload", "cost", "currency"),
    [
        (b'{"success":true,"data":{"id":"a","cost":0.1,"currency":"usd"}}', "0.1", "USD"),
        (b'{"success":true,"data":{"id":"a","price":"350.00"}}', "350.00", "IDR"),
        (b'{"success":true,"id":"a","cost":"12.5","currency":"IDR"}', "12.5", "IDR"),
        (b'{"success":true,"price":275,"data":{"id":"a"}}', "275", "IDR"),
        (b'{"success":true,"data":{"id":"a","cost":"n/a"}}', None, None),
        (b'{"success":true,"data":{"id":"a","cost":true}}', None, None),
    ],
)
def test_cost_variants_are_exact_decimals(
    payload: bytes,
    cost: str | None,
    currency: str | None,
    canned: Canned,
    client_for: Callable[..., WaheroClient],
) -> None:
    canned.answer(201, payload)
    result = send(client_for(canned.url))
    assert result.cost == (Decimal(cost) if cost else None)
    assert result.currency == currency
    if cost:
        assert str(result.cost) == cost  # exact, never through a float


def test_configured_price_fills_in_a_missing_cost(
    canned: Canned, client_for: Callable[..., WaheroClient]
) -> None:
    canned.answer(200, {"success": True, "data": {"messageId": "m"}})
    client = client_for(canned.url, WAHERO_PRICE_PER_MESSAGE="425.50", WAHERO_CURRENCY="USD")
    result = send(client)
    assert (result.cost, result.currency) == (Decimal("425.50"), "USD")
    assert send(client_for(canned.url)).cost is None  # no price configured: empty, never 0


# ------------------------------------------------------------------ refusals


def test_401_unauthorized(sim: SimControl, client_for: Callable[..., WaheroClient]) -> None:
    with pytest.raises(UnauthorizedError) as caught:
        send(client_for(sim.url, key="wahero_live_not_a_real_key"))
    error = caught.value
    assert (error.code, error.http_status, error.outcome) == ("UNAUTHORIZED", 401, "unauthorized")
    assert error.key_fingerprint == fingerprint("wahero_live_not_a_real_key")


def test_403_forbidden_instance(
    sim_thread: Callable[..., SimControl], client_for: Callable[..., WaheroClient]
) -> None:
    sim = sim_thread(forbidden_instances=[INSTANCE])
    with pytest.raises(ForbiddenError) as caught:
        send(client_for(sim.url))
    assert (caught.value.code, caught.value.http_status) == ("FORBIDDEN", 403)


def test_429_rate_limited_carries_retry_after(
    sim_thread: Callable[..., SimControl], client_for: Callable[..., WaheroClient]
) -> None:
    sim = sim_thread(rate_limit=1, rate_window=60.0)
    client = client_for(sim.url)
    send(client)
    with pytest.raises(RateLimitedError) as caught:
        send(client)
    assert caught.value.code == "RATE_LIMIT_EXCEEDED" and caught.value.http_status == 429
    assert 1 <= caught.value.retry_after <= 60


@pytest.mark.parametrize("status", [429, 402])
def test_quota_exhausted_says_when_it_resets(
    status: int, sim_thread: Callable[..., SimControl], client_for: Callable[..., WaheroClient]
) -> None:
    sim = sim_thread(daily_quota=1, quota_status=status, quota_day_seconds=7200.0)
    client = client_for(sim.url)
    send(client)
    with pytest.raises(QuotaExceededError) as caught:
        send(client)
    resume = caught.value.resume_at
    assert caught.value.code == "QUOTA_EXCEEDED" and caught.value.http_status == status
    assert resume is not None
    assert timedelta(minutes=110) < resume - datetime.now(UTC) < timedelta(minutes=121)


def test_insufficient_balance_is_quota(
    canned: Canned, client_for: Callable[..., WaheroClient]
) -> None:
    body = {"success": False, "error": {"code": "INSUFFICIENT_BALANCE", "message": "top up"}}
    canned.answer(429, body, {"Retry-After": "120"})
    with pytest.raises(QuotaExceededError) as caught:
        send(client_for(canned.url))
    assert caught.value.resume_at is not None and caught.value.detail == "top up"


@pytest.mark.parametrize(
    ("phone", "message"), [("08123456789", "halo"), (PHONE, ""), (PHONE, "x" * 4097)]
)
def test_422_validation_error(
    phone: str, message: str, sim: SimControl, client_for: Callable[..., WaheroClient]
) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        send(client_for(sim.url), phone, message)
    assert (caught.value.code, caught.value.http_status) == ("VALIDATION_ERROR", 422)
    assert sim.received() == []


@pytest.mark.parametrize(("status", "code"), [(404, "INSTANCE_NOT_FOUND"), (400, "BAD_REQUEST")])
def test_other_4xx_are_permanent(
    status: int, code: str, canned: Canned, client_for: Callable[..., WaheroClient]
) -> None:
    canned.answer(status, {"success": False, "error": {"code": code, "message": "no"}})
    with pytest.raises(InvalidRequestError) as caught:
        send(client_for(canned.url))
    assert (caught.value.code, caught.value.http_status) == (code, status)


# ------------------------------------------------------------------ never reached: transient


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_connect_error_is_transient(client_for: Callable[..., WaheroClient]) -> None:
    with pytest.raises(TransientError) as caught:
        send(client_for(f"http://127.0.0.1:{_closed_port()}"))
    assert caught.value.code == "CONNECT_ERROR"
    assert caught.value.__cause__ is not None


def test_connect_timeout_is_transient(client_for: Callable[..., WaheroClient]) -> None:
    # A listening socket whose accept queue is full drops further SYNs: a local connect timeout.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        client = client_for(f"http://127.0.0.1:{port}", WAHERO_CONNECT_TIMEOUT=0.3)
        with pytest.raises(SendError) as caught:
            send(client)
        if caught.value.code != "CONNECT_TIMEOUT":
            pytest.skip(f"this kernel did not drop the SYN ({caught.value.code})")
        assert isinstance(caught.value, TransientError)
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


@pytest.mark.parametrize(
    ("knob", "status", "code"),
    [("error_500_rate", 500, "INTERNAL_ERROR"), ("error_503_rate", 503, "INSTANCE_NOT_CONNECTED")],
)
def test_5xx_with_wahero_json_is_transient(
    knob: str,
    status: int,
    code: str,
    sim_thread: Callable[..., SimControl],
    client_for: Callable[..., WaheroClient],
) -> None:
    sim = sim_thread(**{knob: 1.0})
    with pytest.raises(TransientError) as caught:
        send(client_for(sim.url))
    assert (caught.value.code, caught.value.http_status) == (code, status)
    assert sim.received() == []


def test_409_instance_not_connected_is_transient(
    canned: Canned, client_for: Callable[..., WaheroClient]
) -> None:
    canned.answer(409, {"success": False, "error": {"code": "INSTANCE_NOT_CONNECTED"}})
    with pytest.raises(TransientError):
        send(client_for(canned.url))


# ------------------------------------------------------------------ may have been sent: ambiguous


@pytest.mark.parametrize(
    ("knob", "recorded"), [("timeout_after_accept_rate", 1), ("timeout_rate", 0)]
)
def test_read_timeout_is_ambiguous(
    knob: str,
    recorded: int,
    sim_thread: Callable[..., SimControl],
    client_for: Callable[..., WaheroClient],
) -> None:
    sim = sim_thread(**{knob: 1.0}, hang_seconds=10.0)
    with pytest.raises(AmbiguousError) as caught:
        send(client_for(sim.url, WAHERO_READ_TIMEOUT=0.2))
    assert caught.value.code == "READ_TIMEOUT" and caught.value.__cause__ is not None
    assert len(sim.received()) == recorded


@pytest.mark.parametrize(("knob", "recorded"), [("drop_after_accept_rate", 1), ("drop_rate", 0)])
def test_dropped_connection_is_ambiguous(
    knob: str,
    recorded: int,
    sim_thread: Callable[..., SimControl],
    client_for: Callable[..., WaheroClient],
) -> None:
    sim = sim_thread(**{knob: 1.0})
    with pytest.raises(AmbiguousError) as caught:
        send(client_for(sim.url))
    assert caught.value.code == "CONNECTION_DROPPED"
    assert len(sim.received()) == recorded


@pytest.mark.parametrize(("knob", "status"), [("error_502_rate", 502), ("error_504_rate", 504)])
def test_gateway_html_is_ambiguous(
    knob: str,
    status: int,
    sim_thread: Callable[..., SimControl],
    client_for: Callable[..., WaheroClient],
) -> None:
    sim = sim_thread(**{knob: 1.0})
    with pytest.raises(AmbiguousError) as caught:
        send(client_for(sim.url))
    assert caught.value.http_status == status
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 400


def test_non_json_500_is_ambiguous(canned: Canned, client_for: Callable[..., WaheroClient]) -> None:
    canned.answer(500, b"<html><body>Internal Server Error</body></html>")
    with pytest.raises(AmbiguousError) as caught:
        send(client_for(canned.url))
    assert caught.value.code == "UNREADABLE_RESPONSE"


def test_non_json_200_is_ambiguous(canned: Canned, client_for: Callable[..., WaheroClient]) -> None:
    canned.answer(200, b"OK")
    with pytest.raises(AmbiguousError):
        send(client_for(canned.url))


@pytest.mark.parametrize("body", [b"[]", b'{"success": "yes"}', b'{"data": {}}', b"null"])
def test_unreadable_2xx_json_is_ambiguous(body: bytes) -> None:
    with pytest.raises(AmbiguousError):
        classify_response(200, {}, body)


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        (
            {"success": False, "error": {"code": "VALIDATION_ERROR", "message": "bad"}},
            InvalidRequestError,
        ),
        ({"success": False, "error": {"code": "QUOTA_EXCEEDED"}}, QuotaExceededError),
        ({"success": False, "error": {"code": "UNAUTHORIZED"}}, UnauthorizedError),
        ({"success": False, "error": "something odd"}, TransientError),
        ({"success": False}, TransientError),
    ],
)
def test_200_with_success_false_is_a_failure(
    body: dict[str, Any],
    kind: type[SendError],
    canned: Canned,
    client_for: Callable[..., WaheroClient],
) -> None:
    canned.answer(200, body)
    with pytest.raises(kind) as caught:
        send(client_for(canned.url))
    assert caught.value.http_status == 200


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (200, b"[1, 2]"),
        (200, b'"text"'),
        (200, b'{"success": "yes"}'),
        (500, b'{"error": 12}'),
        (429, b"{"),
        (503, b"\xff\xfe"),
        (302, b""),
        (200, b"[" * 100_000),
    ],
)
def test_odd_bodies_classify_without_crashing(status: int, body: bytes) -> None:
    with pytest.raises(SendError):
        classify_response(status, {}, body)


def test_rate_limit_reset_header_is_a_fallback_for_retry_after() -> None:
    now = datetime(2025, 1, 1, tzinfo=UTC)
    reset = str(int((now + timedelta(seconds=30)).timestamp()))
    with pytest.raises(RateLimitedError) as caught:
        classify_response(429, {"x-ratelimit-reset": reset}, b"{}", now=now)
    assert caught.value.retry_after == 30
    with pytest.raises(RateLimitedError) as default:
        classify_response(429, {}, b"", now=now)
    assert default.value.retry_after == 60


# ------------------------------------------------------------------ the key stays secret


def test_the_key_never_appears_in_logs_errors_or_reprs(
    sim_thread: Callable[..., SimControl],
    client_for: Callable[..., WaheroClient],
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = "wahero_live_SECRET_do_not_leak_123"
    sim = sim_thread(keys=[secret])
    caplog.set_level(logging.DEBUG)
    for name in ("urllib3", "urllib3.connectionpool", "requests", "worker"):
        caplog.set_level(logging.DEBUG, logger=name)
    client = client_for(sim.url, key=secret, WAHERO_READ_TIMEOUT=0.2)
    texts = [repr(client), str(client), repr(ApiKeySource(secret)), repr(send(client))]
    faults: list[dict[str, Any]] = [
        {"drop_after_accept_rate": 1.0},
        {"timeout_rate": 1.0, "hang_seconds": 5.0, "drop_after_accept_rate": 0.0},
        {"timeout_rate": 0.0, "error_502_rate": 1.0},
        {"error_502_rate": 0.0, "keys": ["another"]},
    ]
    for knobs in faults:
        sim.configure(**knobs)
        with pytest.raises(SendError) as caught:
            send(client)
        error: BaseException | None = caught.value
        while error is not None:  # the whole cause chain, as a traceback would show it
            texts += [str(error), repr(error), repr(error.args), repr(vars(error))]
            error = error.__cause__ or error.__context__
        texts.append(repr(pickle.loads(pickle.dumps(caught.value))))
    texts.append(json.dumps(sim.received()) + json.dumps(sim.config()))
    for text in [*texts, caplog.text]:
        assert secret not in text
    # The DEBUG request log is there, with the key redacted to its fingerprint.
    assert f"***{fingerprint(secret)}" in caplog.text
    assert "Starting new HTTP connection" in caplog.text  # urllib3's own DEBUG lines were captured


def test_a_key_echoed_by_the_server_is_redacted(
    canned: Canned, client_for: Callable[..., WaheroClient]
) -> None:
    canned.answer(401, {"success": False, "error": {"code": "UNAUTHORIZED", "message": SIM_KEY}})
    with pytest.raises(UnauthorizedError) as caught:
        send(client_for(canned.url))
    assert SIM_KEY not in str(caught.value) and SIM_KEY not in repr(caught.value.args)


# ------------------------------------------------------------------ the key source


def test_rotated_key_file_is_picked_up_without_a_new_client(
    tmp_path: Path,
    sim_thread: Callable[..., SimControl],
    client_for: Callable[..., WaheroClient],
) -> None:
    old, new = "wahero_test_old_key", "wahero_test_new_key_longer"
    sim = sim_thread(keys=[old, new])
    key_file = tmp_path / "wahero_key"
    key_file.write_text(old + "\n")
    client = client_for(sim.url, key=None, WAHERO_API_KEY_FILE=str(key_file))
    assert send(client).key_fingerprint == fingerprint(old)
    replacement = tmp_path / "wahero_key.new"
    replacement.write_text(f"  {new}\n")
    os.replace(replacement, key_file)  # how secret mounts rotate: an atomic swap
    assert client.key_fingerprint == fingerprint(new)
    assert send(client).key_fingerprint == fingerprint(new)
    assert [r["key_fingerprint"] for r in sim.received()] == [fingerprint(old), fingerprint(new)]


def test_same_size_rewrite_is_noticed(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("key_aaaa")
    source = ApiKeySource(api_key_file=key_file)
    assert source.get() == "key_aaaa"
    key_file.write_text("key_bbbb")
    stat = key_file.stat()
    os.utime(key_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert source.get() == "key_bbbb"
    assert "key_" not in repr(source) and "key_" not in str(source)


def test_key_file_beats_the_variable(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("from_file")
    assert ApiKeySource("from_env", key_file).get() == "from_file"


def test_missing_or_empty_keys_name_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="WAHERO_API_KEY"):
        ApiKeySource().get()
    with pytest.raises(ConfigError, match="WAHERO_API_KEY"):
        ApiKeySource("   ").get()
    with pytest.raises(ConfigError, match="WAHERO_API_KEY_FILE"):
        ApiKeySource(api_key_file=tmp_path / "missing").get()
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="WAHERO_API_KEY_FILE"):
        ApiKeySource(api_key_file=empty).get()


def test_a_key_file_caught_mid_rewrite_keeps_the_last_key(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("wahero_test_first")
    source = ApiKeySource(api_key_file=key_file)
    assert source.get() == "wahero_test_first"
    key_file.write_text("")  # an in-place rewrite, caught half way
    assert source.get() == "wahero_test_first"
    key_file.unlink()  # a replace by rename, caught between unlink and rename
    assert source.get() == "wahero_test_first"
    key_file.write_text("wahero_test_second\n")
    assert source.get() == "wahero_test_second"


def test_fingerprint_is_eight_hex_digits_of_sha256() -> None:
    assert fingerprint("abc") == "ba7816bf"


def test_the_environment_proxy_is_honoured_and_no_proxy_bypasses_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import urllib3

    from worker.client import _pool_manager

    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "localhost")
    manager = _pool_manager("https://api.wahero.id/api/v1/messages/send", 8)
    assert isinstance(manager, urllib3.ProxyManager)
    assert manager.proxy is not None and manager.proxy.host == "proxy.internal"
    direct = _pool_manager("https://localhost:8443/api/v1/messages/send", 8)
    assert not isinstance(direct, urllib3.ProxyManager)
