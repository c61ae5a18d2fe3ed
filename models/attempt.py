"""An attempt: one HTTP request made for a message."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, ForeignKey, Index, Integer, SmallInteger, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base


class Attempt(Base):
    """One HTTP attempt; a 429 is recorded here but does not count against max attempts."""

    __tablename__ = "attempts"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    duration_ms: Mapped[int] = mapped_column(Integer)
    http_status: Mapped[int | None] = mapped_column(SmallInteger)
    # sent, rate_limited, transient, ambiguous, invalid, unauthorized, forbidden, quota
    outcome: Mapped[str] = mapped_column(String(32))
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    # First hex digits of the key's SHA-256: which key sent it, never the key.
    key_fingerprint: Mapped[str | None] = mapped_column(String(16))

    __table_args__ = (Index("ix_attempts_message_id", "message_id"),)

    def __repr__(self) -> str:
        return f"<Attempt {self.message_id}#{self.number} {self.outcome}>"
