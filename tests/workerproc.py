"""Real worker processes for end-to-end tests: `wahero-bulk worker` started as a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

BIN = Path(sys.executable).parent
WAHERO_BULK = str(BIN / "wahero-bulk")


def wait_for(
    condition: Callable[[], Any],
    timeout: float = 30.0,
    interval: float = 0.05,
    message: str = "condition",
) -> Any:
    """Poll until `condition()` is truthy and return its value; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


@dataclass
class WorkerProcess:
    """A running worker subprocess and the file its output goes to."""

    process: subprocess.Popen[bytes]
    log_path: Path
    name: str

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole worker (no warm shutdown, nothing acknowledged)."""
        if self.alive():
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        """Warm shutdown, then SIGKILL if it lingers."""
        if not self.alive():
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.kill()


@dataclass
class Workers:
    """Starts workers with the test environment plus per-test settings."""

    tmp_path: Path
    env: dict[str, str] = field(default_factory=dict)
    started: list[WorkerProcess] = field(default_factory=list)

    def start(
        self,
        extra_env: dict[str, str] | None = None,
        ready: bool = True,
        args: tuple[str, ...] = (),
    ) -> WorkerProcess:
        name = f"w{len(self.started)}"
        env = {**os.environ, **self.env, **(extra_env or {})}
        log_path = self.tmp_path / f"{name}.log"
        with log_path.open("wb") as out:
            process = subprocess.Popen(
                [WAHERO_BULK, "worker", "--hostname", f"{name}-{os.getpid()}@%h", *args],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        worker = WorkerProcess(process, log_path, name)
        self.started.append(worker)
        if ready:
            wait_for(
                lambda: " ready." in worker.log() or not worker.alive(),
                60,
                message=f"worker {name} to be ready",
            )
            assert worker.alive(), worker.log()
        return worker

    def stop_all(self) -> None:
        for worker in self.started:
            worker.stop()


@pytest.fixture()
def workers(tmp_path: Path, db: sa.Engine, redis_client: Any) -> Iterator[Workers]:
    """Start real worker processes; all are stopped at the end of the test."""
    pool = Workers(tmp_path)
    yield pool
    pool.stop_all()


def counts(engine: sa.Engine, campaign_id: Any) -> dict[str, int]:
    """Messages of a campaign by status."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT status, count(*) FROM messages WHERE campaign_id = :id GROUP BY status"
            ),
            {"id": campaign_id},
        ).all()
    return {str(status): int(n) for status, n in rows}


def campaign_status(engine: sa.Engine, campaign_id: Any) -> str:
    with engine.connect() as conn:
        return str(
            conn.execute(
                sa.text("SELECT status FROM campaigns WHERE id = :id"), {"id": campaign_id}
            ).scalar_one()
        )


def wait_status(engine: sa.Engine, campaign_id: Any, *statuses: str, timeout: float = 60.0) -> str:
    """Poll until the campaign reaches one of `statuses`; returns it."""
    return str(
        wait_for(
            lambda: (s := campaign_status(engine, campaign_id)) in statuses and s,
            timeout,
            0.1,
            f"campaign to become {'/'.join(statuses)} (counts {counts(engine, campaign_id)})",
        )
    )
