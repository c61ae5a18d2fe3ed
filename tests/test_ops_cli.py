"""The ops commands through click's CliRunner on the real database: human and JSON output."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from click.testing import CliRunner, Result

from tests.workerproc import WAHERO_BULK, wait_for
from worker.cli import main
from worker.logs import setup_logging

SHOW_KEYS = {
    "id",
    "name",
    "instance_id",
    "status",
    "halt_reason",
    "scheduled_at",
    "created_at",
    "started_at",
    "finished_at",
    "total",
    "counts",
    "cost_total",
    "currency",
}
MESSAGE_KEYS = [
    "id",
    "phone",
    "status",
    "attempts",
    "provider_message_id",
    "cost",
    "currency",
    "error_code",
    "error_message",
    "sent_at",
]


@pytest.fixture(autouse=True)
def _logging_outside_the_runner() -> None:
    # The root handler must not capture one CliRunner's stderr, which is closed afterwards.
    setup_logging()


@pytest.fixture()
def ops(db: sa.Engine, redis_client: redis.Redis) -> Iterator[sa.Engine]:
    """The database and a flushed Redis (control commands publish jobs and stop flags)."""
    yield db


def run(*args: str) -> Result:
    """`wahero-bulk ARGS` in-process; stdout and stderr kept apart."""
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def insert_campaign(
    engine: sa.Engine,
    n: int,
    *,
    name: str = "promo",
    status: str = "running",
    body: str = "Halo",
    phone_base: int = 6281200000000,
) -> uuid.UUID:
    """A campaign with `n` pending messages, generated in PostgreSQL (one INSERT ... SELECT)."""
    campaign_id = uuid.uuid4()
    with engine.begin() as conn:
        conn.execute(
            sa.text("""INSERT INTO campaigns (id, name, instance_id, template, status, started_at)
                       VALUES (:id, :name, 'inst-1', :body, :status, now())"""),
            {"id": campaign_id, "name": name, "body": body, "status": status},
        )
        conn.execute(
            sa.text("""INSERT INTO messages (campaign_id, row_number, phone, body, status)
                       SELECT :id, g, CAST(:base + g AS varchar), :body, 'pending'
                       FROM generate_series(1, :n) g"""),
            {"id": campaign_id, "n": n, "body": body, "base": phone_base},
        )
    return campaign_id


def set_messages(engine: sa.Engine, campaign_id: uuid.UUID, ids: range, **values: Any) -> None:
    """Set columns of the campaign's messages whose row numbers are in `ids`."""
    sets = ", ".join(f"{k} = :{k}" for k in values)
    with engine.begin() as conn:
        conn.execute(
            sa.text(f"""UPDATE messages SET {sets} WHERE campaign_id = :id
                        AND row_number >= :lo AND row_number < :hi"""),
            {"id": campaign_id, "lo": ids.start, "hi": ids.stop, **values},
        )


def set_campaign(engine: sa.Engine, campaign_id: uuid.UUID, **values: Any) -> None:
    sets = ", ".join(f"{k} = :{k}" for k in values)
    with engine.begin() as conn:
        conn.execute(
            sa.text(f"UPDATE campaigns SET {sets} WHERE id = :id"), {"id": campaign_id, **values}
        )


def statuses(engine: sa.Engine, campaign_id: uuid.UUID) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT status, count(*) FROM messages WHERE campaign_id = :id GROUP BY 1"),
            {"id": campaign_id},
        ).all()
    return {str(s): int(n) for s, n in rows}


def mixed_campaign(engine: sa.Engine) -> uuid.UUID:
    """10 messages: 4 sent (cost 350.25 IDR), 1 failed, 1 unknown, 4 pending."""
    cid = insert_campaign(engine, 10, name="mixed")
    now = datetime.now(UTC)
    set_messages(
        engine,
        cid,
        range(1, 5),
        status="sent",
        attempts=1,
        cost="350.25",
        currency="IDR",
        provider_message_id="wamid-1",
        sent_at=now,
    )
    set_messages(engine, cid, range(5, 6), status="failed", error_code="INVALID_PHONE", attempts=1)
    set_messages(engine, cid, range(6, 7), status="unknown", error_code="TIMEOUT", attempts=1)
    set_campaign(engine, cid, started_at=now - timedelta(seconds=10))
    return cid


def one_line_error(result: Result) -> str:
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


# ---- campaigns / show ----------------------------------------------------------------------


def test_campaigns_lists_progress_counts_and_cost(ops: sa.Engine) -> None:
    mixed = mixed_campaign(ops)
    done = insert_campaign(ops, 3, name="old", status="completed", phone_base=6281300000000)
    set_messages(ops, done, range(1, 4), status="sent")

    human = run("campaigns")
    assert human.exit_code == 0, human.stderr
    assert "mixed" in human.stdout and "old" in human.stdout
    assert "6/10" in human.stdout and "3/3" in human.stdout
    assert "1,401.00 IDR" in human.stdout
    for status, count in (("sent", 4), ("pending", 4), ("failed", 1), ("unknown", 1)):
        assert f" {status} {count} " in human.stdout

    listed = json.loads(run("campaigns", "--json").stdout)
    assert [c["id"] for c in listed] == [str(done), str(mixed)]  # newest first
    assert all(set(c) == SHOW_KEYS for c in listed)
    assert listed[1]["cost_total"] == "1401.000000" and listed[1]["currency"] == "IDR"

    only = json.loads(run("campaigns", "--status", "completed", "--json").stdout)
    assert [c["id"] for c in only] == [str(done)]
    empty = run("campaigns", "--status", "halted")
    assert empty.exit_code == 0 and empty.stdout == "" and "no campaigns" in empty.stderr


def test_show_json_has_exactly_the_contract_keys(ops: sa.Engine) -> None:
    cid = mixed_campaign(ops)
    until = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    set_campaign(
        ops,
        cid,
        status="paused",
        halt_code="QUOTA_EXCEEDED",
        halt_message="daily quota",
        paused_until=until,
    )
    result = run("show", str(cid), "--json")
    assert result.exit_code == 0 and result.stderr == ""
    doc = json.loads(result.stdout)
    assert set(doc) == SHOW_KEYS
    assert doc["total"] == 10
    assert doc["counts"] == {"failed": 1, "pending": 4, "sent": 4, "unknown": 1}
    assert doc["cost_total"] == "1401.000000" and doc["currency"] == "IDR"
    assert doc["halt_reason"] == {
        "code": "QUOTA_EXCEEDED",
        "message": "daily quota",
        "until": until.isoformat(),
    }


def test_show_human_in_operator_zone_with_rate_and_time_left(
    ops: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker.settings import get_settings

    cid = mixed_campaign(ops)
    set_campaign(ops, cid, created_at=datetime(2026, 3, 1, 1, 30, tzinfo=UTC))
    result = run("show", str(cid))
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert "6/10 done" in out and "1,401.00 IDR" in out
    # 6 finished in ~10 s: 0.6/s, 4 left: about 6-7 s.
    assert "messages/s" in out and "time left" in out and "about " in out
    assert "━" in out  # the progress bar
    for status, count in (("sent", 4), ("pending", 4), ("failed", 1), ("unknown", 1)):
        assert any(line.split() == [status, str(count)] for line in _cells(out)), out

    monkeypatch.setenv("WAHERO_TIMEZONE", "Asia/Jakarta")
    get_settings.cache_clear()
    set_campaign(
        ops,
        cid,
        status="completed",
        started_at=datetime(2026, 3, 1, 1, 30, tzinfo=UTC),
        finished_at=datetime(2026, 3, 1, 2, 0, tzinfo=UTC),
    )
    out = run("show", str(cid)).stdout
    assert "2026-03-01 08:30:00 WIB" in out and "2026-03-01 09:00:00 WIB" in out
    assert "time left" not in out

    monkeypatch.setenv("WAHERO_TIMEZONE", "Europe/Berlin")
    get_settings.cache_clear()
    assert "2026-03-01 02:30:00 CET" in run("show", str(cid)).stdout


def _cells(out: str) -> Iterator[str]:
    for line in out.splitlines():
        yield line.replace("│", " ").replace("┃", " ")


def test_show_halt_reason_in_human_view(ops: sa.Engine) -> None:
    cid = insert_campaign(ops, 2)
    set_campaign(ops, cid, status="halted", halt_code="UNAUTHORIZED", halt_message="bad key")
    out = run("show", str(cid)).stdout
    assert "halt reason" in out and "UNAUTHORIZED: bad key" in out


def test_unknown_or_malformed_campaign_id_is_a_one_line_error(ops: sa.Engine) -> None:
    missing = str(uuid.uuid4())
    for args in (
        ("show", missing),
        ("show", "not-a-uuid", "--json"),
        ("messages", missing, "--json"),
        ("export", "12"),
        ("pause", missing),
        ("resume", "xyz"),
        ("cancel", missing),
        ("retry", missing, "--status", "failed"),
        ("dead-letters", "--campaign", "nope"),
        ("dead-letters", "replay", "--campaign", missing),
    ):
        line = one_line_error(run(*args))
        assert missing in line or "not a campaign id" in line, (args, line)


def test_show_watch_refreshes_until_the_campaign_ends(ops: sa.Engine, tmp_path: Path) -> None:
    cid = insert_campaign(ops, 4)
    out_path = tmp_path / "watch.out"
    with out_path.open("wb") as out:
        watcher = subprocess.Popen(
            [WAHERO_BULK, "show", str(cid), "--watch", "--interval", "0.1"],
            stdout=out,
            stderr=subprocess.PIPE,
            env={**os.environ, "COLUMNS": "120"},
        )
    try:
        set_messages(ops, cid, range(1, 3), status="sent")
        set_campaign(ops, cid, status="running")
        # Still running: the watcher keeps refreshing.
        with pytest.raises(subprocess.TimeoutExpired):
            watcher.wait(0.5)
        set_messages(ops, cid, range(3, 5), status="sent")
        set_campaign(ops, cid, status="completed", finished_at=datetime.now(UTC))
        assert watcher.wait(15) == 0, watcher.stderr.read() if watcher.stderr else ""
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()
    final = out_path.read_text()
    assert "completed" in final and "4/4 done" in final


# ---- messages ---------------------------------------------------------------------------------


def test_messages_json_is_the_contract_list(ops: sa.Engine) -> None:
    cid = mixed_campaign(ops)
    result = run("messages", str(cid), "--json")
    assert result.exit_code == 0 and result.stderr == ""
    items = json.loads(result.stdout)
    assert len(items) == 10 and all(list(item) == MESSAGE_KEYS for item in items)
    assert [item["id"] for item in items] == sorted(item["id"] for item in items)
    sent = [item for item in items if item["status"] == "sent"]
    assert len(sent) == 4 and sent[0]["cost"] == "350.250000" and sent[0]["currency"] == "IDR"
    assert sent[0]["provider_message_id"] == "wamid-1" and sent[0]["sent_at"].endswith("+00:00")

    failed = json.loads(run("messages", str(cid), "--status", "failed", "--json").stdout)
    assert [(m["status"], m["error_code"]) for m in failed] == [("failed", "INVALID_PHONE")]
    assert json.loads(run("messages", str(cid), "--status", "dead", "--json").stdout) == []


def test_messages_human_table_and_csv(ops: sa.Engine) -> None:
    cid = mixed_campaign(ops)
    table = run("messages", str(cid), "--status", "sent")
    assert table.exit_code == 0
    assert table.stdout.count("wamid-1") == 4 and "350.25 IDR" in table.stdout
    limited = run("messages", str(cid), "--limit", "3")
    assert limited.stdout.count("6281200000") == 3 and "--csv for all" in limited.stderr

    csv_out = run("messages", str(cid), "--csv").stdout.splitlines()
    assert csv_out[0] == ",".join(MESSAGE_KEYS) and len(csv_out) == 11
    both = run("messages", str(cid), "--csv", "--json")
    assert "at most one" in one_line_error(both)


def test_export_writes_every_message_with_all_columns(ops: sa.Engine, tmp_path: Path) -> None:
    from worker.exports import EXPORT_FIELDS

    cid = mixed_campaign(ops)
    target = tmp_path / "campaign.csv"
    result = run("export", str(cid), "--output", str(target))
    assert result.exit_code == 0 and result.stdout == ""
    assert "10 messages written" in result.stderr
    lines = target.read_text().splitlines()
    assert lines[0] == ",".join(EXPORT_FIELDS) and len(lines) == 11
    assert not (tmp_path / "campaign.csv.part").exists()
    assert run("export", str(cid)).stdout.splitlines() == lines


# ---- control ----------------------------------------------------------------------------------


def test_pause_resume_cancel_and_their_refusals(ops: sa.Engine) -> None:
    cid = insert_campaign(ops, 5)
    assert run("pause", str(cid)).stdout == f"campaign {cid} paused\n"
    assert "it is paused" in one_line_error(run("pause", str(cid)))
    resumed = run("resume", str(cid))
    assert resumed.stdout == f"campaign {cid} resumed; 0 dead-lettered messages queued again\n"

    cancelled = run("cancel", str(cid))
    assert cancelled.stdout == f"campaign {cid} cancelled; 5 unsent messages cancelled\n"
    assert statuses(ops, cid) == {"cancelled": 5}
    assert "it is cancelled" in one_line_error(run("cancel", str(cid)))
    assert "it is cancelled" in one_line_error(run("resume", str(cid)))

    done = insert_campaign(ops, 1, status="completed", phone_base=6281300000000)
    assert "cannot resume" in one_line_error(run("resume", str(done)))
    assert "cannot cancel" in one_line_error(run("cancel", str(done)))


def test_retry_requeues_failed_or_unknown_and_refuses_sent(ops: sa.Engine) -> None:
    cid = mixed_campaign(ops)
    set_campaign(ops, cid, status="paused")
    assert "cannot retry sent" in one_line_error(run("retry", str(cid), "--status", "sent"))
    assert statuses(ops, cid)["sent"] == 4
    result = run("retry", str(cid), "--status", "failed")
    assert result.stdout == f"campaign {cid}: 1 failed messages queued again\n"
    assert statuses(ops, cid) == {"sent": 4, "pending": 5, "unknown": 1}
    assert "1 unknown" in run("retry", str(cid), "--status", "unknown").stdout
    assert "cannot retry" in one_line_error(run("retry", str(cid), "--status", "pending"))


def _dead_letter(engine: sa.Engine, cid: uuid.UUID, rows: range) -> None:
    set_messages(engine, cid, rows, status="dead", error_code="UNAUTHORIZED")
    with engine.begin() as conn:
        conn.execute(
            sa.text("""INSERT INTO dead_letters (message_id, campaign_id, reason_code,
                                                 reason_message, payload)
                       SELECT id, campaign_id, 'UNAUTHORIZED', 'invalid api key', '{}'
                       FROM messages WHERE campaign_id = :id AND status = 'dead'"""),
            {"id": cid},
        )


def test_dead_letters_list_and_replay(ops: sa.Engine) -> None:
    cid = insert_campaign(ops, 5)
    other = insert_campaign(ops, 2, phone_base=6281300000000)
    set_campaign(ops, cid, status="halted", halt_code="UNAUTHORIZED")
    _dead_letter(ops, cid, range(1, 4))
    _dead_letter(ops, other, range(1, 2))

    listed = json.loads(run("dead-letters", "--json").stdout)
    assert len(listed) == 4
    assert set(listed[0]) == {
        "id",
        "campaign_id",
        "message_id",
        "phone",
        "reason_code",
        "reason_message",
        "created_at",
        "replayed_at",
    }
    mine = json.loads(run("dead-letters", "--campaign", str(cid), "--json").stdout)
    assert {d["phone"] for d in mine} == {"6281200000001", "6281200000002", "6281200000003"}
    human = run("dead-letters", "--campaign", str(cid)).stdout
    assert human.count("UNAUTHORIZED: invalid api key") == 3

    replay = run("dead-letters", "replay", "--campaign", str(cid))
    assert replay.stdout == f"campaign {cid}: 3 dead-lettered messages queued again\n"
    assert statuses(ops, cid) == {"pending": 5}
    assert json.loads(run("dead-letters", "--campaign", str(cid), "--json").stdout) == []
    assert len(json.loads(run("dead-letters", "--all", "--json").stdout)) == 4
    set_campaign(ops, other, status="cancelled")
    assert "cannot replay" in one_line_error(
        run("dead-letters", "replay", "--campaign", str(other))
    )


# ---- suppressions -----------------------------------------------------------------------------


def test_suppress_add_remove_list_normalise_numbers(ops: sa.Engine) -> None:
    added = run("suppress", "add", "0812-3456-7890", "--reason", "asked to stop")
    assert added.stdout == "6281234567890 suppressed\n"
    again = run("suppress", "add", "+62 812 3456 7890")
    assert again.stdout == "6281234567890 suppressed (already on the list)\n"
    listed = json.loads(run("suppress", "list", "--json").stdout)
    assert [(s["phone"], s["reason"]) for s in listed] == [("6281234567890", "asked to stop")]
    assert "asked to stop" in run("suppress", "list").stdout

    assert "not a phone number" in one_line_error(run("suppress", "add", "call me"))
    assert one_line_error(run("suppress", "remove", "12"))
    assert run("suppress", "remove", "6281234567890").stdout == "6281234567890 removed\n"
    assert "was not on the list" in run("suppress", "remove", "081234567890").stdout
    assert json.loads(run("suppress", "list", "--json").stdout) == []
    assert "no suppressed numbers" in run("suppress", "list").stderr


def test_suppress_import_is_all_or_nothing(ops: sa.Engine, tmp_path: Path) -> None:
    good = tmp_path / "optouts.csv"
    good.write_text("phone,reason\n081234567890,stop\n+6281234567891,\n081234567890,again\n")
    result = run("suppress", "import", str(good))
    assert result.stdout == "2 numbers suppressed, 0 already on the list\n"
    listed = {s["phone"]: s["reason"] for s in json.loads(run("suppress", "list", "--json").stdout)}
    assert listed == {"6281234567890": "again", "6281234567891": None}

    bad = tmp_path / "bad.csv"
    bad.write_text("phone\n081234567892\nnot a number\n")
    line = one_line_error(run("suppress", "import", str(bad)))
    assert "row 2" in line and "phone" in line
    assert len(json.loads(run("suppress", "list", "--json").stdout)) == 2  # nothing written
    assert "no 'phone' column" in one_line_error(
        run("suppress", "import", str(_write(tmp_path / "x.csv", "tel\n1\n")))
    )


def _write(path: Path, content: str) -> Path:
    path.write_text(content)
    return path


# ---- stdout holds the JSON document alone ------------------------------------------------------


@pytest.mark.slow
def test_json_alone_on_stdout_of_the_real_command(ops: sa.Engine) -> None:
    cid = mixed_campaign(ops)
    env = {**os.environ, "WAHERO_LOG_LEVEL": "DEBUG"}
    for args in (["show", str(cid)], ["messages", str(cid)], ["campaigns"], ["dead-letters"]):
        proc = subprocess.run(
            [WAHERO_BULK, *args, "--json"], env=env, capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, proc.stderr
        json.loads(proc.stdout)  # one document, nothing else
    cancel = subprocess.run(
        [WAHERO_BULK, "cancel", str(cid)], env=env, capture_output=True, text=True, timeout=60
    )
    assert cancel.stdout.strip() == f"campaign {cid} cancelled; 4 unsent messages cancelled"
    assert "campaign cancelled" in cancel.stderr  # the log line went to stderr
    wait_for(lambda: statuses(ops, cid).get("cancelled") == 4, 5)
