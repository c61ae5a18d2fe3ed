"""Enqueue a campaign: validate and render every recipient, write all at once, then publish.

Rows stream through COPY into a staging table, so memory stays flat however long the list is;
duplicates and opted-out numbers are found by PostgreSQL in one statement. Nothing is written
unless every row is good, and no job exists before the commit.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection, text

from models.db import get_engine
from worker.csvinput import Recipient, iter_recipients, read_recipients
from worker.inputerrors import InputError
from worker.phones import InvalidPhoneError, normalise_phone
from worker.tablestats import analyse_after_load
from worker.templates import MessageTemplate, compile_template

log = logging.getLogger("wahero_bulk.producer")

SKIP_REASONS = ("invalid_phone", "duplicate", "suppressed")


@dataclass(frozen=True)
class EnqueueResult:
    """The campaign created (or found by its idempotency key) and what became of its recipients."""

    campaign_id: uuid.UUID
    status: str
    accepted: int
    skipped: dict[str, int] = field(default_factory=dict)
    created: bool = True

    def as_dict(self) -> dict[str, Any]:
        """The `enqueue --json` document of CONTRACT.md."""
        return {
            "campaign_id": str(self.campaign_id),
            "status": self.status,
            "accepted": self.accepted,
            "skipped": {reason: self.skipped.get(reason, 0) for reason in SKIP_REASONS},
        }


def enqueue_campaign(
    *,
    instance_id: str,
    message: str,
    recipients: Iterable[Mapping[str, Any]],
    name: str | None = None,
    scheduled_at: datetime | None = None,
    idempotency_key: str | None = None,
    priority: int = 0,
    created_by: str | None = None,
) -> EnqueueResult:
    """Create a campaign from an iterable of mappings with a `phone` key and template variables."""
    return _enqueue(
        instance_id=instance_id,
        template_text=message,
        rows=iter_recipients(recipients),
        source_name="recipients",
        name=name,
        scheduled_at=scheduled_at,
        idempotency_key=idempotency_key,
        priority=priority,
        created_by=created_by,
        source="python",
    )


def enqueue_csv(
    *,
    instance_id: str,
    message: str,
    csv_path: str | Path,
    name: str | None = None,
    scheduled_at: datetime | None = None,
    idempotency_key: str | None = None,
    priority: int = 0,
    created_by: str | None = None,
) -> EnqueueResult:
    """Create a campaign from a CSV file (header row with a `phone` column), streamed."""
    path = Path(csv_path)
    return _enqueue(
        instance_id=instance_id,
        template_text=message,
        rows=read_recipients(path),
        source_name=path.name,
        name=name or path.stem,
        scheduled_at=scheduled_at,
        idempotency_key=idempotency_key,
        priority=priority,
        created_by=created_by,
        source="cli",
    )


def _enqueue(
    *,
    instance_id: str,
    template_text: str,
    rows: Iterator[Recipient],
    source_name: str,
    name: str | None,
    scheduled_at: datetime | None,
    idempotency_key: str | None,
    priority: int,
    created_by: str | None,
    source: str,
) -> EnqueueResult:
    instance_id = instance_id.strip()
    if not instance_id:
        raise InputError("the instance id is empty", field="instance_id")
    if scheduled_at is not None and scheduled_at.tzinfo is None:
        raise InputError("scheduled_at needs a time zone", field="scheduled_at")
    template = compile_template(template_text, source="message")
    now = datetime.now(UTC)
    starts_now = scheduled_at is None or scheduled_at <= now
    status = "running" if starts_now else "scheduled"

    with get_engine().begin() as conn:
        if idempotency_key is not None:
            existing = _existing(conn, idempotency_key)
            if existing is not None:
                return existing
        campaign_id = uuid.uuid4()
        inserted = conn.execute(
            text("""
            INSERT INTO campaigns (id, name, instance_id, template, status, scheduled_at,
                                   started_at, idempotency_key, source, created_by, priority)
            VALUES (:id, :name, :instance_id, :template, :status, :scheduled_at,
                    CASE WHEN CAST(:starts AS boolean) THEN now() END, :key, :source,
                    :created_by, :priority)
            ON CONFLICT (idempotency_key) DO NOTHING
            RETURNING id"""),
            {
                "id": campaign_id,
                "name": (name or f"campaign {now:%Y-%m-%d %H:%M}")[:200],
                "instance_id": instance_id,
                "template": template_text,
                "status": status,
                "scheduled_at": scheduled_at,
                "starts": starts_now,
                "key": idempotency_key,
                "source": source,
                "created_by": created_by,
                "priority": priority,
            },
        ).first()
        if inserted is None:
            # A concurrent enqueue with the same key committed first.
            assert idempotency_key is not None
            existing = _existing(conn, idempotency_key)
            assert existing is not None
            return existing
        _stage(conn, template, rows, source_name)
        counts = _insert_messages(conn, campaign_id)
    # Before the first job: its claims are planned from these statistics.
    analyse_after_load(get_engine(), "messages", sum(counts.values()))
    accepted = counts.pop(None, 0)
    result = EnqueueResult(
        campaign_id, status, accepted, {reason: counts.get(reason, 0) for reason in SKIP_REASONS}
    )
    log.info(
        "campaign enqueued campaign=%s status=%s accepted=%d skipped=%s",
        campaign_id,
        status,
        accepted,
        result.skipped,
    )
    if starts_now:
        from worker.dispatch import start_campaign

        start_campaign(str(campaign_id), priority=priority)
    return result


def _existing(conn: Connection, key: str) -> EnqueueResult | None:
    row = conn.execute(
        text("SELECT id, status FROM campaigns WHERE idempotency_key = :key"), {"key": key}
    ).first()
    if row is None:
        return None
    counts: dict[str | None, int] = {
        r.skip_reason: int(r.n)
        for r in conn.execute(
            text("""SELECT skip_reason, count(*) AS n FROM messages
                    WHERE campaign_id = :id GROUP BY skip_reason"""),
            {"id": row.id},
        )
    }
    accepted = counts.pop(None, 0)
    return EnqueueResult(
        row.id,
        row.status,
        accepted,
        {reason: counts.get(reason, 0) for reason in SKIP_REASONS},
        created=False,
    )


def _stage(
    conn: Connection, template: MessageTemplate, rows: Iterator[Recipient], source_name: str
) -> None:
    conn.execute(
        text("""
        CREATE TEMP TABLE staged_recipients (
            row_number integer NOT NULL, phone text NOT NULL, body text NOT NULL,
            reason text) ON COMMIT DROP""")
    )
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    count = 0
    with cursor.copy("COPY staged_recipients (row_number, phone, body, reason) FROM STDIN") as copy:
        for recipient in rows:
            body = template.render(recipient.variables, row=recipient.row, source=source_name)
            try:
                phone, reason = normalise_phone(recipient.phone), None
            except InvalidPhoneError:
                phone, reason = recipient.phone[:64], "invalid_phone"
            copy.write_row((recipient.row, phone, body, reason))
            count += 1
    if count == 0:
        raise InputError("no recipients: the list has no data rows", source=source_name)


def _insert_messages(conn: Connection, campaign_id: uuid.UUID) -> dict[str | None, int]:
    rows = conn.execute(
        text("""
        WITH ranked AS (
            SELECT s.row_number, s.phone, s.body, s.reason,
                   row_number() OVER (PARTITION BY s.reason IS NULL, s.phone
                                      ORDER BY s.row_number) AS occurrence
            FROM staged_recipients s
        ), decided AS (
            SELECT r.row_number, r.phone, r.body,
                   CASE WHEN r.reason IS NOT NULL THEN r.reason
                        WHEN r.occurrence > 1 THEN 'duplicate'
                        WHEN EXISTS (SELECT 1 FROM suppressions x WHERE x.phone = r.phone)
                            THEN 'suppressed'
                   END AS reason
            FROM ranked r
        ), inserted AS (
            INSERT INTO messages (campaign_id, row_number, phone, body, status, skip_reason)
            SELECT :campaign_id, row_number, phone, body,
                   CASE WHEN reason IS NULL THEN 'pending' ELSE 'skipped' END, reason
            FROM decided ORDER BY row_number
            RETURNING skip_reason
        )
        SELECT skip_reason, count(*) AS n FROM inserted GROUP BY skip_reason
    """),
        {"campaign_id": campaign_id},
    ).all()
    return {row.skip_reason: int(row.n) for row in rows}


def campaign_total(campaign_id: uuid.UUID) -> int:
    """How many messages a campaign has, skipped included."""
    with get_engine().connect() as conn:
        return int(
            conn.scalar(
                sa.select(sa.func.count())
                .select_from(sa.table("messages"))
                .where(sa.column("campaign_id") == campaign_id)
            )
            or 0
        )
