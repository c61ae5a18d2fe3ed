"""The built-in Wahero simulator: its knobs and its control API, over real loopback HTTP."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
import requests

from tests.simfixture import SIM_KEY, SimControl, SimProcess
from worker.apikey import fingerprint

# Until tests/conftest.py lists it, load the simulator fixtures here.

SEND = "/api/v1/messages/send"
BODY = {"instanceId": "inst-1", "phone": "628123456789", "message": "halo"}


def post(
    sim: SimControl, body: Any = None, key: str | None = SIM_KEY, timeout: float = 5.0
) -> requests.Response:
    headers = {"X-Api-Key": key} if key is not None else {}
    return requests.post(
        sim.url + SEND, json=BODY if body is None else body, headers=headers, timeout=timeout
    )


def code(response: requests.Response) -> str:
    return str(response.json()["error"]["code"])


def test_health_and_a_successful_send(sim: SimControl) -> None:
    assert requests.get(sim.url + "/_sim/health", timeout=5).json() == {"ok": True}
    response = post(sim)
    assert response.status_code == 200
    assert response.json() == {
        "success": True,
        "data": {
            "messageId": "SIM0000000001",
            "status": "queued",
            "cost": "350.00",
            "currency": "IDR",
        },
    }
    [record] = sim.received()
    assert record["key_fingerprint"] == fingerprint(SIM_KEY)
    assert set(record) == {"message_id", "instance_id", "phone", "message", "key_fingerprint", "at"}
    assert record["at"].endswith("+00:00")
    assert sim.stats()["by_status"] == {"200": 1}


@pytest.mark.parametrize("key", [None, "", "wrong"])
def test_missing_or_unknown_key_is_401(key: str | None, sim: SimControl) -> None:
    response = post(sim, key=key)
    assert response.status_code == 401 and code(response) == "UNAUTHORIZED"
    assert response.json()["success"] is False


@pytest.mark.parametrize(
    ("change", "status"),
    [
        ({"instanceId": ""}, 422),
        ({"phone": "+628123456789"}, 422),
        ({"phone": "0812345678"}, 422),
        ({"phone": "62812"}, 422),
        ({"phone": "6281234567890123"}, 422),
        ({"message": ""}, 422),
        ({"message": "x" * 4097}, 422),
        ({"phone": 628123456789}, 422),
    ],
)
def test_validation(change: dict[str, Any], status: int, sim: SimControl) -> None:
    response = post(sim, {**BODY, **change})
    assert response.status_code == status and code(response) == "VALIDATION_ERROR"
    assert sim.received() == []


def test_boundaries_that_are_valid(sim: SimControl) -> None:
    assert post(sim, {**BODY, "message": "x" * 4096}).status_code == 200
    assert post(sim, {**BODY, "phone": "6281234567"}).status_code == 200
    assert post(sim, {**BODY, "phone": "628123456789012"}).status_code == 200


def test_non_json_body_is_400(sim: SimControl) -> None:
    response = requests.post(
        sim.url + SEND, data=b"nope", headers={"X-Api-Key": SIM_KEY}, timeout=5
    )
    assert response.status_code == 400


def test_revoked_keys_and_forbidden_instances(sim_thread: Callable[..., SimControl]) -> None:
    sim = sim_thread(keys=["a", "b"], revoked_keys=["b"], forbidden_instances=["inst-1"])
    assert post(sim, key="b").status_code == 401
    response = post(sim, key="a")
    assert response.status_code == 403 and code(response) == "FORBIDDEN"
    assert post(sim, {**BODY, "instanceId": "inst-2"}, key="a").status_code == 200


def test_revoke_after_rotates_a_key_out(sim_thread: Callable[..., SimControl]) -> None:
    sim = sim_thread(keys=["old", "new"], revoke_after=2)
    assert [post(sim, key="old").status_code for _ in range(3)] == [200, 200, 401]
    assert post(sim, key="new").status_code == 200


def test_fixed_window_rate_limit(sim_thread: Callable[..., SimControl]) -> None:
    sim = sim_thread(rate_limit=2, rate_window=60.0)
    first, second, third = (post(sim) for _ in range(3))
    assert (first.status_code, second.status_code, third.status_code) == (200, 200, 429)
    assert first.headers["X-RateLimit-Limit"] == "2"
    assert first.headers["X-RateLimit-Remaining"] == "1"
    assert second.headers["X-RateLimit-Remaining"] == "0"
    assert code(third) == "RATE_LIMIT_EXCEEDED"
    assert 1 <= int(third.headers["Retry-After"]) <= 60
    assert int(third.headers["X-RateLimit-Reset"]) >= time.time()
    # Another key has its own window.
    sim.configure(keys=[SIM_KEY, "other"])
    assert post(sim, key="other").status_code == 200


def test_sliding_window_frees_slots_as_they_age(sim_thread: Callable[..., SimControl]) -> None:
    sim = sim_thread(rate_limit=2, rate_window=0.3, rate_window_kind="sliding")
    assert [post(sim).status_code for _ in range(3)] == [200, 200, 429]
    deadline = time.monotonic() + 5
    while post(sim).status_code != 200:
        assert time.monotonic() < deadline


def test_daily_quota_and_its_reset(sim_thread: Callable[..., SimControl]) -> None:
    sim = sim_thread(daily_quota=2, quota_status=402, quota_code="INSUFFICIENT_BALANCE")
    assert [post(sim).status_code for _ in range(2)] == [200, 200]
    refused = post(sim)
    assert refused.status_code == 402 and code(refused) == "INSUFFICIENT_BALANCE"
    assert int(refused.headers["X-RateLimit-Reset"]) > time.time() + 86000
    sim.reset_quota()
    assert post(sim).status_code == 200


def test_quota_day_rolls_over_by_itself(sim_thread: Callable[..., SimControl]) -> None:
    sim = sim_thread(daily_quota=1, quota_day_seconds=0.3)
    assert post(sim).status_code == 200
    assert post(sim).status_code == 429
    deadline = time.monotonic() + 5
    while post(sim).status_code != 200:
        assert time.monotonic() < deadline


@pytest.mark.parametrize(
    ("knob", "status", "accepted", "json_body"),
    [
        ("error_500_rate", 500, 0, True),
        ("error_503_rate", 503, 0, True),
        ("error_502_rate", 502, 0, False),
        ("error_504_rate", 504, 1, False),
    ],
)
def test_error_faults(
    knob: str,
    status: int,
    accepted: int,
    json_body: bool,
    sim_thread: Callable[..., SimControl],
) -> None:
    sim = sim_thread(**{knob: 1.0})
    response = post(sim)
    assert response.status_code == status
    if json_body:
        assert response.json()["success"] is False
    else:
        assert response.headers["Content-Type"].startswith("text/html")
    if status == 503:
        assert code(response) == "INSTANCE_NOT_CONNECTED"
    assert len(sim.received()) == accepted


@pytest.mark.parametrize(
    ("knob", "accepted"), [("timeout_rate", 0), ("timeout_after_accept_rate", 1)]
)
def test_hangs(knob: str, accepted: int, sim_thread: Callable[..., SimControl]) -> None:
    sim = sim_thread(**{knob: 1.0}, hang_seconds=10.0)
    with pytest.raises(requests.ReadTimeout):
        post(sim, timeout=0.2)
    assert len(sim.received()) == accepted
    assert sim.stats()["hung"] == 1


@pytest.mark.parametrize(("knob", "accepted"), [("drop_rate", 0), ("drop_after_accept_rate", 1)])
def test_drops(knob: str, accepted: int, sim_thread: Callable[..., SimControl]) -> None:
    sim = sim_thread(**{knob: 1.0})
    with pytest.raises(requests.ConnectionError):
        post(sim)
    assert len(sim.received()) == accepted
    assert sim.stats()["dropped"] == 1


def test_short_hang_closes_the_socket(sim_thread: Callable[..., SimControl]) -> None:
    sim = sim_thread(timeout_rate=1.0, hang_seconds=0.1)
    with pytest.raises(requests.ConnectionError):
        post(sim, timeout=5)


def test_seed_makes_faults_repeatable(sim_thread: Callable[..., SimControl]) -> None:
    knobs = {"seed": 42, "error_500_rate": 0.3, "error_502_rate": 0.2}
    runs = []
    for _ in range(2):
        sim = sim_thread(**knobs)
        runs.append([post(sim).status_code for _ in range(30)])
    assert runs[0] == runs[1]
    assert {200, 500, 502} <= set(runs[0])


def test_latency(sim_thread: Callable[..., SimControl]) -> None:
    sim = sim_thread(latency_ms=150.0)
    started = time.monotonic()
    post(sim)
    assert time.monotonic() - started >= 0.15


def test_cost_knobs(sim: SimControl) -> None:
    sim.configure(cost="0.10", cost_as_number=True, currency="USD")
    data = post(sim).json()["data"]
    assert (data["cost"], data["currency"]) == (0.1, "USD")
    sim.configure(cost="")
    assert "cost" not in post(sim).json()["data"]


def test_config_patch_shows_fingerprints_not_keys(sim: SimControl) -> None:
    config = sim.configure(keys=["wahero_test_secretish"], rate_limit=5)
    assert config["rate_limit"] == 5
    assert config["keys"] == [f"***{fingerprint('wahero_test_secretish')}"]
    assert "wahero_test_secretish" not in str(sim.config())


@pytest.mark.parametrize(
    "patch",
    [
        {"no_such_knob": 1},
        {"rate_limit": "many"},
        {"error_500_rate": 1.5},
        {"latency_ms": -1},
        {"keys": "one"},
        {"rate_window_kind": "lunar"},
        {"quota_status": 418},
        {"cost": "cheap"},
        {"cost_as_number": "yes"},
    ],
)
def test_bad_config_patches_are_refused(patch: dict[str, Any], sim: SimControl) -> None:
    before = sim.config()
    response = requests.post(sim.url + "/_sim/config", json=patch, timeout=5)
    assert response.status_code == 400 and "error" in response.json()
    assert sim.config() == before


def test_reset_clears_records_and_optionally_config(sim: SimControl) -> None:
    post(sim)
    sim.configure(error_500_rate=1.0)
    post(sim)
    assert sim.stats()["requests"] == 2
    sim.reset()
    assert sim.received() == [] and sim.stats()["requests"] == 0
    assert sim.config()["error_500_rate"] == 1.0
    sim.reset(config=True)
    assert sim.config()["error_500_rate"] == 0.0
    assert post(sim).json()["data"]["messageId"] == "SIM0000000001"


def test_unknown_control_is_404(sim: SimControl) -> None:
    assert requests.get(sim.url + "/_sim/nothing", timeout=5).status_code == 404


def test_subprocess_simulator_takes_knobs_from_the_command_line(
    sim_process: Callable[..., SimProcess],
) -> None:
    sim = sim_process(keys=["cli-key"], forbidden_instances=["blocked"], cost_as_number=True)
    assert sim.url.startswith("http://127.0.0.1:")
    assert post(sim, key=SIM_KEY).status_code == 401
    assert post(sim, {**BODY, "instanceId": "blocked"}, key="cli-key").status_code == 403
    assert post(sim, key="cli-key").json()["data"]["cost"] == 350.0
    assert sim.stats()["accepted"] == 1
    sim.stop()
    assert sim.process.returncode == 0  # SIGTERM is a clean shutdown
