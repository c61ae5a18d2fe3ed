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
INSTANCE = "11111111-2222-3333-4444-555555555555"


def enqueue_argv(csv_path: Path | str, message: str, instance: str = INSTANCE) -> list[str]:
    """`enqueue --instance … --csv … --message …`: for CliRunner, or after WAHERO_BULK."""
    return ["enqueue", "--instance", instance, "--csv", str(csv_path), "--message", message]


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
        # One process per worker unless a test asks for a group: tests count what one process
        # has in flight (tests/test_supervisor.py covers the group).
        env = {"WAHERO_WORKER_PROCESSES": "1", **os.environ, **self.env, **(extra_env or {})}
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


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class PrivateRedis:
    """A redis-server of this test's own (no persistence), so it can be killed and restarted."""

    port: int
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start on the same port (again); returns once it answers PING."""
        import redis

        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                [
                    "redis-server",
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--daemonize",
                    "no",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)

        def answers() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        try:
            wait_for(answers, 15, message=f"private redis on port {self.port}")
        finally:
            client.close()

    def kill(self) -> None:
        """kill -9: everything it held is gone."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture()
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A private redis-server on a free port, started; killed at the end of the test."""
    server = PrivateRedis(free_port(), tmp_path / "redis.log")
    server.start()
    yield server
    server.kill()


def start_beat(
    tmp_path: Path, env: dict[str, str], name: str = "beat"
) -> tuple[subprocess.Popen[bytes], Path]:
    """A `wahero-bulk beat` subprocess with its own schedule file; returns it and its log."""
    log_path = tmp_path / f"{name}.log"
    with log_path.open("wb") as out:
        process = subprocess.Popen(
            [WAHERO_BULK, "beat", "--schedule", str(tmp_path / f"{name}.schedule")],
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return process, log_path


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM a subprocess's group, SIGKILL it if it lingers."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
