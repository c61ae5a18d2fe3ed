"""Health and readiness checks for Docker and Kubernetes: `wahero-bulk health [--worker]`.

Each check opens its own short-lived connection with a timeout, so a probe never hangs on a
pool or a broker retry loop, and reports one line; errors are cut to their first line so a
probe's output never carries a connection string.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import click

from worker.settings import ConfigError, Settings

if TYPE_CHECKING:
    from alembic.script import ScriptDirectory


@dataclass(frozen=True)
class CheckResult:
    """One check: its name, whether it passed, a short detail, and how long it took."""

    name: str
    ok: bool
    detail: str
    ms: int


def _first_line(error: BaseException) -> str:
    # SQLAlchemy wraps the driver error; the driver's own first line is the useful part.
    cause = getattr(error, "orig", None) or error
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[0] if text else 'no detail'}"


def _timed(name: str, check: Callable[[], str]) -> CheckResult:
    started = time.monotonic()
    try:
        detail, ok = check(), True
    except Exception as error:  # a probe reports every failure as a line, never a traceback
        detail, ok = _first_line(error), False
    return CheckResult(name, ok, detail, round((time.monotonic() - started) * 1000))


def check_postgres(settings: Settings, timeout: float) -> str:
    """SELECT 1, then the schema must be at this code's Alembic head (or newer, mid-upgrade)."""
    import sqlalchemy as sa
    from alembic.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from migrations import alembic_config

    engine = sa.create_engine(
        settings.database_url,
        poolclass=sa.pool.NullPool,
        connect_args={
            "connect_timeout": max(1, round(timeout)),
            "application_name": "wahero-bulk-health",
            "options": f"-c statement_timeout={round(timeout * 1000)}",
        },
    )
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
            current = set(MigrationContext.configure(conn).get_current_heads())
    finally:
        engine.dispose()
    script = ScriptDirectory.from_config(alembic_config())
    expected = set(script.get_heads())
    heads = ", ".join(sorted(expected))
    if current == expected:
        return f"SELECT 1 ok, schema at head {heads}"
    known = {rev for rev in current if _known(script, rev)}
    if current and not known:
        # Newer code migrated first (the upgrade order): this worker keeps running meanwhile.
        return (
            f"SELECT 1 ok, schema at {', '.join(sorted(current))}, newer than this code's {heads}"
        )
    have = ", ".join(sorted(current)) or "none"
    raise RuntimeError(f"schema at {have}, code expects {heads}: run `wahero-bulk db upgrade`")


def _known(script: ScriptDirectory, revision: str) -> bool:
    from alembic.util import CommandError

    try:
        return script.get_revision(revision) is not None
    except CommandError:  # a revision these migrations have never seen
        return False


def check_redis(settings: Settings, timeout: float) -> str:
    """PING the broker."""
    import redis

    client = redis.Redis.from_url(
        settings.redis_url, socket_timeout=timeout, socket_connect_timeout=timeout
    )
    try:
        if not client.ping():
            raise RuntimeError("PING got no PONG")
    finally:
        client.close()
    return "PING ok"


def default_nodes(settings: Settings) -> list[str]:
    """The Celery node names `wahero-bulk worker` takes on this host by default.

    One process is `celery@<host>`; a group of N is `celery-1@<host>` … `celery-N@<host>`
    (N = WAHERO_WORKER_PROCESSES, 0 = one per core). Both are asked: the setting a worker was
    started with may differ from the probe's.
    """
    from worker.supervisor import child_hostname, cpu_count

    base = f"celery@{socket.gethostname()}"
    processes = settings.worker_processes or cpu_count()
    return [base, *(child_hostname(base, index) for index in range(1, processes + 1))]


def check_worker(nodes: Sequence[str], timeout: float) -> str:
    """One of the named Celery workers answers a ping through the broker."""
    from worker.app import app

    wanted = list(nodes)
    with app.connection_for_write() as conn:
        # One try: a probe must fail fast when the broker is away, not retry forever.
        conn.ensure_connection(max_retries=1, timeout=timeout)
        # The first answer is enough: the probe asks whether this host's worker runs at all.
        replies = app.control.ping(destination=wanted, timeout=timeout, connection=conn, limit=1)
    answered = sorted(
        name
        for reply in replies or []
        for name, answer in reply.items()
        if name in wanted and isinstance(answer, dict) and answer.get("ok") == "pong"
    )
    if answered:
        return f"{', '.join(answered)} answered ping"
    if len(wanted) == 1:
        raise RuntimeError(f"{wanted[0]} did not answer a ping within {timeout:g}s")
    raise RuntimeError(f"none of {', '.join(wanted)} answered a ping within {timeout:g}s")


def check_api_key(settings: Settings) -> str:
    """The key the worker would send with is readable (a rotated key file is not empty)."""
    from worker.apikey import ApiKeySource

    return f"configured, fingerprint {ApiKeySource.from_settings(settings).fingerprint()}"


def run_checks(
    settings: Settings, worker: bool = False, node: str | None = None, timeout: float = 5.0
) -> list[CheckResult]:
    """Every check in order; the worker checks only with `worker=True`."""
    results = [
        _timed("postgres", lambda: check_postgres(settings, timeout)),
        _timed("redis", lambda: check_redis(settings, timeout)),
    ]
    if worker:
        results.append(_timed("api-key", lambda: check_api_key(settings)))
        targets = [node] if node else default_nodes(settings)
        if results[1].ok:
            results.append(_timed("worker", lambda: check_worker(targets, timeout)))
        else:
            results.append(CheckResult("worker", False, "not asked: Redis is unreachable", 0))
    return results


@click.command("health")
@click.option("--worker", "worker", is_flag=True, help="Also check the Celery worker on this host.")
@click.option(
    "--node",
    help=(
        "Celery node name to ping with --worker.  [default: this host's worker: "
        "celery@<hostname>, or celery-1@<hostname> … celery-N@<hostname> for a group of "
        "WAHERO_WORKER_PROCESSES; the first to answer will do]"
    ),
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1, max=60),
    default=5.0,
    show_default=True,
    help="Seconds each check may take.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def health_command(worker: bool, node: str | None, timeout: float, as_json: bool) -> None:
    """Check PostgreSQL (reachable, schema at head), Redis and, with --worker, this host's worker.

    Exit 0 when healthy, 1 when not: usable as a Docker HEALTHCHECK or a Kubernetes probe.
    """
    from worker.cli_common import fail
    from worker.settings import get_settings

    try:
        settings = get_settings()
    except ConfigError as error:
        fail(str(error))
    results = run_checks(settings, worker=worker, node=node, timeout=timeout)
    healthy = all(result.ok for result in results)
    if as_json:
        click.echo(json.dumps({"healthy": healthy, "checks": [asdict(r) for r in results]}))
    else:
        for r in results:
            click.echo(f"{'ok  ' if r.ok else 'FAIL'} {r.name}: {r.detail} ({r.ms} ms)")
    raise SystemExit(0 if healthy else 1)
