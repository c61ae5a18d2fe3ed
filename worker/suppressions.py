"""The opt-out list: numbers never sent to, stored normalised so every spelling matches.

A change applies at once to campaigns still sending: the claim skips suppressed numbers
(worker.store.claim), so nothing queued is sent to them afterwards.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, text

from models.db import get_engine
from worker.csvinput import read_recipients
from worker.inputerrors import InputError
from worker.phones import normalise_phone

# Rows written per statement by `import_csv` (one transaction for the whole file).
_IMPORT_BATCH = 1000

_UPSERT = text("""
INSERT INTO suppressions (phone, reason) VALUES (:phone, :reason)
ON CONFLICT (phone) DO UPDATE SET reason = COALESCE(EXCLUDED.reason, suppressions.reason)
RETURNING (xmax = 0) AS inserted
""")

# xmax = 0 on a returned row means it was inserted, not updated: how "new" is told apart.
_UPSERT_MANY = text("""
INSERT INTO suppressions (phone, reason)
SELECT * FROM unnest(CAST(:phones AS varchar[]), CAST(:reasons AS text[]))
ON CONFLICT (phone) DO UPDATE SET reason = COALESCE(EXCLUDED.reason, suppressions.reason)
RETURNING (xmax = 0) AS inserted
""")


@dataclass(frozen=True)
class Suppressed:
    """One number on the opt-out list."""

    phone: str
    reason: str | None
    created_at: datetime

    def as_dict(self) -> dict[str, str | None]:
        """The `suppress list --json` item."""
        return {
            "phone": self.phone,
            "reason": self.reason,
            "created_at": self.created_at.isoformat(),
        }


@dataclass(frozen=True)
class ImportResult:
    """What `import_csv` did: numbers newly added and numbers already on the list."""

    added: int
    already: int


def _reason(value: str | None) -> str | None:
    value = (value or "").strip()
    return value or None


def add(phone: str, reason: str | None = None) -> tuple[str, bool]:
    """Suppress a number; returns it normalised and whether it was new (InvalidPhoneError)."""
    normalised = normalise_phone(phone)
    with get_engine().begin() as conn:
        inserted = conn.execute(_UPSERT, {"phone": normalised, "reason": _reason(reason)}).scalar()
    return normalised, bool(inserted)


def remove(phone: str) -> tuple[str, bool]:
    """Take a number off the list; returns it normalised and whether it was there."""
    normalised = normalise_phone(phone)
    with get_engine().begin() as conn:
        row = conn.execute(
            text("DELETE FROM suppressions WHERE phone = :phone RETURNING phone"),
            {"phone": normalised},
        ).first()
    return normalised, row is not None


def import_csv(path: str | os.PathLike[str]) -> ImportResult:
    """Suppress every number of a CSV (`phone` column, optional `reason`); all or nothing.

    An invalid number is an InputError naming its row, and then nothing is written.
    """
    source = os.fsdecode(path)
    added = already = 0
    with get_engine().begin() as conn:
        batch: dict[str, str | None] = {}
        for recipient in read_recipients(path):
            try:
                phone = normalise_phone(recipient.phone)
            except InputError as error:
                raise InputError(
                    error.reason, source=source, row=recipient.row, field="phone"
                ) from None
            reason = _reason(recipient.variables.get("reason"))
            # A number twice in one batch would hit ON CONFLICT twice in one statement.
            batch[phone] = reason or batch.get(phone)
            if len(batch) >= _IMPORT_BATCH:
                new, old = _write(conn, batch)
                added, already, batch = added + new, already + old, {}
        new, old = _write(conn, batch)
    return ImportResult(added + new, already + old)


def _write(conn: Connection, batch: dict[str, str | None]) -> tuple[int, int]:
    if not batch:
        return 0, 0
    flags = conn.execute(
        _UPSERT_MANY, {"phones": list(batch), "reasons": list(batch.values())}
    ).scalars()
    added = sum(1 for inserted in flags if inserted)
    return added, len(batch) - added


def list_all() -> Iterator[Suppressed]:
    """Every suppressed number, in number order, streamed."""
    with get_engine().connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=1000).execute(
            text("SELECT phone, reason, created_at FROM suppressions ORDER BY phone")
        )
        for row in result:
            yield Suppressed(row.phone, row.reason, row.created_at)
