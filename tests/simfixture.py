"""Fixtures for the built-in Wahero simulator: in a subprocess (end-to-end) or a thread (fast).

Enable with `pytest_plugins = ["tests.simfixture"]` in tests/conftest.py.
"""

from __future__ import annotations

import dataclasses
import os
import selectors
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from worker.simulator import DEFAULT_KEY, SimConfig, run_in_thread

ROOT = Path(__file__).resolve().parent.parent
SIM_KEY = DEFAULT_KEY
START_DEADLINE = 60.0  # generous: a loaded 2-core machine starts Python slowly


class SimControl:
    """A handle on a running simulator: its URL and its /_sim/ control API."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._http = requests.Session()

    def _call(self, method: str, name: str, body: Any = None) -> Any:
        response = self._http.request(method, f"{self.url}/_sim/{name}", json=body, timeout=10)
        response.raise_for_status()
        return response.json()

    def configure(self, **knobs: Any) -> dict[str, Any]:
        """Patch knobs (SimConfig field names); returns the full config."""
        result: dict[str, Any] = self._call("POST", "config", knobs)
        return result

    def config(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "config")
        return result

    def received(self) -> list[dict[str, Any]]:
        """The accepted messages, oldest first."""
        result: list[dict[str, Any]] = self._call("GET", "received")
        return result

    def stats(self) -> dict[str, Any]:
        """Counters: requests, by_status {"200": n}, accepted, hung, dropped, quota_used."""
        result: dict[str, Any] = self._call("GET", "stats")
        return result

    def reset(self, config: bool = False) -> None:
        """Forget records, counters and quota; `config=True` also restores the starting knobs."""
        self._call("POST", "reset", {"config": config})

    def reset_quota(self) -> None:
        """Start a new quota day now."""
        self._call("POST", "quota-reset")

    def wait_for(self, predicate: Callable[[SimControl], bool], timeout: float = 10.0) -> None:
        """Poll until `predicate(self)` holds; fails the test at the deadline."""
        deadline = time.monotonic() + timeout
        while not predicate(self):
            if time.monotonic() > deadline:
                pytest.fail(f"simulator condition not met within {timeout}s: {self.stats()}")
            time.sleep(0.02)


class SimProcess(SimControl):
    """A simulator running as `python -m worker.cli simulate` in a subprocess."""

    def __init__(self, url: str, process: subprocess.Popen[bytes]) -> None:
        super().__init__(url)
        self.process = process

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not exit promptly."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if self.process.stdout is not None:
            self.process.stdout.close()


def knob_args(**knobs: Any) -> list[str]:
    """Command-line flags for SimConfig knobs (`keys=[...]` becomes repeated `--key`)."""
    fields = {f.name: f for f in dataclasses.fields(SimConfig)}
    args: list[str] = []
    for name, value in knobs.items():
        flag = "--" + (fields[name].metadata["flag"] or name.replace("_", "-"))
        if isinstance(value, bool):
            args.append(flag if value else f"--no-{flag[2:]}")
        elif isinstance(value, list | tuple):
            for item in value:
                args += [flag, str(item)]
        else:
            args += [flag, str(value)]
    return args


def _read_url(process: subprocess.Popen[bytes], log: Path) -> str:
    assert process.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + START_DEADLINE
    try:
        while time.monotonic() < deadline:
            if selector.select(timeout=0.1):
                line = process.stdout.readline().decode().strip()
                if line.startswith("listening on "):
                    return line.removeprefix("listening on ")
                if not line and process.poll() is not None:
                    break
            elif process.poll() is not None:
                break
    finally:
        selector.close()
    process.kill()
    raise RuntimeError(f"simulator did not start: {log.read_text()[-2000:]}")


@pytest.fixture
def sim_process(tmp_path: Path) -> Iterator[Callable[..., SimProcess]]:
    """Factory: `sim_process(*extra_args, **knobs)` starts a simulator subprocess on a free port."""
    started: list[SimProcess] = []

    def start(*extra_args: str, **knobs: Any) -> SimProcess:
        log = tmp_path / f"simulator-{len(started)}.log"
        command = [sys.executable, "-m", "worker.cli", "simulate", "--port", "0"]
        command += knob_args(**knobs) + list(extra_args)
        with log.open("wb") as stderr:
            process = subprocess.Popen(
                command,
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        sim = SimProcess(_read_url(process, log), process)
        started.append(sim)
        return sim

    yield start
    for sim in started:
        sim.stop()


@pytest.fixture
def sim_thread() -> Iterator[Callable[..., SimControl]]:
    """Factory: `sim_thread(**knobs)` starts an in-process simulator (fast; for client tests)."""
    stops: list[Callable[[], None]] = []

    def start(**knobs: Any) -> SimControl:
        url, stop = run_in_thread(SimConfig(**knobs))
        stops.append(stop)
        return SimControl(url)

    yield start
    for stop in stops:
        stop()


@pytest.fixture
def sim(sim_thread: Callable[..., SimControl]) -> SimControl:
    """An in-process simulator with the default knobs (valid key: SIM_KEY)."""
    return sim_thread()
