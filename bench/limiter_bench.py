"""Benchmark of the shared rate limiter: achieved/configured rate and 429s for 1, 2, 4 workers.

    .venv/bin/python bench/limiter_bench.py [--rate 20] [--messages 300] [--workers 1 2 4]

The simulator enforces `--rate` requests per second per key (fixed 1 s windows, 429 beyond) and
the workers are configured with the same WAHERO_RATE_LIMIT (or `--over` times it, to exercise
the adaptive path). Each run sends one campaign with real `wahero-bulk worker` processes on a
throwaway PostgreSQL database and a dedicated Redis database. Writes bench/results/limiter.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
ADMIN_URL = os.environ.get(
    "TEST_ADMIN_DATABASE_URL", "postgresql+psycopg://root@127.0.0.1:5432/postgres"
)
INSTANCE = "11111111-2222-3333-4444-555555555555"


def _setup_env(db_name: str, redis_db: int) -> str:
    from sqlalchemy.engine import make_url

    url = make_url(ADMIN_URL).set(database=db_name).render_as_string(hide_password=False)
    os.environ["DATABASE_URL"] = url
    os.environ["REDIS_URL"] = f"redis://127.0.0.1:6379/{redis_db}"
    return url


def _create_db(db_name: str, url: str) -> None:
    import sqlalchemy as sa
    from alembic import command

    from migrations import alembic_config

    admin = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)'))
        conn.execute(sa.text(f'CREATE DATABASE "{db_name}"'))
    admin.dispose()
    command.upgrade(alembic_config(url), "head")


def _drop_db(db_name: str) -> None:
    import sqlalchemy as sa

    from models.db import reset_engine

    reset_engine()
    admin = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)'))
    admin.dispose()


def _start_sim(rate: int, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    command = [sys.executable, "-m", "worker.cli", "simulate", "--port", "0"]
    command += ["--rate-limit", str(rate), "--rate-window", "1.0"]
    with log.open("wb") as err:
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=err)
    assert process.stdout is not None
    line = process.stdout.readline().decode().strip()
    if not line.startswith("listening on "):
        process.kill()
        raise SystemExit(f"simulator did not start: {log.read_text()[-500:]}")
    return process, line.removeprefix("listening on ")


def _start_workers(
    n: int, env: dict[str, str], logs: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    """Start `n` workers into `procs` (so the caller stops them even when this fails)."""
    for i in range(n):
        out = (logs / f"worker-{i}.log").open("wb")
        procs.append(
            subprocess.Popen(
                [
                    str(BIN / "wahero-bulk"),
                    "worker",
                    "--processes",
                    "1",
                    "--hostname",
                    f"bench{i}-{os.getpid()}@%h",
                ],
                env={**os.environ, **env},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
    deadline = time.monotonic() + 60
    while not all(" ready." in (logs / f"worker-{i}.log").read_text() for i in range(n)):
        if time.monotonic() > deadline:
            raise SystemExit("workers did not become ready")
        time.sleep(0.1)


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    import signal

    for proc in procs:
        os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def _sim_get(url: str, name: str) -> Any:
    import requests

    response = requests.get(f"{url}/_sim/{name}", timeout=30)
    response.raise_for_status()
    return response.json()


def _status(campaign_id: Any) -> str:
    import sqlalchemy as sa

    from models.db import get_engine

    with get_engine().connect() as conn:
        return str(
            conn.scalar(sa.text("SELECT status FROM campaigns WHERE id = :id"), {"id": campaign_id})
        )


def run_once(
    n_workers: int, rate: int, configured: int, messages: int, logs: Path
) -> dict[str, Any]:
    """One campaign with `n_workers` processes; returns the measured numbers."""
    import redis
    import sqlalchemy as sa

    from models.db import get_engine
    from worker.producer import enqueue_campaign
    from worker.simulator import DEFAULT_KEY

    redis.Redis.from_url(os.environ["REDIS_URL"]).flushdb()
    with get_engine().begin() as conn:
        conn.execute(sa.text("TRUNCATE attempts, dead_letters, messages, campaigns CASCADE"))
    sim, url = _start_sim(rate, logs / f"sim-{n_workers}.log")
    env = {
        "WAHERO_API_KEY": DEFAULT_KEY,
        "WAHERO_BASE_URL": url,
        "WAHERO_RATE_LIMIT": f"{configured}/s",
        "WAHERO_CONCURRENCY": "8",
        "WAHERO_BATCH_SIZE": "10",
        "WAHERO_JOBS_PER_CAMPAIGN": "4",
    }
    procs: list[subprocess.Popen[bytes]] = []
    try:
        _start_workers(n_workers, env, logs, procs)
        recipients = [{"phone": f"62812{10000000 + i}"} for i in range(messages)]
        result = enqueue_campaign(instance_id=INSTANCE, message="bench", recipients=recipients)
        deadline = time.monotonic() + messages / rate * 3 + 60
        while _status(result.campaign_id) != "completed":
            if time.monotonic() > deadline:
                raise SystemExit(f"campaign did not complete with {n_workers} workers")
            time.sleep(0.2)
        stamps = sorted(datetime.fromisoformat(m["at"]) for m in _sim_get(url, "received"))
        stats = _sim_get(url, "stats")
    finally:
        _stop(procs)
        sim.terminate()
        sim.wait(10)
    span = (stamps[-1] - stamps[0]).total_seconds()
    achieved = (len(stamps) - 1) / span if span > 0 else 0.0
    return {
        "workers": n_workers,
        "wahero_limit_per_s": rate,
        "configured_per_s": configured,
        "messages": messages,
        "accepted": len(stamps),
        "seconds": round(span, 2),
        "achieved_per_s": round(achieved, 2),
        "achieved_over_limit": round(achieved / rate, 3),
        "http_429": stats["by_status"].get("429", 0),
        "requests": stats["requests"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=20, help="Wahero's limit (per second)")
    parser.add_argument("--over", type=float, default=1.0, help="WAHERO_RATE_LIMIT = rate * over")
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--redis-db", type=int, default=8)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "limiter.json")
    args = parser.parse_args()
    db_name = f"wahero_bench_{os.getpid()}"
    url = _setup_env(db_name, args.redis_db)
    sys.path.insert(0, str(ROOT))
    logs = Path(tempfile.mkdtemp(prefix="limiter-bench-"))
    print(f"logs in {logs}", file=sys.stderr)
    _create_db(db_name, url)
    configured = round(args.rate * args.over)
    runs = []
    try:
        for n in args.workers:
            run = run_once(n, args.rate, configured, args.messages, logs)
            print(json.dumps(run), flush=True)
            runs.append(run)
    finally:
        _drop_db(db_name)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {"command": " ".join(sys.argv), "runs": runs}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
