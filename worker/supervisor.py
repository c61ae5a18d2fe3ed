"""`wahero-bulk worker` with more than one process: N Celery workers under one parent.

A worker process sends on one thread pool and so on one core (the GIL); the parent starts one
child per core by default, each the same threads-pool worker a single process would be. The
parent passes TERM, INT, HUP (warm shutdown) and QUIT (cold) on to every child, waits for them,
and restarts a child that dies while the group runs. A child whose parent dies gets SIGTERM
from the kernel (Linux), so no worker outlives its group unnoticed.
Messages a dead child held are the sweep's, like those of any dead worker.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

log = logging.getLogger("wahero_bulk.supervisor")

# What a child gets for each signal the parent receives. Ctrl-C reaches the children from the
# terminal as well: passing it on as a second SIGINT would turn Celery's warm shutdown cold.
FORWARDED = {
    signal.SIGTERM: signal.SIGTERM,
    signal.SIGINT: signal.SIGTERM,
    signal.SIGHUP: signal.SIGTERM,
    signal.SIGQUIT: signal.SIGQUIT,
}
# A child that exits sooner than this after its start is broken, not crashed: the group stops
# with its exit code instead of restarting it for ever.
STARTUP_SECONDS = 10.0
# Waits before restarting a crashed child: doubling, reset once a child has run a while.
RESTART_BACKOFF = (1.0, 2.0, 5.0, 10.0, 30.0)
POLL_SECONDS = 0.2
_PR_SET_PDEATHSIG = 1


def cpu_count() -> int:
    """Cores this process may use: its CPU affinity, capped by a container's CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    if quota is not None:
        cores = min(cores, math.ceil(quota))
    return max(1, cores)


def cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs allowed by the cgroup's CFS quota (`docker run --cpus`), or None when unlimited."""
    try:
        # cgroup v2: "max 100000" or "<quota> <period>".
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def child_hostname(hostname: str, index: int) -> str:
    """The node name of child `index`: `name@host` becomes `name-<index>@host`."""
    name, at, host = hostname.partition("@")
    return f"{name}-{index}{at}{host}" if at else f"{hostname}-{index}"


def split_hostname(args: Sequence[str]) -> tuple[str | None, list[str]]:
    """Celery's `--hostname`/`-n` value (if given) and the other arguments."""
    rest: list[str] = []
    hostname: str | None = None
    items = iter(args)
    for arg in items:
        if arg in ("-n", "--hostname"):
            hostname = next(items, None)
        elif arg.startswith("--hostname="):
            hostname = arg.split("=", 1)[1]
        elif arg.startswith("-n") and len(arg) > 2:
            hostname = arg[2:]
        else:
            rest.append(arg)
    return hostname, rest


def _prctl() -> Callable[..., int] | None:
    # Looked up in the parent: between fork and exec the child should only make the call
    # (ctypes.util.find_library may itself start a subprocess).
    if not sys.platform.startswith("linux"):
        return None
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return None
    prctl: Callable[..., int] = ctypes.CDLL(libc_name, use_errno=True).prctl
    return prctl


def _die_with_parent(prctl: Callable[..., int] | None, parent: int) -> Callable[[], None]:
    """The child's pre-exec step: the kernel sends it SIGTERM when the parent dies."""

    def preexec() -> None:
        if prctl is None:
            return
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:
            # The parent died before the call above: no signal will ever come.
            os._exit(1)

    return preexec


def _status(code: int) -> int:
    """A child's return code as an exit status: killed by signal N is 128 + N, as in a shell."""
    return 128 - code if code < 0 else code


@dataclass
class _Child:
    index: int
    argv: list[str]
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0

    def start(self, preexec: Callable[[], None] | None = None) -> None:
        # preexec_fn is safe here: the parent runs no other thread.
        self.process = subprocess.Popen(self.argv, preexec_fn=preexec)
        self.started_at = time.monotonic()


@dataclass
class Group:
    """N worker children and the loop that keeps them running until a signal stops them."""

    children: list[_Child]
    stopping: bool = False
    exit_code: int = 0
    _restart_at: dict[int, float] = field(default_factory=dict)
    _preexec: Callable[[], None] | None = None
    _forwarded: int | None = None

    def _forward(self, signum: int, _frame: FrameType | None) -> None:
        self.stopping = True
        self._forwarded = FORWARDED.get(signal.Signals(signum), signum)
        for child in self.children:
            if child.process is not None and child.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    child.process.send_signal(self._forwarded)

    def _start(self, child: _Child) -> None:
        child.start(self._preexec)
        if self._forwarded is not None and child.process is not None:
            # The signal came while this child was being started, before _forward could see it.
            with contextlib.suppress(ProcessLookupError):
                child.process.send_signal(self._forwarded)

    def run(self) -> int:
        """Start every child, supervise them, and return the group's exit code."""
        self._preexec = _die_with_parent(_prctl(), os.getpid())
        for signum in FORWARDED:
            signal.signal(signum, self._forward)
        for child in self.children:
            if self.stopping:  # stopped while starting: no more children
                break
            self._start(child)
        log.info("worker group started processes=%d", len(self.children))
        while True:
            running = self._poll()
            if self.stopping and not running:
                return self.exit_code
            time.sleep(POLL_SECONDS)

    def _poll(self) -> int:
        running = 0
        now = time.monotonic()
        for child in self.children:
            process = child.process
            if process is None:
                if not self.stopping and now >= self._restart_at.get(child.index, 0.0):
                    self._start(child)
                    running += 1
                continue
            code = process.poll()
            if code is None:
                running += 1
                continue
            child.process = None
            if self.stopping:
                self.exit_code = self.exit_code or _status(code)
                continue
            if now - child.started_at < STARTUP_SECONDS:
                # Broken at start (bad arguments, no broker): the same would happen again.
                log.error("worker process %d exited at start code=%d", child.index, code)
                self.exit_code = _status(code) or 1
                self._forward(signal.SIGTERM, None)
                continue
            child.restarts = 0 if now - child.started_at > 60 else child.restarts + 1
            wait = RESTART_BACKOFF[min(child.restarts, len(RESTART_BACKOFF) - 1)]
            log.warning(
                "worker process %d exited code=%d; restarting in %.0fs", child.index, code, wait
            )
            self._restart_at[child.index] = now + wait
        return running


def run_group(processes: int, celery_args: Sequence[str]) -> int:
    """Run `processes` single-process workers (`wahero-bulk worker --processes 1 …`)."""
    hostname, rest = split_hostname(celery_args)
    base = hostname or "celery@%h"
    children = [
        _Child(
            index,
            [
                sys.executable,
                "-m",
                "worker.cli",
                "worker",
                "--processes",
                "1",
                "--hostname",
                child_hostname(base, index),
                *rest,
            ],
        )
        for index in range(1, processes + 1)
    ]
    return Group(children).run()
