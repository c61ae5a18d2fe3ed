"""Operator control of campaigns: pause, resume, cancel, retry. Each change is guarded."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, text

from models.db import get_engine
from worker import stopflags
from worker.dispatch import start_campaign

log = logging.getLogger("wahero_bulk.control")


class ControlError(Exception):
    """A state change that is not allowed, or a campaign that does not exist (one line)."""


def parse_campaign_id(value: str) -> uuid.UUID:
    """A campaign id from the command line; a malformed one is a ControlError."""
    try:
        return uuid.UUID(value.strip())
    except ValueError:
        raise ControlError(f"not a campaign id: {value!r} (expected a UUID)") from None


def _lock(conn: Connection, campaign_id: uuid.UUID) -> tuple[str, int]:
    row = conn.execute(
        text("SELECT status, priority FROM campaigns WHERE id = :id FOR UPDATE"),
        {"id": campaign_id},
    ).first()
    if row is None:
        raise ControlError(f"no campaign {campaign_id}")
    return str(row.status), int(row.priority)


@contextmanager
def _stopping(campaign_id: uuid.UUID, reason: str) -> Iterator[None]:
    """Raise the stop flag and let every worker see it, then change the campaign.

    So no send starts after the change is recorded: only sends already in flight finish. If the
    change is refused, the flag comes down again unless the campaign was stopped before.
    """
    before = stopflags.stopped(str(campaign_id))
    stopflags.stop(str(campaign_id), reason)
    time.sleep(stopflags.VISIBLE_WITHIN_SECONDS)
    try:
        yield
    except BaseException:
        if before is None:
            stopflags.clear(str(campaign_id))
        raise


def pause(campaign_id: uuid.UUID) -> None:
    """Stop a running or scheduled campaign until `resume`; in-flight sends finish."""
    with _stopping(campaign_id, "paused"), get_engine().begin() as conn:
        status, _ = _lock(conn, campaign_id)
        if status not in ("running", "scheduled"):
            raise ControlError(f"cannot pause campaign {campaign_id}: it is {status}")
        conn.execute(
            text("""UPDATE campaigns SET status = 'paused', halt_code = NULL,
                             halt_message = NULL, paused_until = NULL WHERE id = :id"""),
            {"id": campaign_id},
        )
    log.info("campaign paused campaign=%s", campaign_id)


def resume(campaign_id: uuid.UUID) -> int:
    """Run a paused or halted campaign again, re-queueing its dead letters; returns how many."""
    with get_engine().begin() as conn:
        status, priority = _lock(conn, campaign_id)
        if status not in ("paused", "halted"):
            raise ControlError(f"cannot resume campaign {campaign_id}: it is {status}")
        replayed = _replay_dead_letters(conn, campaign_id)
        conn.execute(
            text("""UPDATE campaigns SET status = 'running', halt_code = NULL,
                             halt_message = NULL, paused_until = NULL,
                             started_at = COALESCE(started_at, now()) WHERE id = :id"""),
            {"id": campaign_id},
        )
    stopflags.clear(str(campaign_id))
    start_campaign(str(campaign_id), priority=priority)
    log.info("campaign resumed campaign=%s dead_letters_requeued=%d", campaign_id, replayed)
    return replayed


def _replay_dead_letters(conn: Connection, campaign_id: uuid.UUID) -> int:
    rows = conn.execute(
        text("""
        WITH letters AS (
            UPDATE dead_letters SET replayed_at = now()
            WHERE campaign_id = :id AND replayed_at IS NULL
            RETURNING message_id)
        UPDATE messages SET status = 'pending', next_attempt_at = now(), updated_at = now()
        WHERE id IN (SELECT message_id FROM letters) AND status = 'dead'
        RETURNING id"""),
        {"id": campaign_id},
    ).all()
    return len(rows)


def replay_dead_letters(campaign_id: uuid.UUID) -> int:
    """Put a campaign's dead-lettered messages back to pending and publish them if it runs."""
    with get_engine().begin() as conn:
        status, priority = _lock(conn, campaign_id)
        if status in ("completed", "cancelled"):
            raise ControlError(
                f"cannot replay dead letters of campaign {campaign_id}: it is {status}"
            )
        replayed = _replay_dead_letters(conn, campaign_id)
    if status == "running" and replayed:
        start_campaign(str(campaign_id), priority=priority)
    return replayed


def cancel(campaign_id: uuid.UUID) -> int:
    """Stop a campaign for good: its pending messages become cancelled; returns how many."""
    with _stopping(campaign_id, "cancelled"), get_engine().begin() as conn:
        status, _ = _lock(conn, campaign_id)
        if status in ("completed", "cancelled"):
            raise ControlError(f"cannot cancel campaign {campaign_id}: it is {status}")
        conn.execute(
            text("""UPDATE campaigns SET status = 'cancelled', finished_at = now()
                             WHERE id = :id"""),
            {"id": campaign_id},
        )
        count = len(
            conn.execute(
                text("""
            UPDATE messages SET status = 'cancelled', updated_at = now()
            WHERE campaign_id = :id AND status IN ('pending', 'dead') RETURNING id"""),
                {"id": campaign_id},
            ).all()
        )
    log.info("campaign cancelled campaign=%s messages_cancelled=%d", campaign_id, count)
    return count


RETRYABLE_STATUSES = ("failed", "unknown")


def retry(campaign_id: uuid.UUID, status: str) -> int:
    """Send the campaign's failed or unknown messages again, on purpose; returns how many."""
    if status not in RETRYABLE_STATUSES:
        raise ControlError(f"cannot retry {status} messages: only failed or unknown")
    with get_engine().begin() as conn:
        campaign_status, priority = _lock(conn, campaign_id)
        if campaign_status == "cancelled":
            raise ControlError(f"cannot retry messages of campaign {campaign_id}: it is cancelled")
        count = len(
            conn.execute(
                text("""
            UPDATE messages SET status = 'pending', next_attempt_at = now(), updated_at = now()
            WHERE campaign_id = :id AND status = :status RETURNING id"""),
                {"id": campaign_id, "status": status},
            ).all()
        )
        if count and campaign_status == "completed":
            conn.execute(
                text("""UPDATE campaigns SET status = 'running', finished_at = NULL
                                 WHERE id = :id"""),
                {"id": campaign_id},
            )
            campaign_status = "running"
    if count and campaign_status == "running":
        stopflags.clear(str(campaign_id))
        start_campaign(str(campaign_id), priority=priority)
    log.info("messages retried campaign=%s status=%s count=%d", campaign_id, status, count)
    return count
