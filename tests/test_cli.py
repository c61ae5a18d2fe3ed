"""The command line's own contract: exit codes, one-line errors, worker queues."""

from __future__ import annotations

import subprocess

import pytest
from click.testing import CliRunner

import celeryconfig
from tests.workerproc import WAHERO_BULK
from worker.cli import main


def test_the_worker_refuses_to_start_without_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WAHERO_API_KEY", raising=False)
    monkeypatch.delenv("WAHERO_API_KEY_FILE", raising=False)
    result = subprocess.run([WAHERO_BULK, "worker"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: WAHERO_API_KEY is not set: set it (or WAHERO_API_KEY_FILE) to send messages"
    ]


def test_a_malformed_setting_is_one_line_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WAHERO_RATE_LIMIT", "lots")
    result = subprocess.run(
        [WAHERO_BULK, "show", "00000000-0000-0000-0000-000000000000"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: WAHERO_RATE_LIMIT: ")


def test_the_worker_consumes_every_configured_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    from worker.app import app

    monkeypatch.setenv("WAHERO_API_KEY", "wahero_test_x")
    monkeypatch.setenv("WAHERO_WORKER_PROCESSES", "1")
    from worker.settings import get_settings

    get_settings.cache_clear()
    monkeypatch.setattr(app, "worker_main", lambda argv: seen.append(argv))
    result = CliRunner().invoke(main, ["worker", "--loglevel", "DEBUG"])
    get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    argv = seen[0]
    queues = argv[argv.index("--queues") + 1].split(",")
    assert queues == [queue.name for queue in celeryconfig.task_queues]
    assert argv[-2:] == ["--loglevel", "DEBUG"]  # the user's options come last and win
    routed = {route["queue"] for route in celeryconfig.task_routes.values()}
    assert routed <= set(queues)
