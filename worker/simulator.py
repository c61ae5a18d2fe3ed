"""A built-in Wahero simulator: a real HTTP server with fault knobs and a control API under /_sim/.

The send endpoint behaves as WAHERO_API.md describes; every knob can be set on the command line
and changed at run time with `POST /_sim/config`. Raw keys are never recorded, only fingerprints.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import random
import re
import signal
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import click
from aiohttp import web

from worker.apikey import fingerprint

DEFAULT_KEY = "wahero_test_simulator"  # obviously fake; the default valid key
_PHONE = re.compile(r"^62\d{8,13}$")
_NUMBER = re.compile(r"^\d+(\.\d+)?$")
_JSON = "application/json"
_HTML = b"<html><head><title>%d</title></head><body><h1>%d Bad Gateway</h1>nginx</body></html>"


def _knob(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help, "flag": None})


def _meta(help: str, flag: str) -> dict[str, str]:
    return {"help": help, "flag": flag}


@dataclass
class SimConfig:
    """Every knob of the simulator; JSON keys of `/_sim/config` are these field names."""

    keys: list[str] = field(
        default_factory=lambda: [DEFAULT_KEY],
        metadata=_meta("A valid API key (repeatable).", "key"),
    )
    revoked_keys: list[str] = field(
        default_factory=list, metadata=_meta("A key answered 401 (repeatable).", "revoked-key")
    )
    revoke_after: int = _knob(0, "A key turns invalid after N accepted sends (0: never).")
    forbidden_instances: list[str] = field(
        default_factory=list, metadata=_meta("Instance answered 403.", "forbidden-instance")
    )
    rate_limit: int = _knob(0, "Requests per window per key (0: unlimited).")
    rate_window: float = _knob(1.0, "Rate-limit window in seconds.")
    rate_window_kind: str = _knob("fixed", "fixed or sliding.")
    daily_quota: int = _knob(0, "Accepted messages per quota day (0: unlimited).")
    quota_status: int = _knob(429, "Status of a quota refusal: 429 or 402.")
    quota_code: str = _knob("QUOTA_EXCEEDED", "Error code of a quota refusal.")
    quota_day_seconds: float = _knob(86400.0, "Length of a quota day in seconds.")
    latency_ms: float = _knob(0.0, "Fixed latency of each answer, in ms.")
    jitter_ms: float = _knob(0.0, "Random extra latency, uniform 0..N ms.")
    error_500_rate: float = _knob(0.0, "Fraction answered 500 with Wahero's JSON error.")
    error_503_rate: float = _knob(0.0, "Fraction answered 503 INSTANCE_NOT_CONNECTED.")
    error_502_rate: float = _knob(0.0, "Fraction answered 502 HTML (not accepted).")
    error_504_rate: float = _knob(0.0, "Fraction accepted, then answered 504 HTML.")
    timeout_rate: float = _knob(0.0, "Fraction that hang without being accepted.")
    timeout_after_accept_rate: float = _knob(0.0, "Fraction accepted, then hang.")
    drop_rate: float = _knob(0.0, "Fraction whose connection is closed, not accepted.")
    drop_after_accept_rate: float = _knob(0.0, "Fraction accepted, then connection closed.")
    hang_seconds: float = _knob(30.0, "How long a hang lasts before the socket is closed.")
    cost: str = _knob("350.00", "Cost in the success body ('' for none).")
    cost_as_number: bool = _knob(False, "Send the cost as a JSON number, not a string.")
    currency: str = _knob("IDR", "Currency in the success body.")
    max_message_length: int = _knob(4096, "Longest accepted message.")
    seed: int | None = _knob(None, "Seed of the fault and jitter dice (deterministic runs).")

    def patch(self, changes: dict[str, Any]) -> None:
        """Apply a JSON object of knob changes, checking names and types; raises ValueError."""
        known = {f.name: f for f in dataclasses.fields(self)}
        updates = {}
        for name, value in changes.items():
            if name not in known:
                raise ValueError(f"unknown knob {name!r}")
            updates[name] = _coerce(name, value, getattr(self, name))
        for name, value in updates.items():
            setattr(self, name, value)

    def public(self) -> dict[str, Any]:
        """The config as JSON, with keys shown as fingerprints only."""
        data = dataclasses.asdict(self)
        for name in ("keys", "revoked_keys"):
            data[name] = [f"***{fingerprint(key)}" for key in data[name]]
        return data


def _coerce(name: str, value: Any, current: Any) -> Any:
    if name == "seed":
        return None if value is None else int(value)
    if isinstance(current, list):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{name}: expected a list of strings")
        return list(value)
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{name}: expected true or false")
        return value
    if isinstance(current, int | float) and (isinstance(value, bool) or value is None):
        raise ValueError(f"{name}: expected a number")
    try:
        result = type(current)(value)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name}: expected {type(current).__name__}") from error
    if isinstance(result, int | float) and result < 0:
        raise ValueError(f"{name}: must not be negative")
    _check(name, result)
    return result


def _check(name: str, value: Any) -> None:
    """Knob-specific limits, so a bad patch is refused instead of breaking the hot path."""
    bad = (
        (name.endswith("_rate") and value > 1)
        or (name in ("rate_window", "quota_day_seconds") and value <= 0)
        or (name == "rate_window_kind" and value not in ("fixed", "sliding"))
        or (name == "quota_status" and value not in (402, 429))
        or (name == "cost" and value != "" and not _NUMBER.match(value))
    )
    if bad:
        raise ValueError(f"{name}: value {value!r} is out of range")


def _listed(record: dict[str, Any]) -> dict[str, Any]:
    return {**record, "at": datetime.fromtimestamp(record["at"], UTC).isoformat()}


def _error_body(code: str, message: str) -> bytes:
    return json.dumps({"success": False, "error": {"code": code, "message": message}}).encode()


class _Hang(Exception):
    """Internal: leave this request without an answer."""


class Simulator:
    """The simulator's state and its aiohttp application; single event loop, so no locks."""

    def __init__(self, config: SimConfig | None = None) -> None:
        self.initial = dataclasses.replace(config or SimConfig())
        self.config = dataclasses.replace(self.initial)
        self._stopping: asyncio.Event | None = None
        self.reset()

    def reset(self, config: bool = False) -> None:
        """Forget records, counters, windows and quota; optionally restore the starting knobs."""
        if config:
            self.config = dataclasses.replace(self.initial)
        self.rng = random.Random(self.config.seed)
        self.received: list[dict[str, Any]] = []
        self.by_status: Counter[int] = Counter()
        self.events: Counter[str] = Counter()
        self.requests = 0
        self.accepted_by_key: Counter[str] = Counter()
        self.expired: set[str] = set()
        self.windows: dict[str, deque[float]] = {}
        self.fixed: dict[str, tuple[float, int]] = {}
        self.quota_start = time.time()
        self.quota_used = 0
        self._fps: dict[str, str] = {}

    # ------------------------------------------------------------ the send endpoint

    def _fp(self, key: str) -> str:
        fp = self._fps.get(key)
        if fp is None:
            fp = self._fps[key] = fingerprint(key)
        return fp

    def _rate(self, fp: str, now: float) -> tuple[bool, dict[str, str]]:
        """(allowed, X-RateLimit-* headers) for one request by this key."""
        cfg = self.config
        if cfg.rate_limit <= 0:
            return True, {}
        window = cfg.rate_window
        if cfg.rate_window_kind == "sliding":
            stamps = self.windows.setdefault(fp, deque())
            while stamps and stamps[0] <= now - window:
                stamps.popleft()
            allowed = len(stamps) < cfg.rate_limit
            if allowed:
                stamps.append(now)
            used, reset = len(stamps), (stamps[0] + window if stamps else now + window)
        else:
            start = math.floor(now / window) * window
            began, used = self.fixed.get(fp, (start, 0))
            if began != start:
                used = 0
            allowed = used < cfg.rate_limit
            used += allowed
            self.fixed[fp] = (start, used)
            reset = start + window
        headers = {
            "X-RateLimit-Limit": str(cfg.rate_limit),
            "X-RateLimit-Remaining": str(max(0, cfg.rate_limit - used)),
            "X-RateLimit-Reset": str(math.ceil(reset)),
        }
        if not allowed:
            headers["Retry-After"] = str(max(1, math.ceil(reset - now)))
        return allowed, headers

    def _reply(
        self, status: int, body: bytes, headers: dict[str, str] | None = None
    ) -> web.Response:
        self.by_status[status] += 1
        kind = _JSON if body[:1] == b"{" else "text/html"
        return web.Response(status=status, body=body, content_type=kind, headers=headers)

    async def send(self, request: web.Request) -> web.StreamResponse:
        """POST /api/v1/messages/send, as Wahero would answer it."""
        self.requests += 1
        cfg = self.config
        if cfg.latency_ms or cfg.jitter_ms:
            await asyncio.sleep((cfg.latency_ms + self.rng.uniform(0, cfg.jitter_ms)) / 1000)
        # The body is read before the checks: from the key check to the acceptance nothing
        # awaits, so a key revoked after N sends accepts exactly N, however many are in flight.
        raw = await request.read()
        key = request.headers.get("X-Api-Key", "")
        fp = self._fp(key) if key else ""
        if not key or key not in cfg.keys or key in cfg.revoked_keys or fp in self.expired:
            return self._reply(401, _error_body("UNAUTHORIZED", "Invalid or missing API key"))
        now = time.time()
        allowed, headers = self._rate(fp, now)
        if not allowed:
            return self._reply(
                429, _error_body("RATE_LIMIT_EXCEEDED", "Too many requests"), headers
            )
        try:
            body = json.loads(raw)
        except ValueError:
            return self._reply(400, _error_body("BAD_REQUEST", "Body is not JSON"), headers)
        problem = self._invalid(body)
        if problem:
            return self._reply(422, _error_body("VALIDATION_ERROR", problem), headers)
        if body["instanceId"] in cfg.forbidden_instances:
            return self._reply(403, _error_body("FORBIDDEN", "No access to this instance"), headers)
        if cfg.daily_quota > 0:
            day_end = self._quota_day(now)
            if self.quota_used >= cfg.daily_quota:
                headers["X-RateLimit-Reset"] = str(math.ceil(day_end))
                headers["Retry-After"] = str(max(1, math.ceil(day_end - now)))
                message = "Daily message quota exhausted"
                return self._reply(cfg.quota_status, _error_body(cfg.quota_code, message), headers)
        return await self._fate(request, body, fp, headers)

    def _invalid(self, body: Any) -> str | None:
        if not isinstance(body, dict):
            return "Body must be a JSON object"
        instance, phone, message = body.get("instanceId"), body.get("phone"), body.get("message")
        if not isinstance(instance, str) or not instance:
            return "instanceId is required"
        if not isinstance(phone, str) or not _PHONE.match(phone):
            return "phone must be digits starting with 62, 10 to 15 digits"
        if not isinstance(message, str) or not 1 <= len(message) <= self.config.max_message_length:
            return f"message must be 1 to {self.config.max_message_length} characters"
        return None

    def _quota_day(self, now: float) -> float:
        length = self.config.quota_day_seconds
        if now >= self.quota_start + length:
            self.quota_start, self.quota_used = now, 0
        return self.quota_start + length

    async def _fate(
        self, request: web.Request, body: dict[str, Any], fp: str, headers: dict[str, str]
    ) -> web.StreamResponse:
        """Roll the fault dice once, then answer, hang or drop; accept where the fault says so."""
        cfg = self.config
        roll = self.rng.random()
        bands = (
            ("500", cfg.error_500_rate),
            ("503", cfg.error_503_rate),
            ("502", cfg.error_502_rate),
            ("timeout", cfg.timeout_rate),
            ("drop", cfg.drop_rate),
            ("504", cfg.error_504_rate),
            ("timeout_after_accept", cfg.timeout_after_accept_rate),
            ("drop_after_accept", cfg.drop_after_accept_rate),
        )
        fault = None
        for name, rate in bands:
            if roll < rate:
                fault = name
                break
            roll -= rate
        if fault == "500":
            return self._reply(500, _error_body("INTERNAL_ERROR", "Internal server error"), headers)
        if fault == "503":
            message = "WhatsApp instance is not connected"
            return self._reply(503, _error_body("INSTANCE_NOT_CONNECTED", message), headers)
        if fault == "502":
            return self._reply(502, _HTML % (502, 502))
        if fault in ("timeout", "drop"):
            return await self._abandon(request, hang=fault == "timeout")
        message_id = self._accept(body, fp)
        if fault == "504":
            return self._reply(504, _HTML % (504, 504))
        if fault is not None:
            return await self._abandon(request, hang=fault == "timeout_after_accept")
        return self._reply(200, self._success(message_id), headers)

    def _accept(self, body: dict[str, Any], fp: str) -> str:
        cfg = self.config
        message_id = f"SIM{len(self.received) + 1:010d}"
        self.received.append(
            {
                "message_id": message_id,
                "instance_id": body["instanceId"],
                "phone": body["phone"],
                "message": body["message"],
                "key_fingerprint": fp,
                "at": time.time(),  # formatted when listed: keeps the hot path lean
            }
        )
        self.quota_used += 1
        self.accepted_by_key[fp] += 1
        if cfg.revoke_after and self.accepted_by_key[fp] >= cfg.revoke_after:
            self.expired.add(fp)
        return message_id

    def _success(self, message_id: str) -> bytes:
        cfg = self.config
        # Hand-built: json.dumps per request costs more than this whole function.
        priced = ""
        if cfg.cost:
            cost = cfg.cost if cfg.cost_as_number else json.dumps(cfg.cost)
            priced = f',"cost":{cost},"currency":{json.dumps(cfg.currency)}'
        text = f'{{"success":true,"data":{{"messageId":"{message_id}","status":"queued"{priced}}}}}'
        return text.encode()

    async def _abandon(self, request: web.Request, hang: bool) -> web.StreamResponse:
        """Hang (then close) or close at once, never answering."""
        self.events["hung" if hang else "dropped"] += 1
        if hang and self._stopping is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.config.hang_seconds)
        transport = request.transport
        if transport is not None:
            transport.abort() if not hang else transport.close()
        raise _Hang

    # ------------------------------------------------------------ the control API

    async def _control(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if request.method == "GET" and name == "health":
            return web.json_response({"ok": True})
        if request.method == "GET" and name == "received":
            return web.json_response([_listed(record) for record in self.received])
        if request.method == "GET" and name == "stats":
            return web.json_response(self.stats())
        if name == "config":
            if request.method == "POST":
                try:
                    self._patch(await request.json())
                except ValueError as error:
                    return web.json_response({"error": str(error)}, status=400)
            return web.json_response(self.config.public())
        if request.method == "POST" and name == "reset":
            try:
                options = json.loads(await request.text() or "{}")
                restore = bool(isinstance(options, dict) and options.get("config"))
            except ValueError:
                return web.json_response({"error": "expected a JSON object"}, status=400)
            self.reset(config=restore)
            return web.json_response({"ok": True})
        if request.method == "POST" and name == "quota-reset":
            self.quota_start, self.quota_used = time.time(), 0
            return web.json_response({"ok": True})
        return web.json_response({"error": f"no such control {request.method} {name}"}, status=404)

    def _patch(self, changes: Any) -> None:
        if not isinstance(changes, dict):
            raise ValueError("expected a JSON object of knobs")
        self.config.patch(changes)
        if "seed" in changes:
            self.rng = random.Random(self.config.seed)

    def stats(self) -> dict[str, Any]:
        """Totals by status code, plus accepted, hung and dropped counts."""
        return {
            "requests": self.requests,
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "accepted": len(self.received),
            "hung": self.events["hung"],
            "dropped": self.events["dropped"],
            "quota_used": self.quota_used,
        }

    def app(self) -> web.Application:
        """The aiohttp application: the send endpoint and /_sim/{name}."""
        app = web.Application(middlewares=[_swallow_hangs])
        app.router.add_post("/api/v1/messages/send", self.send)
        app.router.add_route("*", "/_sim/{name}", self._control)
        return app

    async def start(self, host: str, port: int) -> tuple[web.AppRunner, str]:
        """Start serving on the running loop; returns the runner and the bound URL."""
        self._stopping = asyncio.Event()
        runner = web.AppRunner(
            self.app(), access_log=None, handle_signals=False, shutdown_timeout=0.5
        )
        await runner.setup()
        site = web.TCPSite(runner, host, port, backlog=1024)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        bound = sockets[0].getsockname()[1] if sockets else port
        return runner, f"http://{host}:{bound}"

    async def stop(self, runner: web.AppRunner) -> None:
        """Wake every hanging request, then shut the server down."""
        if self._stopping is not None:
            self._stopping.set()
        await runner.cleanup()


@web.middleware
async def _swallow_hangs(
    request: web.Request, handler: Callable[[web.Request], Any]
) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
    except _Hang:
        # The socket is already closed; this stops aiohttp from writing an answer to it.
        raise asyncio.CancelledError from None
    return response


def run_in_thread(
    config: SimConfig | None = None, host: str = "127.0.0.1", port: int = 0
) -> tuple[str, Callable[[], None]]:
    """Serve a simulator from a daemon thread; returns (url, stop). For in-process tests."""
    sim = Simulator(config)
    loop = asyncio.new_event_loop()
    ready: dict[str, Any] = {}
    started = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        try:
            ready["runner"], ready["url"] = loop.run_until_complete(sim.start(host, port))
        except BaseException as error:  # reported to the caller below
            ready["error"] = error
            started.set()
            return
        started.set()
        loop.run_forever()
        loop.run_until_complete(sim.stop(ready["runner"]))
        loop.close()

    thread = threading.Thread(target=serve, name="wahero-simulator", daemon=True)
    thread.start()
    started.wait(10)
    if "url" not in ready:
        raise RuntimeError(f"simulator did not start: {ready.get('error')!r}")

    def stop() -> None:
        if thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)

    return str(ready["url"]), stop


async def _serve_forever(sim: Simulator, host: str, port: int) -> None:
    runner, url = await sim.start(host, port)
    sys.stdout.write(f"listening on {url}\n")
    sys.stdout.flush()
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, done.set)
    await done.wait()
    await sim.stop(runner)


def _options(command: Callable[..., Any]) -> Callable[..., Any]:
    """One click option per SimConfig knob, so the CLI and the control API never drift apart."""
    for knob in reversed(dataclasses.fields(SimConfig)):
        flag = "--" + (knob.metadata["flag"] or knob.name.replace("_", "-"))
        default = SimConfig().__getattribute__(knob.name)
        kind: Any = {list: str, bool: bool, type(None): int}.get(type(default), type(default))
        extra: dict[str, Any] = {"multiple": True} if isinstance(default, list) else {}
        if isinstance(default, bool):
            flag = f"{flag}/--no-{flag[2:]}"
        shown = ", ".join(default) if isinstance(default, list) else default
        show = f" [default: {shown}]" if default not in ([], None) else ""
        command = click.option(
            flag, knob.name, type=kind, default=None, help=knob.metadata["help"] + show, **extra
        )(command)
    return command


@click.command("simulate")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=8099, show_default=True, help="Port to bind; 0 picks a free one.")
@_options
def simulate_command(host: str, port: int, **knobs: Any) -> None:
    """Run the built-in Wahero simulator (control API under /_sim/)."""
    config = SimConfig()
    try:
        config.patch(
            {
                k: list(v) if isinstance(v, tuple) else v
                for k, v in knobs.items()
                if v not in (None, ())
            }
        )
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    with contextlib.suppress(ImportError):
        import uvloop  # type: ignore[import-not-found]  # optional: faster when installed

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(_serve_forever(Simulator(config), host, port))
