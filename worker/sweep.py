"""The beat tick: start what is due, republish what Redis lost, expire leases, finish campaigns.

Idempotent and safe to run twice at once: a PostgreSQL advisory lock lets one tick work at a
time, and every change is a conditional UPDATE on the row's current status.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

import redis
from sqlalchemy import Connection, Engine, text

from worker import stopflags
from worker.coverage import covered_campaigns
from worker.dispatch import publish, start_campaign
from worker.settings import Settings

log = logging.getLogger("wahero_bulk.sweep")

# Any constant shared by every tick; two ticks holding it at once is what it prevents.
TICK_LOCK_KEY = 0x57A4E120


@dataclass
class TickReport:
    """What one tick did (ids as strings), for logs and tests."""

    ran: bool = True
    started: list[str] = field(default_factory=list)
    occurrences: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    republished: list[str] = field(default_factory=list)
    expired_leases: int = 0
    completed: list[str] = field(default_factory=list)

    def busy(self) -> bool:
        return bool(
            self.started
            or self.occurrences
            or self.resumed
            or self.republished
            or self.expired_leases
            or self.completed
        )


def tick(
    engine: Engine, broker: redis.Redis, settings: Settings, now: datetime | None = None
) -> TickReport:
    """One pass over everything that needs the scheduler; skipped if another tick holds the lock."""
    with engine.connect() as lock_conn:
        got = lock_conn.execute(
            text("SELECT pg_try_advisory_lock(:k)"), {"k": TICK_LOCK_KEY}
        ).scalar()
        lock_conn.commit()
        if not got:
            return TickReport(ran=False)
        try:
            return _tick(engine, broker, settings, now)
        finally:
            lock_conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": TICK_LOCK_KEY})
            lock_conn.commit()


def _now(conn: Connection, now: datetime | None) -> datetime:
    return now if now is not None else conn.execute(text("SELECT now()")).scalar_one()


def _tick(
    engine: Engine, broker: redis.Redis, settings: Settings, now: datetime | None
) -> TickReport:
    report = TickReport()
    from worker.broadcasts import run_due_occurrences

    report.occurrences = run_due_occurrences(engine, now)
    with engine.begin() as conn:
        moment = _now(conn, now)
        started = conn.execute(
            text("""
            UPDATE campaigns SET status = 'running', started_at = :now
            WHERE status = 'scheduled' AND scheduled_at <= :now
            RETURNING id, priority"""),
            {"now": moment},
        ).all()
        resumed = conn.execute(
            text("""
            UPDATE campaigns SET status = 'running', halt_code = NULL, halt_message = NULL,
                   paused_until = NULL
            WHERE status = 'paused' AND paused_until IS NOT NULL AND paused_until <= :now
            RETURNING id, priority"""),
            {"now": moment},
        ).all()
        report.expired_leases = _expire_leases(conn, moment, settings.retry_ambiguous)
    for row in started:
        report.started.append(str(row.id))
        start_campaign(str(row.id), priority=row.priority)
    for row in resumed:
        report.resumed.append(str(row.id))
        stopflags.clear(str(row.id))
        start_campaign(str(row.id), priority=row.priority)
    report.republished = _republish_uncovered(
        engine, broker, settings, now, skip=set(report.started) | set(report.resumed)
    )
    report.completed = _finish_done(engine)
    if report.busy():
        log.info(
            "tick started=%d occurrences=%d resumed=%d republished=%d expired_leases=%d "
            "completed=%d",
            len(report.started),
            len(report.occurrences),
            len(report.resumed),
            len(report.republished),
            report.expired_leases,
            len(report.completed),
        )
    return report


def _expire_leases(conn: Connection, now: datetime, retry_ambiguous: bool) -> int:
    # A claim is made just before its requests go out, so an expired one may have been sent:
    # unknown (an operator decides), unless the user prefers a possible duplicate.
    target = "pending" if retry_ambiguous else "unknown"
    rows = conn.execute(
        text("""
        UPDATE messages
        SET status = :target, error_code = 'LEASE_EXPIRED',
            error_message = 'the worker holding this message stopped before recording its outcome',
            lease_owner = NULL, lease_expires_at = NULL, next_attempt_at = :now,
            updated_at = now()
        WHERE status = 'sending' AND lease_expires_at < :now
        RETURNING id"""),
        {"target": target, "now": now},
    ).all()
    if rows:
        log.warning("expired leases count=%d marked=%s", len(rows), target)
    return len(rows)


def _republish_uncovered(
    engine: Engine, broker: redis.Redis, settings: Settings, now: datetime | None, skip: set[str]
) -> list[str]:
    with engine.connect() as conn:
        moment = _now(conn, now)
        due = conn.execute(
            text("""
            SELECT c.id, c.priority FROM campaigns c
            WHERE c.status = 'running' AND EXISTS (
                SELECT 1 FROM messages m WHERE m.campaign_id = c.id AND m.status = 'pending'
                  AND m.next_attempt_at <= :now)"""),
            {"now": moment},
        ).all()
    if not due:
        return []
    # A job delivered longer ago than a lease belongs to a dead worker (or will chain on anyway).
    covered = covered_campaigns(broker, stale_before=moment.timestamp() - settings.lease_seconds)
    republished = []
    for row in due:
        campaign_id = str(row.id)
        if campaign_id in covered or campaign_id in skip:
            continue
        if publish(campaign_id, priority=row.priority, jobs=settings.jobs_per_campaign):
            republished.append(campaign_id)
    return republished


def _finish_done(engine: Engine) -> list[str]:
    with engine.begin() as conn:
        rows = conn.execute(
            text("""
            UPDATE campaigns c SET status = 'completed', finished_at = now()
            WHERE c.status = 'running' AND NOT EXISTS (
                SELECT 1 FROM messages m
                WHERE m.campaign_id = c.id AND m.status IN ('pending', 'sending'))
            RETURNING id""")
        ).all()
    return [str(row.id) for row in rows]
