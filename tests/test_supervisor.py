"""`wahero-bulk worker --processes N`: the supervisor (worker/supervisor.py) and its group.

Unit tests of the helpers and of `Group` on tiny Python children, the `worker` command's choice
between one process and a group, then real groups of two Celery children on the real PostgreSQL,
Redis and simulator: both children send, a SIGTERM to the parent is a warm shutdown of all,
a SIGKILLed child is restarted without anything sent twice, children die with their parent, and
a child broken at start stops the group instead of being restarted for ever.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from tests.simfixture import SIM_KEY, SimProcess
from tests.test_faults import assert_delivery_invariant
from tests.test_pipeline import assert_sent_matches_received, recipients, worker_env
from tests.workerproc import INSTANCE, WorkerProcess, Workers, campaign_status, counts, wait_for
from worker import supervisor
from worker.cli import main
from worker.producer import enqueue_campaign
from worker.redis_client import get_redis
from worker.settings import get_settings
from worker.supervisor import Group, _Child, child_hostname, cpu_count, split_hostname
from worker.sweep import tick

GROUP = ("--processes", "2")
READY = re.compile(r"(\S+@\S+) ready\.")
# A worker with nowhere to send: for tests that only start and stop processes.
IDLE_ENV = {"WAHERO_API_KEY": SIM_KEY, "WAHERO_BASE_URL": "http://127.0.0.1:1"}

# ------------------------------------------------------------------ helpers of the parent


def test_child_hostname_numbers_the_name_before_the_host() -> None:
    assert child_hostname("celery@%h", 1) == "celery-1@%h"
    assert child_hostname("w0-42@box.example", 3) == "w0-42-3@box.example"
    assert child_hostname("plain", 2) == "plain-2"


@pytest.mark.parametrize(
    ("args", "hostname", "rest"),
    [
        (["-n", "x@h", "--loglevel", "INFO"], "x@h", ["--loglevel", "INFO"]),
        (["-nX@h", "-E"], "X@h", ["-E"]),
        (["--hostname", "x@h"], "x@h", []),
        (["-E", "--hostname=x@h", "-O", "fair"], "x@h", ["-E", "-O", "fair"]),
        (["--loglevel", "DEBUG"], None, ["--loglevel", "DEBUG"]),
        ([], None, []),
    ],
)
def test_split_hostname_takes_every_spelling_of_the_option(
    args: list[str], hostname: str | None, rest: list[str]
) -> None:
    assert split_hostname(args) == (hostname, rest)


def test_cpu_count_is_at_least_one_and_at_most_the_machines() -> None:
    assert 1 <= cpu_count() <= (os.cpu_count() or 1)


# ------------------------------------------------------------------ Group on tiny children


@pytest.fixture()
def own_signals() -> Iterator[None]:
    """Group.run installs handlers in this process: put pytest's back afterwards."""
    saved = {signum: signal.getsignal(signum) for signum in supervisor.FORWARDED}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def python_child(index: int, code: str) -> _Child:
    return _Child(index, [sys.executable, "-c", code])


# Exits 0 on SIGTERM, like a Celery worker's warm shutdown.
WARM = "import signal, sys; signal.signal(signal.SIGTERM, lambda *a: sys.exit(0)); "
# Then waits for that signal, however long it takes (pytest-timeout bounds a test that hangs).
UNTIL_SIGNALLED = "signal.pause()"


def test_a_child_broken_at_start_stops_the_group_with_its_code(own_signals: None) -> None:
    sleeper = python_child(2, WARM + UNTIL_SIGNALLED)
    group = Group([python_child(1, "raise SystemExit(3)"), sleeper])
    started = time.monotonic()
    assert group.run() == 3
    assert time.monotonic() - started < 10  # the sleeper was stopped, not waited for
    assert all(child.process is None for child in group.children)


def test_a_child_that_dies_later_is_restarted_until_a_signal_stops_the_group(
    own_signals: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(supervisor, "STARTUP_SECONDS", 0.0)
    monkeypatch.setattr(supervisor, "RESTART_BACKOFF", (0.0,))
    runs = tmp_path / "runs"
    # Each run appends a line and crashes; the third asks the parent to stop, then waits for it.
    code = (
        WARM + f"runs = open({str(runs)!r}, 'a+'); runs.write('x'); runs.close(); "
        f"n = len(open({str(runs)!r}).read()); "
        "import os; n >= 3 and os.kill(os.getppid(), signal.SIGTERM); "
        f"n >= 3 and {UNTIL_SIGNALLED}; sys.exit(5)"
    )
    group = Group([python_child(1, code)])
    started = time.monotonic()
    assert group.run() == 0  # the last run ended by the forwarded SIGTERM, warm
    assert runs.read_text() == "xxx"
    assert time.monotonic() - started < 10


def test_a_signal_while_a_child_starts_still_reaches_it(
    own_signals: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SIGTERM lands while the first child is being started (before its Popen exists): it must
    # still get the signal, and the second child must not be started at all.
    real_start = _Child.start

    def start_after_a_signal(self: _Child, preexec: Any = None) -> None:
        if self.index == 1:
            os.kill(os.getpid(), signal.SIGTERM)
            assert group.stopping  # the handler has run, and this child does not exist yet
        real_start(self, preexec)

    monkeypatch.setattr(_Child, "start", start_after_a_signal)
    group = Group([python_child(1, WARM + UNTIL_SIGNALLED), python_child(2, "pass")])
    started = time.monotonic()
    # Killed by the signal before its handler is installed, or stopped by it: 143 or 0.
    assert group.run() in (0, 128 + signal.SIGTERM)
    assert time.monotonic() - started < 10, "the first child never got the SIGTERM"
    assert group.children[1].started_at == 0.0  # never started


# ------------------------------------------------------------------ the worker command


@pytest.fixture()
def worker_cli(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, list[Any]]]:
    """`wahero-bulk worker` in-process with app.worker_main and run_group recorded."""
    from worker.app import app

    calls: dict[str, list[Any]] = {"worker_main": [], "run_group": []}
    monkeypatch.setenv("WAHERO_API_KEY", "wahero_test_x")
    monkeypatch.setattr(app, "worker_main", lambda argv: calls["worker_main"].append(argv))

    def run_group(processes: int, celery_args: Any) -> int:
        calls["run_group"].append((processes, tuple(celery_args)))
        return 7

    monkeypatch.setattr(supervisor, "run_group", run_group)
    monkeypatch.setattr(supervisor, "cpu_count", lambda: 5)
    get_settings.cache_clear()
    yield calls
    get_settings.cache_clear()


def invoke_worker(*args: str, **env: str) -> Any:
    get_settings.cache_clear()
    return CliRunner().invoke(main, ["worker", *args], env=env)


def test_one_process_runs_the_celery_worker_in_process(worker_cli: dict[str, list[Any]]) -> None:
    result = invoke_worker("--loglevel", "DEBUG", WAHERO_WORKER_PROCESSES="1")
    assert result.exit_code == 0, result.output
    assert worker_cli["run_group"] == []
    [argv] = worker_cli["worker_main"]
    assert argv[0] == "worker" and argv[-2:] == ["--loglevel", "DEBUG"]
    assert "--processes" not in argv  # the option is ours, never Celery's


def test_processes_option_runs_a_group_with_the_celery_arguments(
    worker_cli: dict[str, list[Any]],
) -> None:
    result = invoke_worker("--processes", "3", "-n", "w@h", "--loglevel", "DEBUG")
    assert result.exit_code == 7  # the group's exit code is the command's
    assert worker_cli["run_group"] == [(3, ("-n", "w@h", "--loglevel", "DEBUG"))]
    assert worker_cli["worker_main"] == []


def test_zero_processes_means_one_per_core(worker_cli: dict[str, list[Any]]) -> None:
    assert invoke_worker(WAHERO_WORKER_PROCESSES="0").exit_code == 7
    assert invoke_worker("--processes", "0", WAHERO_WORKER_PROCESSES="1").exit_code == 7
    assert worker_cli["run_group"] == [(5, ()), (5, ())]


def test_the_option_wins_over_the_setting(worker_cli: dict[str, list[Any]]) -> None:
    assert invoke_worker("--processes", "1", WAHERO_WORKER_PROCESSES="4").exit_code == 0
    assert invoke_worker("--processes", "2", WAHERO_WORKER_PROCESSES="1").exit_code == 7
    assert len(worker_cli["worker_main"]) == 1
    assert worker_cli["run_group"] == [(2, ())]


def test_a_negative_process_count_is_a_usage_error(worker_cli: dict[str, list[Any]]) -> None:
    result = invoke_worker("--processes", "-1")
    assert result.exit_code == 2
    assert worker_cli == {"worker_main": [], "run_group": []}


# ------------------------------------------------------------------ real groups


def process_state(pid: int) -> str | None:
    """The /proc state letter of `pid` (R, S, Z, …), None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan may wait a while for whoever reaps it)."""
    return process_state(pid) not in (None, "Z")


def age(pid: int) -> float:
    """Seconds since `pid` started (its /proc start time against the system's uptime)."""
    start_ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    return uptime - start_ticks / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> set[int]:
    """The live child processes of `pid`, from /proc/*/stat."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(entry.name))
    return found


def ready_nodes(worker: WorkerProcess) -> list[str]:
    """Node names in the order their ` ready.` lines appeared in the group's log."""
    return READY.findall(worker.log())


def start_group(workers: Workers, env: dict[str, str]) -> tuple[WorkerProcess, set[int]]:
    """`wahero-bulk worker --processes 2`; returns once both children are ready."""
    group = workers.start(env, args=GROUP)
    wait_for(
        lambda: len(ready_nodes(group)) >= 2 or not group.alive(),
        60,
        message="both children ready",
    )
    assert group.alive(), group.log()[-3000:]
    kids = wait_for(lambda: len(c := children(group.process.pid)) == 2 and c, 10)
    return group, kids


def owner(pid: int) -> str:
    """store.claim's lease owner for a worker process on this host (Sender.owner)."""
    return f"{socket.gethostname()}:{pid}"


def lease_owners(engine: sa.Engine, campaign_id: Any) -> set[str]:
    with engine.connect() as conn:
        return set(
            conn.scalars(
                sa.text(
                    "SELECT DISTINCT lease_owner FROM messages "
                    "WHERE campaign_id = :id AND status = 'sending' AND lease_owner IS NOT NULL"
                ),
                {"id": campaign_id},
            )
        )


def node_stats(nodes: list[str]) -> dict[str, Any]:
    """Celery's `inspect stats` of these nodes (pid, tasks run by name)."""
    from worker.app import app

    replies = app.control.inspect(destination=nodes, timeout=5).stats()
    return dict(replies or {})


def test_a_group_of_two_sends_every_message_once_with_both_children(
    db: sa.Engine, workers: Workers, sim_process: Callable[..., SimProcess]
) -> None:
    sim = sim_process(latency_ms=20, jitter_ms=20)
    group, kids = start_group(workers, worker_env(sim))
    nodes = ready_nodes(group)
    host = socket.gethostname()
    assert sorted(nodes) == [f"w0-{os.getpid()}-{i}@{host}" for i in (1, 2)]
    result = enqueue_campaign(instance_id=INSTANCE, message="Hi", recipients=recipients(300))
    wait_for(
        lambda: campaign_status(db, result.campaign_id) == "completed",
        60,
        0.1,
        f"campaign to complete (counts {counts(db, result.campaign_id)})",
    )
    assert counts(db, result.campaign_id) == {"sent": 300}
    assert_sent_matches_received(db, result.campaign_id, sim)
    # Both children took part: each node ran send_batch jobs, in its own process.
    stats = node_stats(nodes)
    assert set(stats) == set(nodes), stats
    assert {stats[node]["pid"] for node in nodes} == kids
    batches = {node: stats[node]["total"].get("wahero.send_batch", 0) for node in nodes}
    assert all(batches.values()), batches
    assert sum(batches.values()) >= 300 // 10  # WAHERO_BATCH_SIZE=10
    assert children(group.process.pid) == kids and "Traceback" not in group.log()


def test_sigterm_to_the_parent_is_a_warm_shutdown_of_every_child(
    db: sa.Engine, workers: Workers, sim_process: Callable[..., SimProcess]
) -> None:
    sim = sim_process(latency_ms=50, jitter_ms=20)
    group, kids = start_group(workers, worker_env(sim))
    result = enqueue_campaign(instance_id=INSTANCE, message="Hi", recipients=recipients(600))
    campaign = str(result.campaign_id)
    # Mid-campaign, with batches in flight in both children.
    wait_for(lambda: len(sim.received()) >= 60, 60, message="first sends")
    os.kill(group.process.pid, signal.SIGTERM)  # the parent only, not its process group
    assert group.process.wait(30) == 0, group.log()[-3000:]
    assert not any(running(pid) for pid in kids)
    assert group.log().count("Warm shutdown") == 2
    # Every batch in flight was finished and recorded: nothing is left `sending` or unknown,
    # the rest waits `pending`, and what Wahero received is exactly what is `sent`.
    by_status = counts(db, campaign)
    assert set(by_status) == {"sent", "pending"}, by_status
    assert_sent_matches_received(db, campaign, sim)
    assert lease_owners(db, campaign) == set()


@pytest.mark.slow
def test_a_sigkilled_child_is_restarted_and_nothing_is_sent_twice(
    db: sa.Engine, workers: Workers, sim_process: Callable[..., SimProcess]
) -> None:
    sim = sim_process(latency_ms=10, jitter_ms=10)
    # Paced by the shared limiter so the campaign outlasts the children's start-up grace.
    env = worker_env(sim, WAHERO_LEASE_SECONDS="10", WAHERO_RATE_LIMIT="50/s")
    group, kids = start_group(workers, env)
    total = 800
    result = enqueue_campaign(instance_id=INSTANCE, message="Hi", recipients=recipients(total))
    campaign = str(result.campaign_id)

    def busy_child() -> int | None:
        # Only a child that ran past STARTUP_SECONDS is restarted (earlier is "broken at start");
        # kill one that holds leases right now, so it dies with messages in flight.
        grown = {pid for pid in kids if age(pid) > supervisor.STARTUP_SECONDS + 1}
        holding = {pid for pid in grown if owner(pid) in lease_owners(db, campaign)}
        return min(holding, default=None)

    victim = wait_for(busy_child, 60, 0.02, "a child holding leases after the start-up grace")
    assert campaign_status(db, campaign) == "running"
    os.kill(victim, signal.SIGKILL)
    survivor = (kids - {victim}).pop()
    replacement = wait_for(
        lambda: (new := children(group.process.pid) - kids) and new.pop(), 30, 0.1, "a new child"
    )
    assert "restarting in" in group.log()
    # The sweep's part, as the beat would play it (no live worker's lease is touched): the dead
    # child's leases are back-dated instead of waited out, and a tick with the workers' lease
    # republishes the chains it was running once its unacknowledged jobs are a lease old.
    with db.begin() as conn:
        held = conn.execute(
            sa.text(
                "UPDATE messages SET lease_expires_at = now() - interval '1 second' "
                "WHERE status = 'sending' AND lease_owner = :owner"
            ),
            {"owner": owner(victim)},
        ).rowcount
    settings = get_settings().model_copy(update={"lease_seconds": 10})
    wait_for(
        lambda: (
            tick(db, get_redis(), settings).ran and campaign_status(db, campaign) == "completed"
        ),
        90,
        0.5,
        f"campaign to complete (counts {counts(db, campaign)})",
    )
    wait_for(lambda: len(ready_nodes(group)) >= 3, 60, message="the replacement child ready")
    assert children(group.process.pid) == {survivor, replacement}
    by_status = assert_delivery_invariant(db, campaign, sim)
    assert set(by_status) <= {"sent", "unknown"}, by_status
    assert by_status["sent"] + by_status.get("unknown", 0) == total
    # Only what the killed child held may be unknown: at most 4 jobs x 10 messages.
    assert by_status.get("unknown", 0) <= held <= 40
    with db.connect() as conn:
        codes = set(
            conn.scalars(sa.text("SELECT error_code FROM messages WHERE status = 'unknown'"))
        )
    assert codes <= {"LEASE_EXPIRED"}


def test_children_stop_by_themselves_when_the_parent_is_sigkilled(workers: Workers) -> None:
    group, kids = start_group(workers, IDLE_ENV)
    try:
        os.kill(group.process.pid, signal.SIGKILL)
        group.process.wait(10)
        # PR_SET_PDEATHSIG: the kernel sends each child SIGTERM, a warm shutdown.
        wait_for(lambda: not any(running(pid) for pid in kids), 30, 0.1, "orphans to exit")
        wait_for(lambda: group.log().count("Warm shutdown") == 2, 10)
    finally:
        for pid in kids:
            if running(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_child_that_fails_at_start_stops_the_group_with_an_error(workers: Workers) -> None:
    group = workers.start(IDLE_ENV, ready=False, args=(*GROUP, "--concurrency", "notanumber"))
    started = time.monotonic()
    code = group.process.wait(60)
    assert code == 2, group.log()[-3000:]  # Celery's usage error, passed on
    assert time.monotonic() - started < supervisor.STARTUP_SECONDS + 30
    log = group.log()
    assert "exited at start" in log and "restarting" not in log
    assert " ready." not in log


def test_a_containers_cpu_quota_caps_the_process_count(tmp_path: Path) -> None:
    cgroup_cpu_quota = supervisor.cgroup_cpu_quota
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_quota(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_quota(tmp_path) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("200000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_quota(v1) == 2.0
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_quota(v1) is None
    assert cgroup_cpu_quota(tmp_path / "nothing") is None


def test_cpu_count_rounds_a_fractional_quota_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervisor.os, "sched_getaffinity", lambda _pid: {0, 1, 2, 3})
    monkeypatch.setattr(supervisor, "cgroup_cpu_quota", lambda: 1.5)
    assert supervisor.cpu_count() == 2
    monkeypatch.setattr(supervisor, "cgroup_cpu_quota", lambda: None)
    assert supervisor.cpu_count() == 4
    monkeypatch.setattr(supervisor, "cgroup_cpu_quota", lambda: 0.1)
    assert supervisor.cpu_count() == 1
