"""A dead letter: a job that failed UNAUTHORIZED, kept to be replayed after the key is fixed."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, DateTime, ForeignKey, Index, String, Text, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base


class DeadLetter(Base):
    """The dead-lettered send of one message; replaying it puts the message back to pending."""

    __tablename__ = "dead_letters"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"))
    campaign_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"))
    reason_code: Mapped[str] = mapped_column(String(64))
    reason_message: Mapped[str | None] = mapped_column(Text)
    # What replaying needs: ids only, never the key or the message text.
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    replayed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        Index("ix_dead_letters_campaign_id_replayed_at", "campaign_id", "replayed_at"),
        Index("ix_dead_letters_message_id", "message_id"),
    )

    def __repr__(self) -> str:
        return f"<DeadLetter {self.id} message={self.message_id} {self.reason_code}>"
