"""CSV out of the database, streamed row by row, safe to open in a spreadsheet.

Cells that a spreadsheet would read as a formula (`=`, `+`, `-`, `@`, or a leading tab or
carriage return) get a leading single quote: message bodies and error texts come from outside
and must never run as formulas on an operator's machine (OWASP "CSV injection").
"""

from __future__ import annotations

import csv
import uuid
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TextIO

from sqlalchemy import text

from worker.reports import jsonable, stream

_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_FORMULA_FIRST = frozenset(_FORMULA_STARTS)

# Every column an audit of a campaign needs, in order; `export` writes these.
EXPORT_FIELDS = (
    "id",
    "row_number",
    "phone",
    "status",
    "skip_reason",
    "attempts",
    "provider_message_id",
    "cost",
    "currency",
    "error_code",
    "error_message",
    "last_http_status",
    "queued_at",
    "sent_at",
    "updated_at",
    "body",
)

_EXPORT = text("""
SELECT id, row_number, phone, status, skip_reason, attempts, provider_message_id, cost, currency,
       error_code, error_message, last_http_status, queued_at, sent_at, updated_at, body
FROM messages WHERE campaign_id = :id ORDER BY id
""")


def neutralise(value: Any) -> str:
    """A cell as text; one a spreadsheet would take for a formula gets a leading quote."""
    # Runs for every cell of a million-row export: the common cases first, without calls.
    if value.__class__ is str:
        cell: str = value
    elif value is None:
        return ""
    elif value.__class__ is int:
        cell = str(value)  # "-5" would still be neutralised below
    else:
        cell = str(jsonable(value))
    return "'" + cell if cell and cell[0] in _FORMULA_FIRST else cell


def write_csv(out: TextIO, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
    """Write a header and rows as CSV, neutralising every cell; returns the rows written."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    count = 0
    cell = neutralise
    for row in rows:
        writer.writerow([cell(value) for value in row])
        count += 1
    return count


def iter_export(campaign_id: uuid.UUID) -> Iterator[Sequence[Any]]:
    """Every message of a campaign with all its columns, in id order, streamed."""
    for row in stream(_EXPORT, {"id": campaign_id}):
        yield tuple(row)


def export_campaign(campaign_id: uuid.UUID, out: TextIO) -> int:
    """Write the whole campaign as CSV (EXPORT_FIELDS) to `out`; returns the rows written."""
    return write_csv(out, EXPORT_FIELDS, iter_export(campaign_id))
