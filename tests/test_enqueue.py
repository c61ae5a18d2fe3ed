"""Enqueue from the CLI and from Python: normalisation, skips, idempotency, bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from click.testing import CliRunner

from tests.workerproc import INSTANCE, enqueue_argv
from worker.cli import main
from worker.coverage import covered_campaigns
from worker.inputerrors import InputError
from worker.producer import enqueue_campaign


def table_counts(engine: sa.Engine) -> tuple[int, int]:
    with engine.connect() as conn:
        return (
            conn.scalar(sa.text("SELECT count(*) FROM campaigns")) or 0,
            conn.scalar(sa.text("SELECT count(*) FROM messages")) or 0,
        )


def run(*args: str) -> Any:
    return CliRunner().invoke(main, list(args))


def test_numbers_are_normalised_and_skips_recorded_with_reasons(
    db: sa.Engine, redis_client: redis.Redis, tmp_path: Path
) -> None:
    with db.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO suppressions (phone, reason) VALUES ('6281399998888', 'opted out')"
            )
        )
    csv_path = tmp_path / "list.csv"
    csv_path.write_text(
        "\ufeffphone,name\n0812-3456-7890,Ayu\n+62 812 3456 7890,Ayu again\n6281234567890,Ayu 3\n"
        "12345,Nobody\n021 5555 1234,Landline\n0813-9999-8888,Opted\n0857 1111 2222,Budi\n",
        encoding="utf-8",
    )
    result = run(
        *enqueue_argv(csv_path, "Halo {{ name }}"),
        "--json",
    )
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert set(document) == {"campaign_id", "status", "accepted", "skipped"}
    assert document["accepted"] == 2
    assert document["status"] == "running"
    assert document["skipped"] == {"invalid_phone": 2, "duplicate": 2, "suppressed": 1}
    with db.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT row_number, phone, body, status, skip_reason FROM messages "
                "ORDER BY row_number"
            )
        ).all()
    assert [r.phone for r in rows if r.status == "pending"] == ["6281234567890", "6285711112222"]
    assert rows[0].body == "Halo Ayu"
    assert [r.skip_reason for r in rows] == [
        None,
        "duplicate",
        "duplicate",
        "invalid_phone",
        "invalid_phone",
        "suppressed",
        None,
    ]
    assert covered_campaigns(redis_client) == {document["campaign_id"]}


def test_the_same_idempotency_key_returns_the_first_campaign(
    db: sa.Engine, redis_client: redis.Redis
) -> None:
    people = [{"phone": "081234567890", "name": "A"}, {"phone": "081234567891", "name": "B"}]
    first = enqueue_campaign(
        instance_id=INSTANCE, message="Hi {{ name }}", recipients=people, idempotency_key="order-42"
    )
    jobs = redis_client.llen("wahero")
    second = enqueue_campaign(
        instance_id=INSTANCE, message="Hi {{ name }}", recipients=people, idempotency_key="order-42"
    )
    assert second.campaign_id == first.campaign_id
    assert second.created is False and second.as_dict() == first.as_dict()
    assert table_counts(db) == (1, 2)
    assert redis_client.llen("wahero") == jobs  # nothing published twice


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("name", "data", "message", "expected"),
    [
        ("empty", b"", "Hi", "empty"),
        ("header-only", b"phone,name\n", "Hi", "no recipients"),
        ("no-phone", b"number,name\n0812345678901,A\n", "Hi", "phone"),
        ("latin1", "phone,name\n081234567890,Jos\xe9\n".encode("latin-1"), "Hi", "UTF-8"),
        (
            "missing-var",
            b"phone,name\n"
            + b"".join(f"08123456789{i},N{i}\n".encode() for i in range(6))
            + b"081234567899,\n",
            "Hi {{ name }} {{ city }}",
            "city",
        ),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_written(
    db: sa.Engine,
    redis_client: redis.Redis,
    tmp_path: Path,
    name: str,
    data: bytes,
    message: str,
    expected: str,
) -> None:
    csv_path = _write(tmp_path / f"{name}.csv", data)
    result = run(*enqueue_argv(csv_path, message))
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert expected.lower() in lines[0].lower()
    assert f"{name}.csv" in lines[0]
    assert table_counts(db) == (0, 0)
    assert redis_client.llen("wahero") == 0


def test_a_variable_missing_on_row_7_names_the_row_and_field(
    db: sa.Engine, redis_client: redis.Redis, tmp_path: Path
) -> None:
    rows = [f"08123456780{i},N{i}" for i in range(6)] + ["081234567899,"]
    csv_path = _write(tmp_path / "people.csv", ("phone,name\n" + "\n".join(rows)).encode())
    result = run(
        *enqueue_argv(csv_path, "Hi {{ name | default(undefined_thing) }}{{ city }}"),
    )
    assert result.exit_code == 2
    assert "row 1" in result.output and "city" in result.output
    assert table_counts(db) == (0, 0)
    csv_path.write_text(
        "phone,name,city\n" + "\n".join(f"{r},Bandung" for r in rows[:6]) + "\n081234567899,Budi,\n"
    )
    result = run(
        *enqueue_argv(csv_path, "Hi {{ name }}, {{ city | trim or fail_here }}"),
    )
    assert result.exit_code == 2
    assert "row 7" in result.output
    assert table_counts(db) == (0, 0)


@pytest.mark.parametrize(
    "args",
    [
        ("--message", "Hi {% if %}"),
        ("--message", "{{ ''.__class__.__mro__[1].__subclasses__() }}"),
        ("--message", "{{ 'x' * 5000 }}"),
    ],
)
def test_bad_templates_are_refused_before_anything_is_written(
    db: sa.Engine, redis_client: redis.Redis, tmp_path: Path, args: tuple[str, str]
) -> None:
    csv_path = _write(tmp_path / "ok.csv", b"phone\n081234567890\n")
    result = run("enqueue", "--instance", INSTANCE, "--csv", str(csv_path), *args)
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1
    assert table_counts(db) == (0, 0)


def test_usage_errors_exit_2(db: sa.Engine, tmp_path: Path) -> None:
    csv_path = _write(tmp_path / "ok.csv", b"phone\n081234567890\n")
    assert run("enqueue", "--instance", INSTANCE, "--csv", str(csv_path)).exit_code == 2
    assert run(*enqueue_argv(tmp_path / "nope.csv", "x")).exit_code == 2
    assert table_counts(db) == (0, 0)


def test_python_api_refuses_bad_rows_with_input_error(db: sa.Engine) -> None:
    with pytest.raises(InputError, match="phone"):
        enqueue_campaign(instance_id=INSTANCE, message="Hi", recipients=[{"name": "x"}])
    with pytest.raises(InputError):
        enqueue_campaign(instance_id=INSTANCE, message="Hi", recipients=[])
    assert table_counts(db) == (0, 0)


def test_a_publish_failure_after_commit_loses_nothing(
    db: sa.Engine, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker.redis_client import get_redis
    from worker.settings import get_settings
    from worker.sweep import tick
    from worker.tasks import send_batch

    def broken(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("broker down")

    monkeypatch.setattr(send_batch, "apply_async", broken)
    result = enqueue_campaign(
        instance_id=INSTANCE, message="Hi", recipients=[{"phone": "081234567890"}]
    )
    assert table_counts(db) == (1, 1)
    assert covered_campaigns(redis_client) == set()
    monkeypatch.undo()
    report = tick(db, get_redis(), get_settings())
    assert report.republished == [str(result.campaign_id)]
    assert covered_campaigns(redis_client) == {str(result.campaign_id)}
