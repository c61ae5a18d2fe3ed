"""`wahero-bulk health [--worker]` on the real services and a real worker process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from click.testing import CliRunner, Result
from sqlalchemy.engine import make_url

from migrations import alembic_config
from tests.conftest import ADMIN_URL
from tests.simfixture import SIM_KEY
from tests.workerproc import WAHERO_BULK, Workers, wait_for
from worker.cli import main
from worker.health import check_api_key, default_nodes, run_checks
from worker.settings import get_settings, load_settings
from worker.supervisor import cpu_count

CLOSED = "127.0.0.1:1"  # nothing listens on port 1: refused at once


def health(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [WAHERO_BULK, "health", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture()
def scratch_url() -> Iterator[str]:
    """An empty database of its own, dropped afterwards."""
    name = f"wahero_health_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def test_healthy_services_exit_0_with_one_line_per_check(database_url: str) -> None:
    result = health()
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["ok   postgres", "ok   redis"]
    assert "schema at head" in lines[0]


def cli(*args: str, **env: str) -> Result:
    """The command in-process (no interpreter start-up), settings read afresh."""
    get_settings.cache_clear()
    try:
        return CliRunner().invoke(main, ["health", *args], env=env)
    finally:
        get_settings.cache_clear()


def test_json_document(database_url: str) -> None:
    result = cli("--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["healthy"] is True
    assert [(c["name"], c["ok"]) for c in document["checks"]] == [
        ("postgres", True),
        ("redis", True),
    ]
    assert all(isinstance(c["ms"], int) and c["detail"] for c in document["checks"])


def test_schema_not_at_head_is_unhealthy(scratch_url: str) -> None:
    settings = load_settings(DATABASE_URL=scratch_url)
    empty = run_checks(settings)[0]
    assert not empty.ok and "schema at none" in empty.detail
    command.upgrade(alembic_config(scratch_url), "0001")
    behind = run_checks(settings)[0]
    assert not behind.ok
    assert "schema at 0001" in behind.detail and "wahero-bulk db upgrade" in behind.detail
    command.upgrade(alembic_config(scratch_url), "head")
    assert run_checks(settings)[0].ok


def test_schema_newer_than_the_code_is_healthy_during_an_upgrade(scratch_url: str) -> None:
    # `migrate` of the next release runs first; this release's workers keep running meanwhile.
    command.upgrade(alembic_config(scratch_url), "head")
    engine = sa.create_engine(scratch_url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999_next_release'"))
    engine.dispose()
    result = run_checks(load_settings(DATABASE_URL=scratch_url))[0]
    assert result.ok
    assert "schema at 9999_next_release, newer than" in result.detail


def test_unreachable_services_exit_1_and_never_print_the_password() -> None:
    result = health(
        "--worker",
        "--timeout",
        "2",
        DATABASE_URL=f"postgresql://wahero:hunter2-secret@{CLOSED}/wahero",
        REDIS_URL=f"redis://:hunter2-secret@{CLOSED}/0",
        WAHERO_API_KEY=SIM_KEY,
    )
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "FAIL postgres",
        "FAIL redis",
        "ok   api-key",
        "FAIL worker",
    ]
    assert "Redis is unreachable" in lines[3]
    assert "hunter2-secret" not in result.stdout + result.stderr
    assert SIM_KEY not in result.stdout + result.stderr


def test_bad_configuration_is_a_usage_error() -> None:
    result = cli(REDIS_URL="http://not-redis")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: REDIS_URL")
    assert result.stdout == ""


def test_worker_check_fails_when_no_worker_answers(database_url: str) -> None:
    result = health(
        "--worker", "--node", "nobody@nowhere", "--timeout", "0.5", WAHERO_API_KEY=SIM_KEY
    )
    assert result.returncode == 1
    assert "FAIL worker: RuntimeError: nobody@nowhere did not answer" in result.stdout


def test_worker_check_passes_with_a_running_worker(workers: Workers) -> None:
    env = {"WAHERO_API_KEY": SIM_KEY, "WAHERO_BASE_URL": "http://127.0.0.1:1"}
    workers.start(env)
    node = f"w0-{os.getpid()}@{socket.gethostname()}"
    result = health("--worker", "--node", node, "--json", **env)
    assert result.returncode == 0, result.stdout + result.stderr
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert checks["worker"]["ok"] and node in checks["worker"]["detail"]
    assert list(checks) == ["postgres", "redis", "api-key", "worker"]


def test_key_file_check_catches_an_empty_file_and_shows_only_a_fingerprint(
    tmp_path: Path,
) -> None:
    key_file = tmp_path / "wahero_api_key"
    key_file.write_text("")
    settings = load_settings(WAHERO_API_KEY_FILE=str(key_file))
    results = run_checks(settings.model_copy(update={"redis_url": f"redis://{CLOSED}/0"}), True)
    assert {r.name: r.ok for r in results}["api-key"] is False
    key_file.write_text("wahero_live_rotated\n")
    detail = check_api_key(settings)
    assert detail.startswith("configured, fingerprint ")
    assert "rotated" not in detail


def test_default_nodes_are_this_hosts_single_worker_and_group_names() -> None:
    host = socket.gethostname()
    assert default_nodes(load_settings(WAHERO_WORKER_PROCESSES="1")) == [
        f"celery@{host}",
        f"celery-1@{host}",
    ]
    assert default_nodes(load_settings(WAHERO_WORKER_PROCESSES="3")) == [
        f"celery@{host}",
        *(f"celery-{i}@{host}" for i in (1, 2, 3)),
    ]
    assert len(default_nodes(load_settings(WAHERO_WORKER_PROCESSES="0"))) == cpu_count() + 1


def test_without_a_node_no_answer_names_every_candidate(database_url: str) -> None:
    settings = load_settings(WAHERO_API_KEY=SIM_KEY, WAHERO_WORKER_PROCESSES="2")
    worker = run_checks(settings, worker=True, timeout=0.5)[-1]
    host = socket.gethostname()
    assert not worker.ok
    assert worker.detail == (
        f"RuntimeError: none of celery@{host}, celery-1@{host}, celery-2@{host} "
        "answered a ping within 0.5s"
    )


def test_worker_check_without_a_node_finds_a_group_on_this_host(workers: Workers) -> None:
    env = {"WAHERO_API_KEY": SIM_KEY, "WAHERO_BASE_URL": "http://127.0.0.1:1"}
    # The default node names (a later --hostname wins over the test harness's own).
    group = workers.start(env, args=("--processes", "2", "--hostname", "celery@%h"))
    wait_for(lambda: group.log().count(" ready.") >= 2, 60, message="both children ready")
    result = health("--worker", "--json", WAHERO_WORKER_PROCESSES="2", **env)
    assert result.returncode == 0, result.stdout + result.stderr
    worker = {c["name"]: c for c in json.loads(result.stdout)["checks"]}["worker"]
    host = socket.gethostname()
    assert worker["ok"], worker
    answered = worker["detail"].removesuffix(" answered ping").split(", ")
    assert answered and set(answered) <= {f"celery-1@{host}", f"celery-2@{host}"}, worker
