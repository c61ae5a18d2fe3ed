"""`make demo`: a real campaign through PostgreSQL, Redis and a Celery worker against the simulator.

Starts the built-in simulator (with some latency and a few transient errors) and one worker,
enqueues a generated campaign of a few thousand recipients (some invalid, some repeated), shows
progress, and ends with the campaign's report.
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import sqlalchemy as sa
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

BIN = Path(sys.executable).parent
ADMIN_URL = os.environ.get(
    "DEMO_ADMIN_DATABASE_URL", "postgresql+psycopg://root@127.0.0.1:5432/postgres"
)
DEMO_DB = os.environ.get("DEMO_DATABASE", "wahero_demo")
RECIPIENTS = int(os.environ.get("DEMO_RECIPIENTS", "3000"))
console = Console(stderr=True)


def _database_url() -> str:
    admin = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        exists = conn.execute(
            sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": DEMO_DB}
        ).first()
        if not exists:
            conn.execute(sa.text(f'CREATE DATABASE "{DEMO_DB}"'))
    admin.dispose()
    return sa.engine.make_url(ADMIN_URL).set(database=DEMO_DB).render_as_string(hide_password=False)


def _recipients(path: Path, count: int) -> None:
    rng = random.Random(7)
    names = ["Ayu", "Budi", "Citra", "Dewi", "Eko", "Fajar", "Gita", "Hadi", "Indah", "Joko"]
    phones = [f"0812{rng.randrange(10**7, 10**8)}" for _ in range(count)]
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["phone", "name", "order"])
        for i, phone in enumerate(phones):
            if i % 97 == 13:
                phone = "12345"  # not a number
            elif i % 89 == 5:
                phone = phones[i - 1]  # a repeat
            elif i % 2 == 0:
                phone = "+62 " + phone[1:4] + " " + phone[4:]  # another way to write it
            writer.writerow([phone, rng.choice(names), f"INV-{10000 + i}"])


def main() -> int:
    database_url = _database_url()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": os.environ.get("DEMO_REDIS_URL", "redis://127.0.0.1:6379/1"),
        "WAHERO_API_KEY": "wahero_test_simulator",
        "WAHERO_RATE_LIMIT": "0",
        "WAHERO_RETRY_BASE_DELAY": "0.5",
        "WAHERO_LOG_LEVEL": "WARNING",
    }
    subprocess.run([str(BIN / "wahero-bulk"), "db", "upgrade"], env=env, check=True)

    workdir = Path(tempfile.mkdtemp(prefix="wahero-demo-"))
    sim = subprocess.Popen(
        [
            str(BIN / "wahero-bulk"),
            "simulate",
            "--port",
            "0",
            "--latency-ms",
            "20",
            "--jitter-ms",
            "30",
            "--error-500-rate",
            "0.02",
            "--error-503-rate",
            "0.01",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    assert sim.stdout is not None
    match = re.search(r"(https?://\S+)", sim.stdout.readline())
    if match is None:
        console.print("[red]the simulator did not start[/red]")
        return 1
    env["WAHERO_BASE_URL"] = match.group(1)
    console.print(f"simulator at {env['WAHERO_BASE_URL']}")

    worker_log = (workdir / "worker.log").open("wb")
    worker = subprocess.Popen(
        [str(BIN / "wahero-bulk"), "worker", "--hostname", "demo@%h"],
        env=env,
        stdout=worker_log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        csv_path = workdir / "recipients.csv"
        _recipients(csv_path, RECIPIENTS)
        console.print(f"enqueueing {RECIPIENTS} recipients from {csv_path}")
        started = time.monotonic()
        enqueued = subprocess.run(
            [
                str(BIN / "wahero-bulk"),
                "enqueue",
                "--instance",
                str(uuid.uuid4()),
                "--csv",
                str(csv_path),
                "--name",
                "demo broadcast",
                "--json",
                "--message",
                "Halo {{ name }}, pesanan {{ order }} sudah dikirim. Terima kasih!",
            ],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        result = json.loads(enqueued.stdout)
        console.print(
            f"campaign {result['campaign_id']}: {result['accepted']} accepted, "
            f"skipped {result['skipped']}"
        )
        engine = sa.create_engine(database_url)
        campaign_id = result["campaign_id"]
        with Progress(
            TextColumn("sending"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as bar:
            task = bar.add_task("send", total=result["accepted"])
            while True:
                with engine.connect() as conn:
                    status, done = conn.execute(
                        sa.text("""
                        SELECT c.status, (SELECT count(*) FROM messages m
                          WHERE m.campaign_id = c.id AND m.status NOT IN
                          ('pending', 'sending', 'skipped'))
                        FROM campaigns c WHERE c.id = :id"""),
                        {"id": campaign_id},
                    ).one()
                bar.update(task, completed=done)
                if status != "running" or worker.poll() is not None:
                    break
                time.sleep(0.2)
        elapsed = time.monotonic() - started
        engine.dispose()
        report = subprocess.run(
            [str(BIN / "wahero-bulk"), "show", campaign_id], env=env, capture_output=True, text=True
        )
        print(report.stdout, end="")
        sent = json.loads(
            subprocess.run(
                [str(BIN / "wahero-bulk"), "show", campaign_id, "--json"],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )["counts"].get("sent", 0)
        print(f"time taken: {elapsed:.1f} s, {sent / elapsed:.0f} messages/s (enqueue to done)")
        return 0 if status == "completed" else 1
    finally:
        for process in (worker, sim):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)


if __name__ == "__main__":
    sys.exit(main())
