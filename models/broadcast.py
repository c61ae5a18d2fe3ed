"""A recurring broadcast: a saved template and recipient list sent on a cron schedule."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base


class Broadcast(Base):
    """Creates and starts one campaign per cron occurrence, exactly once per occurrence."""

    __tablename__ = "broadcasts"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(200))
    instance_id: Mapped[str] = mapped_column(String(100))
    template: Mapped[str] = mapped_column(Text)
    cron: Mapped[str] = mapped_column(String(100))
    timezone: Mapped[str] = mapped_column(String(64))
    # active: occurrences run; paused: skipped until resumed.
    status: Mapped[str] = mapped_column(String(16), server_default=text("'active'"))
    priority: Mapped[int] = mapped_column(SmallInteger, server_default=text("0"))
    next_run_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_run_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (Index("ix_broadcasts_status_next_run_at", "status", "next_run_at"),)

    def __repr__(self) -> str:
        return f"<Broadcast {self.id} {self.cron!r} {self.status}>"


class BroadcastRecipient(Base):
    """One saved recipient of a broadcast: the phone as given and its template variables."""

    __tablename__ = "broadcast_recipients"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    broadcast_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("broadcasts.id", ondelete="CASCADE"))
    row_number: Mapped[int] = mapped_column(Integer)
    phone: Mapped[str] = mapped_column(String(64))
    variables: Mapped[dict[str, Any]] = mapped_column(JSONB)

    __table_args__ = (
        Index("ix_broadcast_recipients_broadcast_id_row_number", "broadcast_id", "row_number"),
    )
