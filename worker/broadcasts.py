"""Recurring broadcasts: a saved campaign recipe run at each occurrence of a cron expression.

Each occurrence creates its campaign with the idempotency key `broadcast:<id>:<occurrence>`, so
a beat that restarts, or two ticks racing, still create exactly one campaign per occurrence.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from sqlalchemy import Engine, text

from models.db import get_engine
from worker.inputerrors import InputError
from worker.producer import enqueue_campaign
from worker.templates import compile_template

log = logging.getLogger("wahero_bulk.broadcasts")


def next_occurrence(cron: str, zone: str, after: datetime) -> datetime:
    """The first occurrence of `cron` in `zone` strictly after `after` (returned in UTC)."""
    local = after.astimezone(ZoneInfo(zone))
    return croniter(cron, local).get_next(datetime).astimezone(UTC)


def check_schedule(cron: str, zone: str) -> None:
    """Raise InputError unless the cron expression and the zone are valid."""
    if not croniter.is_valid(cron):
        raise InputError(f"not a cron expression: {cron!r} (e.g. '0 9 * * MON')", field="cron")
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise InputError(f"unknown time zone {zone!r}", field="timezone") from None


def create_broadcast(
    *,
    name: str,
    instance_id: str,
    message: str,
    cron: str,
    zone: str,
    recipients: Iterable[Any],
    priority: int = 0,
    source: str = "recipients",
    now: datetime | None = None,
) -> uuid.UUID:
    """Save a broadcast and its recipients (each rendered once now to catch errors early)."""
    check_schedule(cron, zone)
    template = compile_template(message, source="message")
    broadcast_id = uuid.uuid4()
    first = next_occurrence(cron, zone, now or datetime.now(UTC))
    rows = []
    for recipient in recipients:
        template.render(recipient.variables, row=recipient.row, source=source)
        rows.append(
            {
                "broadcast_id": broadcast_id,
                "row_number": recipient.row,
                "phone": recipient.phone[:64],
                "variables": json.dumps(recipient.variables),
            }
        )
    if not rows:
        raise InputError("no recipients: the list has no data rows", source=source)
    with get_engine().begin() as conn:
        conn.execute(
            text("""
            INSERT INTO broadcasts (id, name, instance_id, template, cron, timezone, priority,
                                    next_run_at)
            VALUES (:id, :name, :instance_id, :template, :cron, :zone, :priority, :next)"""),
            {
                "id": broadcast_id,
                "name": name[:200],
                "instance_id": instance_id,
                "template": message,
                "cron": cron,
                "zone": zone,
                "priority": priority,
                "next": first,
            },
        )
        conn.execute(
            text("""
            INSERT INTO broadcast_recipients (broadcast_id, row_number, phone, variables)
            VALUES (:broadcast_id, :row_number, :phone, CAST(:variables AS jsonb))"""),
            rows,
        )
    log.info(
        "broadcast created broadcast=%s cron=%r zone=%s next=%s",
        broadcast_id,
        cron,
        zone,
        first.isoformat(),
    )
    return broadcast_id


def _saved_recipients(engine: Engine, broadcast_id: uuid.UUID) -> Iterator[Mapping[str, Any]]:
    with engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=2000).execute(
            text("""
            SELECT phone, variables FROM broadcast_recipients
            WHERE broadcast_id = :id ORDER BY row_number"""),
            {"id": broadcast_id},
        )
        for row in result:
            yield {**row.variables, "phone": row.phone}


def run_due_occurrences(engine: Engine, now: datetime | None = None) -> list[str]:
    """Create and start the campaign of every due occurrence; returns the campaign ids."""
    moment = now or datetime.now(UTC)
    with engine.connect() as conn:
        due = conn.execute(
            text("""
            SELECT id, name, instance_id, template, cron, timezone, priority, next_run_at
            FROM broadcasts WHERE status = 'active' AND next_run_at <= :now
            ORDER BY next_run_at"""),
            {"now": moment},
        ).all()
    created = []
    for b in due:
        occurrence = b.next_run_at.astimezone(UTC)
        try:
            result = enqueue_campaign(
                instance_id=b.instance_id,
                message=b.template,
                recipients=_saved_recipients(engine, b.id),
                name=f"{b.name} {occurrence.astimezone(ZoneInfo(b.timezone)):%Y-%m-%d %H:%M}",
                idempotency_key=f"broadcast:{b.id}:{occurrence.isoformat()}",
                priority=b.priority,
                created_by=f"broadcast:{b.id}",
            )
        except InputError as error:
            log.error("broadcast occurrence refused broadcast=%s error=%s", b.id, error)
            result = None
        following = next_occurrence(b.cron, b.timezone, max(occurrence, moment))
        with engine.begin() as conn:
            conn.execute(
                text("""
                UPDATE broadcasts SET next_run_at = :next, last_run_at = :occurrence
                WHERE id = :id AND next_run_at = :current"""),
                {"id": b.id, "next": following, "occurrence": occurrence, "current": b.next_run_at},
            )
        if result is not None:
            created.append(str(result.campaign_id))
            if result.created:
                log.info(
                    "broadcast occurrence started broadcast=%s campaign=%s at=%s",
                    b.id,
                    result.campaign_id,
                    occurrence.isoformat(),
                )
    return created


@dataclass(frozen=True)
class BroadcastRow:
    """A broadcast as listed by the CLI."""

    id: uuid.UUID
    name: str
    instance_id: str
    cron: str
    timezone: str
    status: str
    next_run_at: datetime
    last_run_at: datetime | None
    recipients: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "name": self.name,
            "instance_id": self.instance_id,
            "cron": self.cron,
            "timezone": self.timezone,
            "status": self.status,
            "next_run_at": self.next_run_at.isoformat(),
            "last_run_at": self.last_run_at.isoformat() if self.last_run_at else None,
            "recipients": self.recipients,
        }


def list_broadcasts() -> list[BroadcastRow]:
    """Every broadcast, newest first, with its recipient count."""
    with get_engine().connect() as conn:
        rows = conn.execute(
            text("""
            SELECT b.id, b.name, b.instance_id, b.cron, b.timezone, b.status, b.next_run_at,
                   b.last_run_at,
                   (SELECT count(*) FROM broadcast_recipients r WHERE r.broadcast_id = b.id)
                       AS recipients
            FROM broadcasts b ORDER BY b.created_at DESC""")
        ).all()
    return [BroadcastRow(**row._mapping) for row in rows]


def set_broadcast_status(broadcast_id: uuid.UUID, status: str, now: datetime | None = None) -> None:
    """Pause or resume a broadcast; resuming skips the occurrences missed while paused."""
    moment = now or datetime.now(UTC)
    with get_engine().begin() as conn:
        row = conn.execute(
            text("SELECT cron, timezone, status FROM broadcasts WHERE id = :id FOR UPDATE"),
            {"id": broadcast_id},
        ).first()
        if row is None:
            raise InputError(f"no broadcast {broadcast_id}")
        if row.status == status:
            raise InputError(f"broadcast {broadcast_id} is already {status}")
        conn.execute(
            text("UPDATE broadcasts SET status = :status, next_run_at = :next WHERE id = :id"),
            {
                "id": broadcast_id,
                "status": status,
                "next": next_occurrence(row.cron, row.timezone, moment),
            },
        )


def delete_broadcast(broadcast_id: uuid.UUID) -> None:
    """Delete a broadcast and its saved recipients; campaigns it created stay."""
    with get_engine().begin() as conn:
        if (
            conn.execute(
                text("DELETE FROM broadcasts WHERE id = :id RETURNING id"), {"id": broadcast_id}
            ).first()
            is None
        ):
            raise InputError(f"no broadcast {broadcast_id}")
