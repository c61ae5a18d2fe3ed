"""CSV output: formula cells neutralised, and a large campaign streamed in flat memory."""

from __future__ import annotations

import csv
import io
import threading
import tracemalloc
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa

from tests.test_ops_cli import insert_campaign, run, set_messages
from worker.exports import EXPORT_FIELDS, export_campaign, neutralise, write_csv


@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        ("=1+2", "'=1+2"),
        ('=HYPERLINK("http://x","y")', '\'=HYPERLINK("http://x","y")'),
        ("+6281", "'+6281"),
        ("-5", "'-5"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tcmd", "'\tcmd"),
        ("\rcmd", "'\rcmd"),
        ("6281234567890", "6281234567890"),
        ("Halo =x", "Halo =x"),
        ("", ""),
        (None, ""),
        (3, "3"),
    ],
)
def test_neutralise(cell: object, expected: str) -> None:
    assert neutralise(cell) == expected


def test_write_csv_quotes_and_neutralises_every_cell() -> None:
    out = io.StringIO()
    count = write_csv(out, ["a", "b"], [("=cmd|' /C calc'!A0", 'a "quoted", line\nbreak')])
    assert count == 1
    rows = list(csv.reader(io.StringIO(out.getvalue())))
    assert rows == [["a", "b"], ["'=cmd|' /C calc'!A0", 'a "quoted", line\nbreak']]


def test_messages_csv_and_export_neutralise_injected_cells(
    db: sa.Engine, redis_client: redis.Redis, tmp_path: Path
) -> None:
    cid = insert_campaign(db, 3, body='=HYPERLINK("http://evil","click")')
    set_messages(db, cid, range(1, 2), status="failed", error_code="X", error_message="@cmd")
    set_messages(db, cid, range(2, 3), status="failed", error_code="Y", error_message="-2+3")

    messages = list(csv.DictReader(io.StringIO(run("messages", str(cid), "--csv").stdout)))
    assert [m["error_message"] for m in messages] == ["'@cmd", "'-2+3", ""]
    assert messages[0]["phone"] == "6281200000001"  # digits untouched

    target = tmp_path / "out.csv"
    assert run("export", str(cid), "-o", str(target)).exit_code == 0
    with target.open(newline="") as file:
        exported = list(csv.DictReader(file))
    assert list(exported[0]) == list(EXPORT_FIELDS)
    assert all(row["body"].startswith("'=HYPERLINK(") for row in exported)
    assert exported[0]["error_message"] == "'@cmd"


class _Sink(io.TextIOBase):
    """Counts what is written and keeps nothing."""

    def __init__(self) -> None:
        self.chars = 0
        self.lines = 0

    def write(self, text: str) -> int:
        self.chars += len(text)
        self.lines += text.count("\n")
        return len(text)


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.slow
def test_export_of_200k_messages_streams_in_flat_memory(db: sa.Engine) -> None:
    rows = 200_000
    body = "Halo pelanggan setia, promo minggu ini: " + "x" * 400  # ~440 bytes a row
    cid = insert_campaign(db, rows, body=body)
    sink = _Sink()
    # RSS is sampled too: a client-side cursor would hold all rows in libpq's C memory,
    # which tracemalloc does not see (~90 MB of bodies here).
    start_rss = _rss_kib()
    peak_rss = start_rss
    done = threading.Event()

    def sample() -> None:
        nonlocal peak_rss
        while not done.wait(0.01):
            peak_rss = max(peak_rss, _rss_kib())

    sampler = threading.Thread(target=sample)
    sampler.start()
    tracemalloc.start()
    try:
        written = export_campaign(cid, sink)  # type: ignore[arg-type]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        done.set()
        sampler.join()
    assert written == rows and sink.lines == rows + 1
    assert sink.chars > rows * len(body)
    assert peak < 8 * 1024 * 1024, f"Python peak {peak / 1e6:.1f} MB"
    assert peak_rss - start_rss < 40 * 1024, f"RSS grew {(peak_rss - start_rss) / 1024:.0f} MiB"
