"""Read-only views of campaigns for ops: summaries and counts, computed in PostgreSQL."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import text

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
FROM campaigns c WHERE c.id = :id
""")

_COUNTS = text("""
SELECT status, count(*) AS n FROM messages WHERE campaign_id = :id GROUP BY status
""")

_COST = text("""
SELECT currency, COALESCE(sum(cost), 0) AS total FROM messages
WHERE campaign_id = :id AND status = 'sent' AND cost IS NOT NULL GROUP BY currency
ORDER BY total DESC
""")


def campaign_summary(campaign_id: uuid.UUID) -> CampaignSummary | None:
    """The campaign's summary, or None when no campaign has that id."""
    with get_engine().connect() as conn:
        row = conn.execute(_SUMMARY, {"id": campaign_id}).first()
        if row is None:
            return None
        counts = {str(r.status): int(r.n) for r in conn.execute(_COUNTS, {"id": campaign_id})}
        costs = conn.execute(_COST, {"id": campaign_id}).all()
    cost_total = costs[0].total if costs else Decimal("0")
    currency = costs[0].currency if costs else None
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
        cost_total=Decimal(cost_total),
        currency=currency,
    )
