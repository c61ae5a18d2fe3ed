"""Bad input end to end through `wahero-bulk enqueue`: one clear line and exit 2 (or a recorded
skip), never a traceback, never a half-write: the database and the queue are left unchanged.

Already covered elsewhere and not repeated here: the CSV parser's own cases
(tests/test_csvinput.py), phones and templates with Hypothesis (tests/test_phones.py,
tests/test_templates.py), empty / header-only / no `phone` / Latin-1 files and bad templates
through the CLI (tests/test_enqueue.py), unknown or malformed campaign ids for every operating
command (tests/test_ops_cli.py::test_unknown_or_malformed_campaign_id_is_a_one_line_error).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from click.testing import CliRunner

from tests.workerproc import WAHERO_BULK, enqueue_argv
from worker.cli import main


def snapshot(engine: sa.Engine) -> tuple[int, int, int]:
    """Rows in campaigns, messages and attempts."""
    with engine.connect() as conn:
        return tuple(  # type: ignore[return-value]
            int(conn.scalar(sa.text(f"SELECT count(*) FROM {table}")) or 0)
            for table in ("campaigns", "messages", "attempts")
        )


def enqueue(csv_path: Path, message: str = "Hi {{ name }}", *extra: str) -> Any:
    return CliRunner().invoke(
        main,
        [*enqueue_argv(csv_path, message), *extra],
    )


def one_error_line(result: Any) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return str(lines[0])


def assert_nothing_written(engine: sa.Engine, broker: redis.Redis) -> None:
    assert snapshot(engine) == (0, 0, 0)
    assert broker.llen("wahero") == 0 and broker.llen("wahero.high") == 0


GOOD_ROWS = b"".join(f"08123456{i:04d},N{i}\n".encode() for i in range(5))


@pytest.mark.parametrize(
    ("name", "data", "expected"),
    [
        # A good start, then a 10 MB line: the rows before it must not be written either.
        (
            "long-line",
            b"phone,name\n" + GOOD_ROWS + b"081234567890," + b"x" * 10_000_000 + b"\n",
            r"row 6|line 7",
        ),
        ("nul", b"phone,name\n" + GOOD_ROWS + b"081234567890,A\x00B\n", r"NUL|row 6"),
        ("bad-utf8", b"phone,name\n" + GOOD_ROWS + b"081234567890,Jos\xc3\x28\n", r"UTF-8"),
        ("unclosed-quote", b"phone,name\n" + GOOD_ROWS + b'081234567890,"open\n', r"quote|CSV"),
        ("only-blank-lines", b"phone,name\n\n\r\n\n", r"no recipients"),
    ],
)
def test_a_malformed_csv_is_one_line_and_writes_nothing(
    db: sa.Engine,
    redis_client: redis.Redis,
    tmp_path: Path,
    name: str,
    data: bytes,
    expected: str,
) -> None:
    csv_path = tmp_path / f"{name}.csv"
    csv_path.write_bytes(data)
    line = one_error_line(enqueue(csv_path))
    assert f"{name}.csv" in line
    assert re.search(expected, line, re.I), line
    assert len(line) < 400  # the offending content is not echoed back
    assert_nothing_written(db, redis_client)


def test_mixed_line_endings_and_quoted_newlines_enqueue_every_row(
    db: sa.Engine, redis_client: redis.Redis, tmp_path: Path
) -> None:
    csv_path = tmp_path / "mixed.csv"
    csv_path.write_bytes(
        b'phone,name\r\n081234560001,A\n081234560002,B\r081234560003,"C\r\nline two"\r\n'
        b'081234560004,"D, ""quoted"""\n'
    )
    result = enqueue(csv_path, "Halo {{ name }}", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["accepted"] == 4
    with db.connect() as conn:
        bodies = list(conn.scalars(sa.text("SELECT body FROM messages ORDER BY row_number")))
    assert bodies == ["Halo A", "Halo B", "Halo C\r\nline two", 'Halo D, "quoted"']


def test_bad_phones_are_recorded_skips_never_errors(
    db: sa.Engine, redis_client: redis.Redis, tmp_path: Path
) -> None:
    rows = {
        "letters": ("0812-ABCD-7890", "invalid_phone"),
        "too short": ("0812345", "invalid_phone"),
        "too long": ("08123456789012345678", "invalid_phone"),
        "landline": ("021 5555 1234", "invalid_phone"),
        "empty": ("", "invalid_phone"),
        "foreign without +": ("447911123456", "invalid_phone"),
        "0062 form": ("0062 812 3456 7890", None),
        "foreign with +": ("+44 7911 123456", None),
        "same after normalising": ("+62 812-3456-7890", "duplicate"),
    }
    csv_path = tmp_path / "phones.csv"
    csv_path.write_text(
        "phone,name\n" + "".join(f'"{phone}",{label}\n' for label, (phone, _) in rows.items())
    )
    result = enqueue(csv_path, "Hi {{ name }}", "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["accepted"] == 2
    assert document["skipped"] == {"invalid_phone": 6, "duplicate": 1, "suppressed": 0}
    with db.connect() as conn:
        found = {
            r.body.removeprefix("Hi "): (r.phone, r.skip_reason)
            for r in conn.execute(sa.text("SELECT body, phone, skip_reason FROM messages"))
        }
    assert {label: reason for label, (_, reason) in found.items()} == {
        label: reason for label, (_, reason) in rows.items()
    }
    assert found["0062 form"][0] == "6281234567890"
    assert found["foreign with +"][0] == "447911123456"


@pytest.mark.parametrize(
    "template",
    [
        "{{ cycler.__init__.__globals__.os }}",
        "{{ lipsum.__globals__['os'].popen('id').read() }}",
        "{{ self._TemplateReference__context }}",
        "{% for c in ().__class__.__base__.__subclasses__() %}{{ c }}{% endfor %}",
        "{{ name.__class__.__mro__ }}",
        "{{ config }}{{ request }}{{ name.format_map }}",
    ],
)
def test_templates_reaching_for_python_internals_are_refused(
    db: sa.Engine, redis_client: redis.Redis, tmp_path: Path, template: str
) -> None:
    csv_path = tmp_path / "ok.csv"
    csv_path.write_text("phone,name\n081234567890,Ayu\n")
    line = one_error_line(enqueue(csv_path, template))
    assert "uid=" not in line
    assert_nothing_written(db, redis_client)


def test_a_variable_pushing_one_row_over_4096_characters_names_that_row(
    db: sa.Engine, redis_client: redis.Redis, tmp_path: Path
) -> None:
    csv_path = tmp_path / "long.csv"
    csv_path.write_text(
        "phone,name\n081234567890,Ayu\n081234567891,Budi\n081234567892," + "x" * 4095 + "\n"
    )
    line = one_error_line(enqueue(csv_path, "Halo {{ name }}"))
    assert "row 3" in line and "4096" in line.replace(",", "")
    assert_nothing_written(db, redis_client)


@pytest.mark.parametrize(
    "at", ["next tuesday", "2026-13-45T09:00", "2026-12-24T25:00", "", "2026-12-24T09:00+99:00"]
)
def test_an_invalid_at_is_one_line_and_writes_nothing(
    db: sa.Engine, redis_client: redis.Redis, tmp_path: Path, at: str
) -> None:
    csv_path = tmp_path / "ok.csv"
    csv_path.write_text("phone\n081234567890\n")
    line = one_error_line(enqueue(csv_path, "Hi", "--at", at))
    assert "--at" in line
    assert_nothing_written(db, redis_client)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("WAHERO_MAX_ATTEMPTS", "-1"),
        ("WAHERO_CONCURRENCY", "0"),
        ("WAHERO_RATE_LIMIT", "abc"),
        ("WAHERO_BATCH_SIZE", "99999999999"),
        ("WAHERO_LEASE_SECONDS", "1"),
        ("WAHERO_READ_TIMEOUT", "-5"),
        ("WAHERO_PRICE_PER_MESSAGE", "-1"),
        ("WAHERO_TIMEZONE", "Mars/Olympus"),
        ("DATABASE_URL", "mysql://localhost/wahero"),
    ],
)
def test_a_nonsense_setting_stops_enqueue_with_one_line_naming_it(
    db: sa.Engine, redis_client: redis.Redis, tmp_path: Path, variable: str, value: str
) -> None:
    csv_path = tmp_path / "ok.csv"
    csv_path.write_text("phone\n081234567890\n")
    done = subprocess.run(
        [WAHERO_BULK, *enqueue_argv(csv_path, "Hi")],
        env={**os.environ, variable: value},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {variable}: "), lines
    assert done.stdout == ""
    assert_nothing_written(db, redis_client)


@pytest.mark.parametrize(
    ("variable", "value"), [("WAHERO_CONCURRENCY", "0"), ("WAHERO_MAX_ATTEMPTS", "-1")]
)
def test_a_nonsense_setting_stops_the_worker_before_it_starts(variable: str, value: str) -> None:
    done = subprocess.run(
        [WAHERO_BULK, "worker"],
        env={**os.environ, "WAHERO_API_KEY": "wahero_test_x", variable: value},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {variable}: "), lines


def peak_rss_kb(pid: int) -> int:
    """VmHWM (peak resident set) of a live process, in kB; 0 once it has gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@pytest.mark.slow
def test_a_million_rows_stream_with_flat_memory(
    db: sa.Engine, redis_client: redis.Redis, tmp_path: Path
) -> None:
    rows = 1_000_000
    csv_path = tmp_path / "million.csv"
    with csv_path.open("w") as out:
        out.write("phone,name,code\n")
        for i in range(rows):
            out.write(f"0812{i:08d},Name{i},C{i % 997}\n")
    started = time.monotonic()
    process = subprocess.Popen(
        [
            WAHERO_BULK,
            *enqueue_argv(csv_path, "Halo {{ name }}, kode {{ code }}"),
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    peak = 0
    while process.poll() is None:
        peak = max(peak, peak_rss_kb(process.pid))
        time.sleep(0.05)
    elapsed = time.monotonic() - started
    stdout, stderr = process.communicate()
    assert process.returncode == 0, stderr.decode()[-2000:]
    document = json.loads(stdout)
    assert document["accepted"] == rows
    print(f"1,000,000 rows: {elapsed:.1f} s, peak RSS {peak / 1024:.0f} MiB")
    # A list held in memory would need far more than this (the file alone is ~36 MB).
    assert 0 < peak < 200 * 1024, peak
    with db.connect() as conn:
        assert conn.scalar(sa.text("SELECT count(*) FROM messages")) == rows
