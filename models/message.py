"""A message: one recipient of a campaign, its rendered text and its outcome."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    SmallInteger,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base
from models.statuses import MessageStatus, SkipReason, enum_column_type

# Money is exact: NUMERIC, never float.
MONEY = Numeric(18, 6)


class Message(Base):
    """One recipient's message; PostgreSQL's copy is the truth about what was sent."""

    __tablename__ = "messages"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    campaign_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"))
    # Position of the recipient in its input (CSV data row number, or index in the iterable).
    row_number: Mapped[int] = mapped_column(Integer)
    # Normalised digits (6281234567890); for an invalid number, the input as given.
    phone: Mapped[str] = mapped_column(String(64))
    body: Mapped[str] = mapped_column(Text)
    status: Mapped[MessageStatus] = mapped_column(
        enum_column_type(MessageStatus, "message_status"), default=MessageStatus.PENDING
    )
    skip_reason: Mapped[SkipReason | None] = mapped_column(
        enum_column_type(SkipReason, "skip_reason")
    )
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    next_attempt_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    lease_owner: Mapped[str | None] = mapped_column(String(100))
    lease_token: Mapped[uuid.UUID | None] = mapped_column()
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    provider_message_id: Mapped[str | None] = mapped_column(String(200))
    cost: Mapped[Decimal | None] = mapped_column(MONEY)
    currency: Mapped[str | None] = mapped_column(String(3))
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    last_http_status: Mapped[int | None] = mapped_column(SmallInteger)
    queued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        # One sendable message per number and campaign; skipped rows record repeats for ops.
        Index(
            "uq_messages_campaign_id_phone",
            "campaign_id",
            "phone",
            unique=True,
            postgresql_where=text("status <> 'skipped'"),
        ),
        # What the worker claims next: due pending messages of a campaign in order.
        Index(
            "ix_messages_pending_due",
            "campaign_id",
            "next_attempt_at",
            "id",
            postgresql_where=text("status = 'pending'"),
        ),
        # Counts by status per campaign, answered from the index alone.
        Index("ix_messages_campaign_id_status", "campaign_id", "status"),
        # A campaign's cost total (`show`), answered from the index alone.
        Index(
            "ix_messages_sent_cost",
            "campaign_id",
            "currency",
            postgresql_include=["cost"],
            postgresql_where=text("status = 'sent'"),
        ),
        # The sweep's question: whose lease has run out.
        Index(
            "ix_messages_lease_expires_at",
            "lease_expires_at",
            postgresql_where=text("status = 'sending'"),
        ),
    )

    def __repr__(self) -> str:
        return f"<Message {self.id} {self.status}>"
