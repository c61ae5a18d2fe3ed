"""The status vocabularies of CONTRACT.md, one comment per value."""

from __future__ import annotations

import enum

from sqlalchemy import Enum


class MessageStatus(enum.StrEnum):
    """Where one message stands."""

    PENDING = "pending"  # waiting to be sent, also between retries
    SENDING = "sending"  # claimed by a worker under a lease
    SENT = "sent"  # accepted by Wahero; provider id and cost stored
    FAILED = "failed"  # will not succeed; error code stored
    UNKNOWN = "unknown"  # may or may not have been sent; never retried by itself
    DEAD = "dead"  # dead-lettered: failed UNAUTHORIZED
    SKIPPED = "skipped"  # never sent: invalid number, duplicate, opted out
    CANCELLED = "cancelled"  # the campaign was cancelled before it was sent


FINAL_MESSAGE_STATUSES = frozenset(
    {
        MessageStatus.SENT,
        MessageStatus.FAILED,
        MessageStatus.UNKNOWN,
        MessageStatus.DEAD,
        MessageStatus.SKIPPED,
        MessageStatus.CANCELLED,
    }
)


class CampaignStatus(enum.StrEnum):
    """Where one campaign stands."""

    SCHEDULED = "scheduled"  # waits for scheduled_at; nothing published yet
    RUNNING = "running"  # workers send its pending messages
    PAUSED = "paused"  # by an operator, or until a quota resets (paused_until)
    HALTED = "halted"  # stopped by UNAUTHORIZED or FORBIDDEN; waits for resume
    COMPLETED = "completed"  # nothing pending or sending is left
    CANCELLED = "cancelled"  # stopped for good by an operator


class SkipReason(enum.StrEnum):
    """Why a recipient was recorded as skipped."""

    INVALID_PHONE = "invalid_phone"
    DUPLICATE = "duplicate"
    SUPPRESSED = "suppressed"


def enum_column_type(enum_class: type[enum.StrEnum], name: str) -> Enum:
    """A VARCHAR + named CHECK constraint (adding a value later is a plain migration)."""
    return Enum(
        enum_class,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=16,
        values_callable=lambda members: [member.value for member in members],
        validate_strings=True,
    )
