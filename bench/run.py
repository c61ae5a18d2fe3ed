"""Throughput benchmark of wahero-bulk against the raw client ceiling and a naive Celery baseline.

    make bench                         # = .venv/bin/python bench/run.py
    .venv/bin/python bench/run.py --long              # + worker memory over a 100,000-message run
    .venv/bin/python bench/run.py --profile /tmp/prof # + py-spy profiles of the worker and enqueue
    .venv/bin/python bench/run.py --quick             # small counts: a smoke test of the script
    .venv/bin/python bench/run.py summarise /tmp/prof/worker.txt  # tables of a py-spy raw profile

Everything runs on this machine against the built-in simulator, with WAHERO_RATE_LIMIT=0, in a
database of its own (wahero_bench, dropped at the end) and Redis databases 11 (wahero-bulk) and
12 (naive). Figures go to bench/results/latest.json (plus a timestamped copy) and latest.png.
See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "bench"
RESULTS = BENCH_DIR / "results"
BIN = Path(sys.executable).parent
WAHERO_BULK = str(BIN / "wahero-bulk")
KEY = "wahero_test_simulator"
ADMIN_URL = os.environ.get("BENCH_ADMIN_DATABASE_URL", "postgresql://root@127.0.0.1:5432/postgres")
BENCH_DB = os.environ.get("BENCH_DATABASE", "wahero_bench")
REDIS_BASE = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379")
WAHERO_REDIS_DB = 11
NAIVE_REDIS_DB = 12
INSTANCE = "bench"
TEMPLATE = "Halo {{ name }}, kode Anda {{ code }}"
CLK_TCK = os.sysconf("SC_CLK_TCK")
STALL_SECONDS = 90.0

# Targets of issue 8, checked at the end.
TARGET_MSGS_0MS = 1000.0
TARGET_VS_CEILING = 0.5
TARGET_VS_NAIVE = 4.0
TARGET_MSGS_200MS = 500.0
TARGET_ENQUEUE_SECONDS = 10.0
TARGET_ENQUEUE_MB = 200.0
TARGET_GROWTH_PCT = 10.0
# `wahero-bulk worker`'s default: one sending process per core (worker/supervisor.py).
WORKER_PROCESSES = len(os.sched_getaffinity(0))
ONE_PROCESS = "1 process"


def _db_url(driver: str = "postgresql") -> str:
    base = ADMIN_URL.rsplit("/", 1)[0].split("://", 1)[1]
    return f"{driver}://{base}/{BENCH_DB}"


def phone(i: int) -> str:
    """A distinct valid Indonesian mobile number, already in Wahero's 62… form."""
    return f"62812{i:08d}"


def text(i: int) -> str:
    """The rendered TEMPLATE for recipient i."""
    return f"Halo Budi {i}, kode Anda {i % 10000:04d}"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- processes we start


_started: list[subprocess.Popen[bytes]] = []


def spawn(
    argv: list[str], env: dict[str, str], out: Path | int | None = None
) -> subprocess.Popen[bytes]:
    """Start a command in its own process group (so the whole tree can be stopped)."""
    stdout: Any = out.open("wb") if isinstance(out, Path) else out
    process = subprocess.Popen(
        argv,
        env=env,
        cwd=ROOT,
        stdout=stdout,
        stderr=subprocess.STDOUT if isinstance(out, Path) else None,
        start_new_session=True,
    )
    if isinstance(out, Path):
        stdout.close()
    _started.append(process)
    return process


def stop(process: subprocess.Popen[bytes], grace: float = 20.0) -> None:
    """SIGTERM the process group, SIGKILL it if it lingers."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
        except ProcessLookupError:
            pass
    if process in _started:
        _started.remove(process)


def stop_everything() -> None:
    for process in list(_started):
        stop(process, grace=10.0)


def base_env(**extra: str) -> dict[str, str]:
    """This environment without any WAHERO_* setting (defaults apply), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WAHERO_")}
    env.update(extra)
    return env


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


# ---------------------------------------------------------------- /proc accounting


def _stat_fields(pid: int) -> list[str]:
    raw = Path(f"/proc/{pid}/stat").read_text()
    # The command name may hold spaces and parentheses: fields start after the last ')'.
    return raw[raw.rindex(")") + 2 :].split()


def process_tree(root: int) -> list[int]:
    """The pid and all its live descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parent = int(_stat_fields(int(entry))[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(parent, []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def cpu_seconds(root: int) -> float:
    """utime+stime of the tree, plus what its reaped children used (cutime+cstime)."""
    total = 0
    for pid in process_tree(root):
        try:
            fields = _stat_fields(pid)
        except OSError:
            continue
        total += sum(int(fields[i]) for i in (11, 12, 13, 14))
    return total / CLK_TCK


def _status_kib(pid: int, name: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy since boot (all cores)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / CLK_TCK


class MemorySampler:
    """Polls the summed VmRSS of a process tree; keeps the peak and a time series."""

    def __init__(self, root: int, interval: float = 0.2, series_every: float = 1.0) -> None:
        self.root, self.interval, self.series_every = root, interval, series_every
        self.peak_kib = 0
        self.hwm_kib = 0
        self.series: list[tuple[float, float]] = []  # (seconds since start, MB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._pids: list[int] = [root]

    def __enter__(self) -> MemorySampler:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        last_tree = last_series = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            if now - last_tree > 1.0:
                self._pids, last_tree = process_tree(self.root), now
            rss = sum(_status_kib(pid, "VmRSS") for pid in self._pids)
            self.peak_kib = max(self.peak_kib, rss)
            self.hwm_kib = max(self.hwm_kib, sum(_status_kib(p, "VmHWM") for p in self._pids))
            if now - last_series >= self.series_every:
                self.series.append((now - self._started, rss / 1024))
                last_series = now
            self._stop.wait(self.interval)


@dataclass
class Usage:
    """CPU of the measured tree, the simulator and the whole machine over one phase."""

    roots: dict[str, int]
    start: dict[str, float] = field(default_factory=dict)
    end: dict[str, float] = field(default_factory=dict)

    def __enter__(self) -> Usage:
        self.start = self._read()
        return self

    def __exit__(self, *exc: object) -> None:
        self.end = self._read()

    def _read(self) -> dict[str, float]:
        values = {name: cpu_seconds(pid) for name, pid in self.roots.items()}
        values["machine"] = machine_busy_seconds()
        values["wall"] = time.monotonic()
        return values

    def used(self, name: str) -> float:
        return self.end[name] - self.start[name]


# ---------------------------------------------------------------- services


class Simulator:
    """`wahero-bulk simulate --port 0` as a subprocess."""

    def __init__(self, latency_ms: float) -> None:
        self.process = spawn(
            [WAHERO_BULK, "simulate", "--port", "0", "--latency-ms", str(latency_ms)],
            base_env(PYTHONUNBUFFERED="1"),
            out=subprocess.PIPE,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().decode().strip()
        if not line.startswith("listening on "):
            stop(self.process)
            raise RuntimeError(f"simulator did not start: {line!r}")
        self.url = line.removeprefix("listening on ")

    def stats(self) -> dict[str, Any]:
        import requests

        result: dict[str, Any] = requests.get(f"{self.url}/_sim/stats", timeout=10).json()
        return result

    def __enter__(self) -> Simulator:
        return self

    def __exit__(self, *exc: object) -> None:
        stop(self.process)
        if self.process.stdout is not None:
            self.process.stdout.close()


def create_database() -> None:
    """A fresh wahero_bench database migrated to head with `wahero-bulk db upgrade`."""
    import psycopg

    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{BENCH_DB}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{BENCH_DB}"')
    subprocess.run(
        [WAHERO_BULK, "db", "upgrade"],
        env=base_env(DATABASE_URL=_db_url()),
        cwd=ROOT,
        check=True,
        capture_output=True,
    )


def drop_database() -> None:
    import psycopg

    from models.db import reset_engine

    reset_engine()
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{BENCH_DB}" WITH (FORCE)')


def clean_slate() -> None:
    """Empty every bench table and both bench Redis databases."""
    import psycopg

    with psycopg.connect(_db_url(), autocommit=True) as conn:
        conn.execute(
            "TRUNCATE attempts, dead_letters, messages, campaigns, suppressions,"
            " broadcast_recipients, broadcasts RESTART IDENTITY CASCADE"
        )
        conn.execute("DROP TABLE IF EXISTS naive_messages")
        conn.execute("VACUUM ANALYZE")
    flush_redis()


def flush_redis() -> None:
    """Empty the two bench Redis databases (queues, stop flags, limiter state)."""
    import redis

    for db in (WAHERO_REDIS_DB, NAIVE_REDIS_DB):
        redis.Redis.from_url(f"{REDIS_BASE}/{db}").flushdb()


def percentiles(values: list[float]) -> tuple[float, float]:
    """p50 and p99 (nearest rank) of a non-empty list."""
    ordered = sorted(values)
    if not ordered:
        return float("nan"), float("nan")

    def rank(p: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, round(p * len(ordered)) - 1))]

    return rank(0.50), rank(0.99)


def background_cores(seconds: float = 1.0) -> float:
    """Cores busy on the machine while nothing of ours runs (other users' load)."""
    before = machine_busy_seconds()
    time.sleep(seconds)
    return round((machine_busy_seconds() - before) / seconds, 2)


def _result(
    system: str,
    latency: float,
    n: int,
    elapsed: float,
    offsets: list[float],
    usage: Usage,
    cpu_name: str,
    peak_kib: int,
    **extra: Any,
) -> dict[str, Any]:
    p50, p99 = percentiles(offsets)
    wall = usage.used("wall")
    return {
        "system": system,
        "latency_ms": latency,
        "messages": n,
        "completed": len(offsets),
        "seconds": round(elapsed, 3),
        "msgs_per_s": round(len(offsets) / elapsed, 1) if elapsed > 0 else 0.0,
        "p50_s": round(p50, 3),
        "p99_s": round(p99, 3),
        "peak_rss_mb": round(peak_kib / 1024, 1),
        "cpu_s_per_1k": round(usage.used(cpu_name) * 1000 / max(1, len(offsets)), 3),
        "sim_cpu_s_per_1k": round(usage.used("sim") * 1000 / max(1, len(offsets)), 3),
        "machine_busy_cores": round(usage.used("machine") / wall, 2) if wall > 0 else 0.0,
        "background_cores_after": background_cores(),
        **extra,
    }


# ---------------------------------------------------------------- 1. raw ceiling


def raw_client(url: str, n: int) -> None:
    """One child of the raw ceiling: WaheroClient on settings.concurrency threads."""
    import resource

    os.environ.update(WAHERO_API_KEY=KEY, WAHERO_BASE_URL=url, WAHERO_RATE_LIMIT="0")
    from worker.client import WaheroClient
    from worker.errors import SendError
    from worker.settings import get_settings

    settings = get_settings()
    client = WaheroClient(settings, pool_size=settings.concurrency)
    lock = threading.Lock()
    counter = iter(range(n))
    done: list[float] = []
    errors: Counter[str] = Counter()

    def loop() -> None:
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            try:
                client.send(INSTANCE, phone(i), text(i))
                done.append(time.time())
            except SendError as error:
                errors[error.code or error.outcome] += 1

    threads = [threading.Thread(target=loop) for _ in range(settings.concurrency)]
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    started = time.time()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    report = {
        "started": started,
        "done": done,
        "errors": dict(errors),
        "cpu": (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime),
        "maxrss_kib": cpu1.ru_maxrss,
        "threads": settings.concurrency,
    }
    print(json.dumps(report))


def phase_raw(latency: float, n: int, processes: int) -> dict[str, Any]:
    """The worker's own client in `processes` processes (the worker's default), no queue, no DB."""
    log(f"raw ceiling: {n} sends at {latency:g} ms in {processes} process(es)")
    shares = [n // processes + (1 if i < n % processes else 0) for i in range(processes)]
    with Simulator(latency) as sim, Usage({"sim": sim.process.pid}) as usage:
        children = [
            subprocess.Popen(
                [sys.executable, __file__, "_raw", sim.url, str(share)],
                env=base_env(),
                cwd=ROOT,
                stdout=subprocess.PIPE,
            )
            for share in shares
        ]
        outputs = [child.communicate()[0] for child in children]
        if any(child.returncode for child in children):
            raise RuntimeError("a raw ceiling child failed")
    reports = [json.loads(out) for out in outputs]
    started = min(r["started"] for r in reports)
    stamps = [t - started for r in reports for t in r["done"]]
    errors: Counter[str] = Counter()
    for r in reports:
        errors.update(r["errors"])
    usage.start["client"], usage.end["client"] = 0.0, sum(r["cpu"] for r in reports)
    return _result(
        "raw ceiling",
        latency,
        n,
        max(stamps) if stamps else 0.0,
        stamps,
        usage,
        "client",
        sum(r["maxrss_kib"] for r in reports),
        errors=dict(errors),
        threads=reports[0]["threads"],
        processes=processes,
    )


# ---------------------------------------------------------------- 2. naive baseline


def phase_naive(latency: float, n: int) -> dict[str, Any]:
    import psycopg

    log(f"naive baseline: {n} Celery tasks at {latency:g} ms")
    with psycopg.connect(_db_url(), autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS naive_messages")
        from naive import TABLE_DDL  # bench/ is on sys.path (see main)

        conn.execute(TABLE_DDL)
        with conn.cursor().copy("COPY naive_messages (id, phone, body) FROM STDIN") as copy:
            for i in range(n):
                copy.write_row((i, phone(i), text(i)))
        conn.execute("VACUUM ANALYZE naive_messages")
    broker = f"{REDIS_BASE}/{NAIVE_REDIS_DB}"
    with tempfile.TemporaryDirectory() as tmp, Simulator(latency) as sim:
        ready = Path(tmp) / "ready"
        env = base_env(
            PYTHONPATH=str(BENCH_DIR),
            NAIVE_BROKER_URL=broker,
            NAIVE_DATABASE_URL=_db_url(),
            NAIVE_BASE_URL=sim.url,
            NAIVE_READY_FILE=str(ready),
            WAHERO_API_KEY=KEY,
        )
        worker = spawn(
            [str(BIN / "celery"), "-A", "naive", "worker", "--hostname", "naive-bench@%h"],
            env,
            out=Path(tmp) / "naive.log",
        )
        try:
            wait_for(lambda: ready.exists() or worker.poll() is not None, 60, "naive worker")
            if worker.poll() is not None:
                raise RuntimeError((Path(tmp) / "naive.log").read_text()[-3000:])
            import naive

            naive.app.conf.broker_url = broker
            roots = {"worker": worker.pid, "sim": sim.process.pid}
            with MemorySampler(worker.pid) as memory, Usage(roots) as usage:
                started = time.time()
                for i in range(n):
                    naive.send.delay(i, phone(i), text(i))
                published = time.time() - started
                _wait_rows(
                    conn_url=_db_url(),
                    query="SELECT count(*) FROM naive_messages WHERE status = 'sent'",
                    params={},
                    n=n,
                )
            with psycopg.connect(_db_url()) as conn:
                stamps = [
                    row[0]
                    for row in conn.execute(
                        "SELECT extract(epoch FROM sent_at)::float8 FROM naive_messages"
                        " WHERE status = 'sent'"
                    )
                ]
            processes = len(process_tree(worker.pid))
        finally:
            stop(worker)
        offsets = [stamp - started for stamp in stamps]
        received = sim.stats().get("accepted")
    return _result(
        "naive",
        latency,
        n,
        max(offsets),
        offsets,
        usage,
        "worker",
        memory.peak_kib,
        publish_seconds=round(published, 3),
        processes=processes,
        simulator_accepted=received,
    )


def _wait_rows(conn_url: str, query: str, params: dict[str, Any], n: int) -> int:
    """Poll a count until it reaches n; fails when it stops moving for STALL_SECONDS."""
    import psycopg

    with psycopg.connect(conn_url, autocommit=True) as conn:
        last, moved = -1, time.monotonic()
        while True:
            row = conn.execute(query, params).fetchone()
            count = int(row[0]) if row else 0
            if count >= n:
                return count
            if count != last:
                last, moved = count, time.monotonic()
            elif time.monotonic() - moved > STALL_SECONDS:
                raise RuntimeError(f"stalled at {count}/{n} for {STALL_SECONDS:.0f}s")
            time.sleep(0.25)


# ---------------------------------------------------------------- 3. wahero-bulk


def worker_env(sim_url: str, **extra: str) -> dict[str, str]:
    """Default settings but for the rate limit, the key, the simulator and the bench stores."""
    return base_env(
        WAHERO_RATE_LIMIT="0",
        WAHERO_API_KEY=KEY,
        WAHERO_BASE_URL=sim_url,
        DATABASE_URL=_db_url(),
        REDIS_URL=f"{REDIS_BASE}/{WAHERO_REDIS_DB}",
        **extra,
    )


def _processes(env: dict[str, str]) -> int:
    """Sending processes `wahero-bulk worker` runs with these settings."""
    return int(env.get("WAHERO_WORKER_PROCESSES", "0")) or WORKER_PROCESSES


def start_worker(sim_url: str, log_path: Path, **extra: str) -> subprocess.Popen[bytes]:
    worker = spawn(
        [WAHERO_BULK, "worker", "--hostname", "wahero-bench@%h"],
        worker_env(sim_url, **extra),
        out=log_path,
    )
    # Every sending process of the group is consuming before the clock starts.
    processes = _processes(extra)
    wait_for(
        lambda: (
            log_path.read_text(errors="replace").count(" ready.") >= processes
            or worker.poll() is not None
        ),
        60,
        "wahero-bulk worker",
    )
    if worker.poll() is not None:
        raise RuntimeError(log_path.read_text(errors="replace")[-3000:])
    return worker


def recipients(n: int) -> Iterator[dict[str, str]]:
    for i in range(n):
        yield {"phone": f"0812{i:08d}", "name": f"Budi {i}", "code": f"{i % 10000:04d}"}


def phase_wahero(
    latency: float,
    n: int,
    *,
    on_sending: Callable[[int], None] | None = None,
    memory_every: float = 1.0,
    extra_env: dict[str, str] | None = None,
    label: str | None = None,
) -> dict[str, Any]:
    """Enqueue n messages with enqueue_campaign and time until all are `sent` in PostgreSQL.

    `on_sending(worker_pid)` is called once the worker is sending (the profiler's hook);
    `extra_env` overrides defaults (a labelled, non-default run).
    """
    import psycopg

    from worker.producer import enqueue_campaign

    log(f"wahero-bulk: {n} messages at {latency:g} ms")
    clean_slate()
    with tempfile.TemporaryDirectory() as tmp, Simulator(latency) as sim:
        worker = start_worker(sim.url, Path(tmp) / "worker.log", **(extra_env or {}))
        hook: threading.Thread | None = None
        try:
            roots = {"worker": worker.pid, "sim": sim.process.pid}
            progress: list[tuple[float, int]] = []
            with (
                MemorySampler(worker.pid, series_every=memory_every) as memory,
                Usage(roots) as usage,
            ):
                started = time.time()
                result = enqueue_campaign(
                    instance_id=INSTANCE,
                    message=TEMPLATE,
                    recipients=recipients(n),
                    name=f"bench {latency:g}ms",
                )
                enqueue_seconds = time.time() - started
                if on_sending is not None:
                    hook = threading.Thread(target=on_sending, args=(worker.pid,), daemon=True)
                    hook.start()
                _wait_sent(str(result.campaign_id), n, progress, started)
            if hook is not None:
                hook.join()
            with psycopg.connect(_db_url()) as conn:
                rows = conn.execute(
                    "SELECT status, extract(epoch FROM sent_at)::float8,"
                    " extract(epoch FROM updated_at)::float8 FROM messages"
                    " WHERE campaign_id = %s",
                    (result.campaign_id,),
                ).fetchall()
        finally:
            stop(worker)
        received = sim.stats().get("accepted")
    statuses = Counter(row[0] for row in rows)
    sent = [row for row in rows if row[0] == "sent"]
    offsets = [row[1] - started for row in sent]
    # The last outcome's write (its transaction's start), as seen by PostgreSQL.
    elapsed = max(row[2] for row in sent) - started
    if label is None:
        label = " ".join(f"{k.removeprefix('WAHERO_')}={v}" for k, v in (extra_env or {}).items())
    processes = _processes(extra_env or {})
    return _result(
        f"wahero-bulk {label}".strip(),
        latency,
        n,
        elapsed,
        offsets,
        usage,
        "worker",
        memory.peak_kib,
        enqueue_seconds=round(enqueue_seconds, 3),
        statuses=dict(statuses),
        simulator_accepted=received,
        duplicates=(received or 0) - len(sent),
        memory_series=memory.series,
        progress=progress,
        hwm_mb=round(memory.hwm_kib / 1024, 1),
        processes=processes,
    )


def _wait_sent(campaign_id: str, n: int, progress: list[tuple[float, int]], t0: float) -> None:
    """Poll the campaign's sent count (every 0.25 s) until n; logs the curve in `progress`."""
    import psycopg

    query = "SELECT count(*) FROM messages WHERE campaign_id = %s AND status = 'sent'"
    done_query = "SELECT status NOT IN ('running', 'scheduled') FROM campaigns WHERE id = %s"
    with psycopg.connect(_db_url(), autocommit=True) as conn:
        last, moved, logged = -1, time.monotonic(), 0.0
        while True:
            row = conn.execute(query, (campaign_id,)).fetchone()
            count = int(row[0]) if row else 0
            progress.append((round(time.time() - t0, 2), count))
            if count >= n:
                return
            ended = conn.execute(done_query, (campaign_id,)).fetchone()
            if ended and ended[0]:
                raise RuntimeError(f"campaign ended with {count}/{n} sent")
            if count != last:
                last, moved = count, time.monotonic()
            elif time.monotonic() - moved > STALL_SECONDS:
                raise RuntimeError(f"stalled at {count}/{n} sent for {STALL_SECONDS:.0f}s")
            if time.monotonic() - logged > 15:
                log(f"  {count}/{n} sent")
                logged = time.monotonic()
            time.sleep(0.25)


# ---------------------------------------------------------------- enqueue of a CSV


def write_csv(path: Path, rows: int) -> None:
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["phone", "name", "code"])
        for i in range(rows):
            writer.writerow([f"0812-{i // 10000:04d}-{i % 10000:04d}", f"Budi {i}", i % 10000])


def enqueue_command(csv_path: Path) -> list[str]:
    return [
        WAHERO_BULK,
        "enqueue",
        "--instance",
        INSTANCE,
        "--csv",
        str(csv_path),
        "--message",
        TEMPLATE,
        "--json",
    ]


def phase_enqueue_csv(rows: int) -> dict[str, Any]:
    """`wahero-bulk enqueue` of a rows-long CSV: wall time and the child's peak RSS (wait4)."""
    log(f"enqueue: {rows}-row CSV")
    clean_slate()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "recipients.csv"
        write_csv(path, rows)
        env = worker_env("http://127.0.0.1:9")
        started = time.monotonic()
        process = spawn(enqueue_command(path), env, out=subprocess.PIPE)
        assert process.stdout is not None
        output = process.stdout.read()
        _, status, rusage = os.wait4(process.pid, 0)
        elapsed = time.monotonic() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        process.stdout.close()
        _started.remove(process)
        size_mb = path.stat().st_size / 1e6
    if process.returncode != 0:
        raise RuntimeError(f"enqueue failed ({process.returncode}): {output[-2000:]!r}")
    doc = json.loads(output)
    clean_slate()
    return {
        "rows": rows,
        "csv_mb": round(size_mb, 1),
        "seconds": round(elapsed, 2),
        "peak_rss_mb": round(rusage.ru_maxrss / 1024, 1),
        "cpu_s": round(rusage.ru_utime + rusage.ru_stime, 2),
        "accepted": doc["accepted"],
        "skipped": doc["skipped"],
    }


# ---------------------------------------------------------------- worker memory over a long run


def phase_memory(n: int) -> dict[str, Any]:
    """A 100,000-message campaign at 0 ms: worker RSS every second, growth after warm-up."""
    run = phase_wahero(0.0, n)
    series, progress = run["memory_series"], run["progress"]
    # Warm-up: until a tenth of the messages are sent (pools, caches, thread stacks filled).
    warm_at = next((t for t, count in progress if count >= n // 10), progress[-1][0])
    end_at = run["seconds"]
    after = [mb for t, mb in series if warm_at <= t <= end_at]
    if len(after) < 4:
        after = [mb for _, mb in series]
    head = statistics.mean(after[:5])
    tail = statistics.mean(after[-5:])
    return {
        "messages": n,
        "msgs_per_s": run["msgs_per_s"],
        "warm_up_s": warm_at,
        "rss_after_warm_up_mb": round(head, 1),
        "rss_at_end_mb": round(tail, 1),
        "rss_max_mb": round(max(after), 1),
        "growth_pct": round((tail - head) * 100 / head, 1),
        "max_growth_pct": round((max(after) - head) * 100 / head, 1),
        "series": series,
        "duplicates": run["duplicates"],
    }


# ---------------------------------------------------------------- profiles (py-spy)


PY_SPY = str(BIN / "py-spy")


def profile_worker(out_dir: Path, n: int, seconds: int) -> dict[str, Any]:
    """py-spy on the worker for `seconds` while it sends an n-message campaign at 0 ms.

    Samples every thread that is not idle, so waits on sockets count: where a message's time
    goes. (py-spy's --gil view caught almost nothing on this Python, so it is not used.)
    """
    raw = out_dir / "worker.txt"

    def attach(pid: int) -> None:
        time.sleep(2.0)  # past the first claims: the steady state
        subprocess.run(
            [
                PY_SPY,
                "record",
                "--pid",
                str(pid),
                "--duration",
                str(seconds),
                "--rate",
                "100",
                "--format",
                "raw",
                "-o",
                str(raw),
                "--nonblocking",
                "--subprocesses",  # the group's sending processes, not only their parent
            ],
            check=False,
            capture_output=True,
        )

    run = phase_wahero(0.0, n, on_sending=attach)
    return {"run": _brief(run), "raw": str(raw), **summarise_profile(raw)}


def profile_enqueue(out_dir: Path, rows: int) -> dict[str, Any]:
    """py-spy (idle included: waits on PostgreSQL count) over `wahero-bulk enqueue` of a CSV."""
    clean_slate()
    raw = out_dir / "enqueue.txt"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "recipients.csv"
        write_csv(path, rows)
        subprocess.run(
            [
                PY_SPY,
                "record",
                "--idle",
                "--rate",
                "200",
                "--format",
                "raw",
                "-o",
                str(raw),
                "--",
                *enqueue_command(path),
            ],
            env=worker_env("http://127.0.0.1:9"),
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
    clean_slate()
    return {"raw": str(raw), **summarise_profile(raw)}


_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def _where(frame: str) -> tuple[str, str]:
    """(function label, module) of one collapsed-stack frame.

    py-spy names files relative to their sys.path entry (`requests/sessions.py`), so the first
    path component is the package; our own modules are shown in full (`worker.sender`).
    """
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip(), frame.strip()
    func, file = match["func"], match["file"]
    for marker in ("site-packages/", str(ROOT) + "/"):
        if marker in file:
            file = file.split(marker, 1)[1]
    module = file.removesuffix(".py")
    head = module.split("/", 1)[0]
    package = module.replace("/", ".") if head in ("worker", "models", "bench") else head
    return f"{func} ({file})", package


def summarise_profile(raw: Path, top: int = 25) -> dict[str, Any]:
    """Top functions by own samples and by inclusive samples, and own samples by package."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    total = 0
    if not raw.exists():
        return {"samples": 0, "own": [], "inclusive": [], "packages": []}
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [
            f for f in stack.split(";") if "(" in f and not f.startswith(("process ", "thread "))
        ]
        if not frames:
            continue
        total += count
        label, package = _where(frames[-1])
        own[label] += count
        packages[package] += count
        for seen in {_where(f)[0] for f in frames}:
            inclusive[seen] += count

    def pct(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(name, round(100 * c / total, 1)) for name, c in counter.most_common(top)]

    return {
        "samples": total,
        "own": pct(own),
        "inclusive": pct(inclusive),
        "packages": pct(packages),
    }


def _brief(run: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in run.items() if k not in ("memory_series", "progress")}


# ---------------------------------------------------------------- report


def ratios(runs: list[dict[str, Any]]) -> None:
    """Attach wahero-bulk's ratio to the ceiling and to naive at the same latency."""
    for run in runs:
        if run["system"] != "wahero-bulk":
            continue
        for other, key in (("raw ceiling", "vs_ceiling"), ("naive", "vs_naive")):
            match = [
                r for r in runs if r["system"] == other and r["latency_ms"] == run["latency_ms"]
            ]
            if match and match[0]["msgs_per_s"]:
                run[key] = round(run["msgs_per_s"] / match[0]["msgs_per_s"], 2)


def targets(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of issue 8 with the measured value and PASS / FAIL / SKIP."""
    runs = doc["runs"]

    def wahero(latency: float) -> dict[str, Any]:
        found = [r for r in runs if r["system"] == "wahero-bulk" and r["latency_ms"] == latency]
        return found[0] if found else {}

    fast = wahero(0.0)
    slow = next((r for r in runs if r["system"] == f"wahero-bulk {ONE_PROCESS}"), {})
    csv_run, memory = doc.get("enqueue_csv") or {}, doc.get("memory") or {}
    rows: list[tuple[str, Any, str, Callable[[Any], bool]]] = [
        (
            "0 ms: wahero-bulk msg/s",
            fast.get("msgs_per_s"),
            f">= {TARGET_MSGS_0MS:g}",
            lambda v: v >= TARGET_MSGS_0MS,
        ),
        (
            "0 ms: wahero-bulk / raw ceiling",
            fast.get("vs_ceiling"),
            f">= {TARGET_VS_CEILING}x",
            lambda v: v >= TARGET_VS_CEILING,
        ),
        (
            "0 ms: wahero-bulk / naive",
            fast.get("vs_naive"),
            f">= {TARGET_VS_NAIVE:g}x",
            lambda v: v >= TARGET_VS_NAIVE,
        ),
        (
            "200 ms: wahero-bulk msg/s (one worker)",
            slow.get("msgs_per_s"),
            f">= {TARGET_MSGS_200MS:g}",
            lambda v: v >= TARGET_MSGS_200MS,
        ),
        (
            f"enqueue {csv_run.get('rows', 100000):,}-row CSV seconds",
            csv_run.get("seconds"),
            f"< {TARGET_ENQUEUE_SECONDS:g}",
            lambda v: v < TARGET_ENQUEUE_SECONDS,
        ),
        (
            f"enqueue {csv_run.get('rows', 100000):,}-row CSV peak MB",
            csv_run.get("peak_rss_mb"),
            f"< {TARGET_ENQUEUE_MB:g}",
            lambda v: v < TARGET_ENQUEUE_MB,
        ),
        (
            "worker RSS growth % after warm-up",
            memory.get("growth_pct"),
            f"< {TARGET_GROWTH_PCT:g}",
            lambda v: v < TARGET_GROWTH_PCT,
        ),
    ]
    return [
        {
            "target": name,
            "value": value,
            "goal": goal,
            "verdict": "SKIP" if value is None else ("PASS" if check(value) else "FAIL"),
        }
        for name, value, goal, check in rows
    ]


def _fmt(value: Any, spec: str = "") -> str:
    if value is None:
        return "-"
    return format(value, spec) if spec else str(value)


def print_table(doc: dict[str, Any]) -> None:
    width = max(12, *(len(r["system"]) for r in doc["runs"]))
    header = (
        f"{'latency':>7}  {'system':<{width}} {'msgs':>6} {'msg/s':>7} {'x ceil':>6}"
        f" {'x naive':>7} {'p50 s':>6} {'p99 s':>6} {'peak MB':>7} {'CPU s/1k':>8}"
        f" {'sim s/1k':>8} {'busy':>5} {'bg':>5}"
    )
    print()
    print(header)
    print("-" * len(header))
    for r in doc["runs"]:
        print(
            f"{r['latency_ms']:>5g}ms  {r['system']:<{width}} {r['completed']:>6} "
            f"{r['msgs_per_s']:>7.1f} {_fmt(r.get('vs_ceiling'), '.2f'):>6} "
            f"{_fmt(r.get('vs_naive'), '.2f'):>7} {r['p50_s']:>6.2f} {r['p99_s']:>6.2f} "
            f"{r['peak_rss_mb']:>7.1f} {r['cpu_s_per_1k']:>8.3f} {r['sim_cpu_s_per_1k']:>8.3f} "
            f"{r['machine_busy_cores']:>5.2f} {r['background_cores_after']:>5.2f}"
        )
    print(
        "(x ceil, x naive: wahero-bulk's msg/s over theirs; busy: cores the machine used during "
        "the run; bg: cores busy just after it, with ours stopped = other load)"
    )
    if doc.get("enqueue_csv"):
        e = doc["enqueue_csv"]
        print(
            f"\nenqueue of a {e['rows']:,}-row CSV ({e['csv_mb']} MB): {e['seconds']} s, "
            f"peak RSS {e['peak_rss_mb']} MB, CPU {e['cpu_s']} s, accepted {e['accepted']:,}"
        )
    if doc.get("memory"):
        m = doc["memory"]
        print(
            f"worker RSS over a {m['messages']:,}-message campaign ({m['msgs_per_s']} msg/s): "
            f"{m['rss_after_warm_up_mb']} MB after warm-up ({m['warm_up_s']} s) -> "
            f"{m['rss_at_end_mb']} MB at the end (max {m['rss_max_mb']} MB): "
            f"growth {m['growth_pct']} % (max {m['max_growth_pct']} %)"
        )
    print("\ntargets (issue 8)")
    for t in doc["targets"]:
        print(f"  {t['verdict']:<4}  {t['target']:<42} {_fmt(t['value']):>10}  (goal {t['goal']})")
    print(
        f"\nmachine: {doc['meta']['cpus']} CPUs, "
        f"load average at start {doc['meta']['loadavg_start']}"
    )


def draw_chart(doc: dict[str, Any], path: Path) -> None:
    """One PNG: throughput, latency, CPU per message, and worker memory."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    one = f"wahero-bulk {ONE_PROCESS}"
    systems = ["raw ceiling", "naive", "wahero-bulk", one]
    colors = {
        "raw ceiling": "#9e9e9e",
        "naive": "#e07b39",
        "wahero-bulk": "#2a7ab9",
        one: "#8ab6d6",
    }
    latencies = sorted({r["latency_ms"] for r in doc["runs"]})
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    width = 0.2

    def bars(ax: Any, key: str, title: str, log_scale: bool = False) -> None:
        for s_index, system in enumerate(systems):
            values = []
            for latency in latencies:
                found = [
                    r for r in doc["runs"] if r["system"] == system and r["latency_ms"] == latency
                ]
                values.append(found[0][key] if found else 0)
            xs = [i + (s_index - 1.5) * width for i in range(len(latencies))]
            ax.bar(xs, values, width, label=system, color=colors[system])
            for x, v in zip(xs, values, strict=True):
                if not v:
                    continue  # a run this latency does not have
                ax.annotate(
                    f"{v:,.0f}" if v >= 10 else f"{v:.2f}",
                    (x, v),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                )
        ax.set_xticks(range(len(latencies)), [f"{lat:g} ms latency" for lat in latencies])
        ax.set_title(title)
        if log_scale:
            ax.set_yscale("log")

    bars(axes[0][0], "msgs_per_s", "messages / second (log)", log_scale=True)
    for i, latency in enumerate(latencies):
        goal = TARGET_MSGS_0MS if latency == 0 else TARGET_MSGS_200MS
        axes[0][0].hlines(goal, i - 0.45, i + 0.45, colors="#2a7ab9", linestyles="dashed")
    axes[0][0].legend(fontsize=8)
    bars(axes[0][1], "p99_s", "p99 enqueue-to-sent, seconds")
    bars(axes[1][0], "cpu_s_per_1k", "CPU seconds per 1,000 messages (sender side)")
    ax = axes[1][1]
    memory = doc.get("memory")
    if memory:
        xs = [t for t, _ in memory["series"]]
        ax.plot(xs, [mb for _, mb in memory["series"]], color="#2a7ab9")
        ax.axvline(memory["warm_up_s"], color="#9e9e9e", linestyle="dotted")
        ax.set_title(
            f"worker RSS, {memory['messages']:,}-message campaign (MB; growth "
            f"{memory['growth_pct']} %)"
        )
        ax.set_xlabel("seconds")
    else:
        fast = [r for r in doc["runs"] if r["system"] == "wahero-bulk"]
        for r in fast:
            ax.plot(
                [t for t, _ in r["memory_series"]],
                [mb for _, mb in r["memory_series"]],
                label=f"{r['latency_ms']:g} ms",
            )
        ax.set_title("wahero-bulk worker RSS during the runs (MB)")
        ax.set_xlabel("seconds")
        ax.legend(fontsize=8)
    meta = doc["meta"]
    fig.suptitle(
        f"wahero-bulk benchmark, {meta['timestamp']} ({meta['cpus']} CPUs, commit {meta['commit']})"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_results(doc: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    text_out = json.dumps(doc, indent=2, default=str)
    (RESULTS / "latest.json").write_text(text_out + "\n")
    stamped = RESULTS / f"bench-{doc['meta']['timestamp'].replace(':', '')}.json"
    stamped.write_text(text_out + "\n")
    draw_chart(doc, RESULTS / "latest.png")
    return stamped


# ---------------------------------------------------------------- main


def _git_commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "worker", "models"], cwd=ROOT, capture_output=True
    )
    return out.stdout.decode().strip() + ("+dirty" if dirty.stdout.strip() else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20000, help="messages per run at 0 ms")
    parser.add_argument("--slow-messages", type=int, default=10000, help="per run at 200 ms")
    parser.add_argument(
        "--naive-slow-messages",
        type=int,
        default=400,
        help="naive at 200 ms (default concurrency: 10 msg/s)",
    )
    parser.add_argument("--csv-rows", type=int, default=100000)
    parser.add_argument("--long", action="store_true", help="add the 100,000-message memory run")
    parser.add_argument("--memory-messages", type=int, default=100000)
    parser.add_argument("--profile", type=Path, help="write py-spy profiles to this folder")
    parser.add_argument("--profile-messages", type=int, default=30000)
    parser.add_argument(
        "--tuned-concurrency",
        type=int,
        default=0,
        help="also run wahero-bulk at 200 ms with this WAHERO_CONCURRENCY (not a default run)",
    )
    parser.add_argument("--quick", action="store_true", help="small counts (smoke test)")
    parser.add_argument("--no-write", action="store_true", help="print only; no results files")
    args = parser.parse_args()
    if args.quick:
        args.messages, args.slow_messages, args.naive_slow_messages = 2000, 1000, 60
        args.csv_rows, args.memory_messages, args.profile_messages = 10000, 10000, 10000

    # The bench process enqueues too: point its settings at the bench stores before any import.
    os.environ.update(
        DATABASE_URL=_db_url(), REDIS_URL=f"{REDIS_BASE}/{WAHERO_REDIS_DB}", WAHERO_RATE_LIMIT="0"
    )
    sys.path.insert(0, str(BENCH_DIR))
    sys.path.insert(0, str(ROOT))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    doc: dict[str, Any] = {
        "meta": {
            "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "command": " ".join(["bench/run.py", *sys.argv[1:]]),
            "cpus": os.cpu_count(),
            "loadavg_start": [round(x, 2) for x in os.getloadavg()],
            "commit": _git_commit(),
            "python": sys.version.split()[0],
        },
        "runs": [],
    }
    try:
        create_database()
        runs = doc["runs"]
        for latency, n, naive_n in (
            (0.0, args.messages, args.messages),
            (200.0, args.slow_messages, args.naive_slow_messages),
        ):
            runs.append(phase_raw(latency, n, WORKER_PROCESSES))
            clean_slate()
            runs.append(phase_naive(latency, naive_n))
            clean_slate()
            runs.append(phase_wahero(latency, n))
        # Issue 8's 200 ms target is for one worker process.
        one = {"WAHERO_WORKER_PROCESSES": "1"}
        runs.append(phase_wahero(200.0, args.slow_messages, extra_env=one, label=ONE_PROCESS))
        if args.tuned_concurrency:
            extra = {"WAHERO_CONCURRENCY": str(args.tuned_concurrency)}
            runs.append(phase_wahero(200.0, args.slow_messages, extra_env=extra))
        doc["enqueue_csv"] = phase_enqueue_csv(args.csv_rows)
        if args.long:
            doc["memory"] = phase_memory(args.memory_messages)
        if args.profile:
            args.profile.mkdir(parents=True, exist_ok=True)
            doc["profiles"] = {
                "worker": profile_worker(args.profile, args.profile_messages, 15),
                "enqueue": profile_enqueue(args.profile, args.csv_rows),
            }
    finally:
        stop_everything()
        try:
            drop_database()
            flush_redis()
        except Exception as error:  # cleanup must not hide the real error
            log(f"could not clean up the bench database or Redis: {error}")
    ratios(doc["runs"])
    doc["targets"] = targets(doc)
    doc["meta"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    doc["meta"]["total_seconds"] = round(time.monotonic() - started, 1)
    print_table(doc)
    if doc.get("profiles"):
        print_profiles(doc["profiles"])
    if not args.no_write:
        stamped = write_results(doc)
        log(f"wrote {RESULTS / 'latest.json'}, {stamped.name} and {RESULTS / 'latest.png'}")
    log(f"done in {doc['meta']['total_seconds']} s")


def print_profiles(profiles: dict[str, Any]) -> None:
    for name, prof in profiles.items():
        if "samples" not in prof:
            continue
        print(f"\nprofile: {name} ({prof['samples']} samples; raw stacks in {prof['raw']})")
        for title, key, count in (
            ("own time by package", "packages", 12),
            ("own time by function", "own", 15),
            ("inclusive time by function", "inclusive", 20),
        ):
            print(f"  {title}:")
            for label, pct in prof[key][:count]:
                print(f"    {pct:5.1f} %  {label}")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "_raw":
        sys.path.insert(0, str(ROOT))
        raw_client(sys.argv[2], int(sys.argv[3]))
    elif len(sys.argv) >= 3 and sys.argv[1] == "summarise":
        # `bench/run.py summarise DIR/worker.txt …`: the tables of py-spy raw profiles again.
        print_profiles({p: {"raw": p, **summarise_profile(Path(p))} for p in sys.argv[2:]})
    else:
        main()
