"""A campaign: one template sent to many recipients."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import DateTime, Index, SmallInteger, String, Text, func, text
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base
from models.statuses import CampaignStatus, enum_column_type


class Campaign(Base):
    """A message template and its recipients' messages, sent as one unit."""

    __tablename__ = "campaigns"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(200))
    instance_id: Mapped[str] = mapped_column(String(100))
    template: Mapped[str] = mapped_column(Text)
    status: Mapped[CampaignStatus] = mapped_column(
        enum_column_type(CampaignStatus, "campaign_status"), default=CampaignStatus.RUNNING
    )
    # Why the campaign halted or paused itself (UNAUTHORIZED, FORBIDDEN, QUOTA_EXCEEDED, ...).
    halt_code: Mapped[str | None] = mapped_column(String(64))
    halt_message: Mapped[str | None] = mapped_column(Text)
    # A quota pause ends by itself at this time; an operator's pause has none.
    paused_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    scheduled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    source: Mapped[str] = mapped_column(String(32), server_default=text("'python'"))
    created_by: Mapped[str | None] = mapped_column(String(100))
    # Higher goes first when campaigns compete for the rate.
    priority: Mapped[int] = mapped_column(SmallInteger, server_default=text("0"))

    __table_args__ = (
        Index("ix_campaigns_status_scheduled_at", "status", "scheduled_at"),
        Index("ix_campaigns_created_at", "created_at"),
    )

    def __repr__(self) -> str:
        return f"<Campaign {self.id} {self.status}>"
