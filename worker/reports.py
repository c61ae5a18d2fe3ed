"""Read-only views of campaigns for ops: summaries and counts, computed in PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Row, TextClause, text

from models.db import get_engine


@dataclass(frozen=True)
class CampaignSummary:
    """One campaign's state, counts by status and total cost."""

    id: uuid.UUID
    name: str
    instance_id: str
    status: str
    halt_code: str | None
    halt_message: str | None
    paused_until: datetime | None
    scheduled_at: datetime | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    counts: dict[str, int]
    cost_total: Decimal
    currency: str | None

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def done(self) -> int:
        """Messages in a final status (everything but pending and sending)."""
        return self.total - self.counts.get("pending", 0) - self.counts.get("sending", 0)

    def as_dict(self) -> dict[str, Any]:
        """The `show --json` document of CONTRACT.md (decimals and times as strings)."""

        def iso(value: datetime | None) -> str | None:
            return value.isoformat() if value is not None else None

        halt = None
        if self.halt_code is not None:
            halt = {
                "code": self.halt_code,
                "message": self.halt_message,
                "until": iso(self.paused_until),
            }
        return {
            "id": str(self.id),
            "name": self.name,
            "instance_id": self.instance_id,
            "status": self.status,
            "halt_reason": halt,
            "scheduled_at": iso(self.scheduled_at),
            "created_at": iso(self.created_at),
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "total": self.total,
            "counts": dict(sorted(self.counts.items())),
            "cost_total": str(self.cost_total),
            "currency": self.currency,
        }


_SUMMARY = text("""
SELECT c.id, c.name, c.instance_id, c.status, c.halt_code, c.halt_message, c.paused_until,
       c.scheduled_at, c.created_at, c.started_at, c.finished_at
FROM campaigns c WHERE c.id = ANY(:ids)
""")

_LIST = text("""
SELECT c.id FROM campaigns c
WHERE CAST(:status AS varchar) IS NULL OR c.status = CAST(:status AS varchar)
ORDER BY c.created_at DESC, c.id LIMIT :limit
""")

# Both answered from the (campaign_id, status) index: no message row reaches Python.
_COUNTS = text("""
SELECT campaign_id, status, count(*) AS n FROM messages WHERE campaign_id = ANY(:ids)
GROUP BY campaign_id, status
""")

_COST = text("""
SELECT campaign_id, currency, sum(cost) AS total FROM messages
WHERE campaign_id = ANY(:ids) AND status = 'sent' AND cost IS NOT NULL
GROUP BY campaign_id, currency
ORDER BY campaign_id, total DESC
""")


def campaign_summary(campaign_id: uuid.UUID) -> CampaignSummary | None:
    """The campaign's summary, or None when no campaign has that id."""
    found = _summaries([campaign_id])
    return found[0] if found else None


def campaign_summaries(status: str | None = None, limit: int = 50) -> list[CampaignSummary]:
    """The newest campaigns (optionally of one status) with their counts and cost."""
    with get_engine().connect() as conn:
        ids = list(conn.execute(_LIST, {"status": status, "limit": limit}).scalars())
    return _summaries(ids)


def _summaries(ids: list[uuid.UUID]) -> list[CampaignSummary]:
    if not ids:
        return []
    with get_engine().connect() as conn:
        rows = {row.id: row for row in conn.execute(_SUMMARY, {"ids": ids})}
        counts: dict[uuid.UUID, dict[str, int]] = {}
        for r in conn.execute(_COUNTS, {"ids": ids}):
            counts.setdefault(r.campaign_id, {})[str(r.status)] = int(r.n)
        costs: dict[uuid.UUID, tuple[Decimal, str | None]] = {}
        for r in conn.execute(_COST, {"ids": ids}):
            # Mixed currencies cannot be added up: report the one with the largest total.
            costs.setdefault(r.campaign_id, (Decimal(r.total), r.currency))
    return [_summary(rows[i], counts.get(i, {}), costs.get(i)) for i in ids if i in rows]


def _summary(
    row: Any, counts: dict[str, int], cost: tuple[Decimal, str | None] | None
) -> CampaignSummary:
    return CampaignSummary(
        id=row.id,
        name=row.name,
        instance_id=row.instance_id,
        status=row.status,
        halt_code=row.halt_code,
        halt_message=row.halt_message,
        paused_until=row.paused_until,
        scheduled_at=row.scheduled_at,
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        counts=counts,
        cost_total=cost[0] if cost else Decimal("0"),
        currency=cost[1] if cost else None,
    )


def campaign_exists(campaign_id: uuid.UUID) -> bool:
    """Whether a campaign has that id."""
    with get_engine().connect() as conn:
        found = conn.execute(text("SELECT 1 FROM campaigns WHERE id = :id"), {"id": campaign_id})
        return found.first() is not None


# The `messages --json` item of CONTRACT.md, in order; `--csv` has the same columns.
MESSAGE_FIELDS = (
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
)

# Rows fetched per round trip from the server-side cursor: memory stays flat at any size.
STREAM_BATCH = 2000


_MESSAGES_SELECT = """
SELECT id, phone, status, attempts, provider_message_id, cost, currency, error_code,
       error_message, sent_at
FROM messages WHERE campaign_id = :id"""
# LIMIT NULL is no limit.
_MESSAGES = text(_MESSAGES_SELECT + " ORDER BY id LIMIT :limit")
_MESSAGES_OF_STATUS = text(_MESSAGES_SELECT + " AND status = :status ORDER BY id LIMIT :limit")


def iter_messages(
    campaign_id: uuid.UUID, status: str | None = None, limit: int | None = None
) -> Iterator[dict[str, Any]]:
    """A campaign's delivery records in id order, streamed, as JSON-ready values."""
    query = _MESSAGES if status is None else _MESSAGES_OF_STATUS
    params: dict[str, Any] = {"id": campaign_id, "status": status, "limit": limit}
    for row in stream(query, params):
        yield {name: jsonable(value) for name, value in zip(MESSAGE_FIELDS, row, strict=True)}


def stream(query: TextClause, params: dict[str, Any]) -> Iterator[Row[Any]]:
    """Rows of a query through a server-side cursor, STREAM_BATCH at a time."""
    with get_engine().connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=STREAM_BATCH).execute(
            query, params
        )
        yield from result


def jsonable(value: Any) -> Any:
    """A column value for JSON and CSV: decimals and times as strings, the rest as is."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


@dataclass(frozen=True)
class DeadLetterEntry:
    """One dead-lettered send, with its message's phone."""

    id: int
    campaign_id: uuid.UUID
    message_id: int
    phone: str
    reason_code: str
    reason_message: str | None
    created_at: datetime
    replayed_at: datetime | None

    def as_dict(self) -> dict[str, Any]:
        """The `dead-letters --json` item."""
        return {name: jsonable(getattr(self, name)) for name in self.__dataclass_fields__}


_DEAD_LETTERS = text("""
SELECT d.id, d.campaign_id, d.message_id, m.phone, d.reason_code, d.reason_message,
       d.created_at, d.replayed_at
FROM dead_letters d JOIN messages m ON m.id = d.message_id
WHERE (CAST(:campaign AS uuid) IS NULL OR d.campaign_id = CAST(:campaign AS uuid))
  AND (CAST(:replayed AS boolean) OR d.replayed_at IS NULL)
ORDER BY d.id LIMIT :limit
""")


def dead_letters(
    campaign_id: uuid.UUID | None = None, include_replayed: bool = False, limit: int = 1000
) -> list[DeadLetterEntry]:
    """Dead letters (not yet replayed, unless asked), oldest first."""
    params = {"campaign": campaign_id, "replayed": include_replayed, "limit": limit}
    with get_engine().connect() as conn:
        return [DeadLetterEntry(*row) for row in conn.execute(_DEAD_LETTERS, params)]
