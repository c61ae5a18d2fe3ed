"""Every query on the send path: claim, release, record outcomes, finish."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Engine, text


@dataclass(frozen=True)
class Claimed:
    """A message this worker holds under a lease and is about to send."""

    id: int
    phone: str
    body: str
    attempts: int


@dataclass(frozen=True)
class Claim:
    """What one claim took: the campaign's instance and the messages, under one lease token."""

    campaign_id: str
    instance_id: str
    token: uuid.UUID
    messages: list[Claimed]


@dataclass(frozen=True)
class Outcome:
    """The new state of one claimed message and the HTTP attempt behind it (if one was made)."""

    message_id: int
    status: str
    counts_attempt: bool
    next_attempt_at: datetime | None = None
    provider_message_id: str | None = None
    cost: Decimal | None = None
    currency: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    http_status: int | None = None
    sent_at: datetime | None = None
    # The attempt row; None when no request was made (released before sending).
    attempt_outcome: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    key_fingerprint: str | None = None
    dead_letter: bool = False


@dataclass(frozen=True)
class CampaignChange:
    """A campaign's own reaction to an outcome: halt (UNAUTHORIZED/FORBIDDEN) or pause (quota)."""

    action: str  # "halt" or "pause"
    code: str
    message: str
    until: datetime | None = None


# The LIMIT is written into the statement (`literal_execute`), not sent as a parameter: once
# PostgreSQL caches a generic plan for the prepared claim, an unseen LIMIT counts as a tenth of
# the table, and the plan chosen for that reads all of `messages` for every batch
# (tests/test_query_plans.py).
_CLAIM = text("""
WITH c AS (
    SELECT id, instance_id FROM campaigns
    WHERE id = :campaign_id AND status = 'running'
    FOR SHARE
), picked AS (
    -- The suppression check runs per picked row (a primary-key probe), so a number opted out
    -- while the campaign runs is skipped here, at no cost proportional to either table.
    SELECT m.id, EXISTS (SELECT 1 FROM suppressions s WHERE s.phone = m.phone) AS suppressed
    FROM messages m
    WHERE m.campaign_id = :campaign_id AND m.status = 'pending'
      AND m.next_attempt_at <= now() AND EXISTS (SELECT 1 FROM c)
    ORDER BY m.next_attempt_at, m.id
    LIMIT :limit
    FOR UPDATE OF m SKIP LOCKED
)
UPDATE messages m
SET status = CASE WHEN picked.suppressed THEN 'skipped' ELSE 'sending' END,
    skip_reason = CASE WHEN picked.suppressed THEN 'suppressed' ELSE m.skip_reason END,
    lease_owner = CASE WHEN picked.suppressed THEN NULL ELSE CAST(:owner AS varchar) END,
    lease_token = CASE WHEN picked.suppressed THEN NULL ELSE CAST(:token AS uuid) END,
    lease_expires_at = CASE WHEN picked.suppressed THEN NULL
                            ELSE now() + make_interval(secs => :lease) END,
    updated_at = now()
FROM picked, c
WHERE m.id = picked.id
RETURNING m.id, m.phone, m.body, m.attempts, c.instance_id, picked.suppressed
""").bindparams(sa.bindparam("limit", type_=sa.Integer, literal_execute=True))


def claim(engine: Engine, campaign_id: str, limit: int, owner: str, lease_seconds: float) -> Claim:
    """Atomically take up to `limit` due pending messages of a running campaign.

    Suppressed numbers among them become `skipped` (reason `suppressed`) instead of claimed.
    """
    token = uuid.uuid4()
    with engine.begin() as conn:
        rows = conn.execute(
            _CLAIM,
            {
                "campaign_id": campaign_id,
                "limit": limit,
                "owner": owner,
                "token": token,
                "lease": float(lease_seconds),
            },
        ).all()
    instance_id = rows[0].instance_id if rows else ""
    messages = sorted(
        (Claimed(r.id, r.phone, r.body, r.attempts) for r in rows if not r.suppressed),
        key=lambda m: m.id,
    )
    return Claim(campaign_id, instance_id, token, messages)


# The campaign row is read FOR SHARE: a cancel in progress (FOR UPDATE) finishes first, so a
# message given back during a cancel is never left pending in a cancelled campaign.
_RELEASE = text("""
WITH c AS (SELECT id, status FROM campaigns WHERE id = :campaign_id FOR SHARE)
UPDATE messages m
SET status = CASE WHEN c.status = 'cancelled' THEN 'cancelled' ELSE 'pending' END,
    lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL, updated_at = now()
FROM c
WHERE c.id = m.campaign_id AND m.id = ANY(:ids) AND m.lease_token = :token
  AND m.status = 'sending'
""")

# One statement per batch, whatever its size: the outcomes arrive as parallel arrays.
_RECORD = text("""
WITH c AS (SELECT status FROM campaigns WHERE id = :campaign_id FOR SHARE)
UPDATE messages m
SET status = CASE
        -- A retry due after its campaign was cancelled will never be sent: say so.
        WHEN v.status = 'pending' AND (SELECT status FROM c) = 'cancelled'
        THEN 'cancelled' ELSE v.status END,
    attempts = m.attempts + CASE WHEN v.counts THEN 1 ELSE 0 END,
    next_attempt_at = COALESCE(v.next_attempt_at, m.next_attempt_at),
    provider_message_id = COALESCE(v.provider_message_id, m.provider_message_id),
    cost = CASE WHEN v.status = 'sent' THEN v.cost ELSE m.cost END,
    currency = CASE WHEN v.status = 'sent' THEN v.currency ELSE m.currency END,
    error_code = v.error_code, error_message = v.error_message,
    last_http_status = COALESCE(v.http_status, m.last_http_status),
    sent_at = COALESCE(v.sent_at, m.sent_at),
    lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL, updated_at = now()
FROM unnest(CAST(:ids AS bigint[]), CAST(:statuses AS varchar[]), CAST(:counts AS boolean[]),
            CAST(:next_attempt_at AS timestamptz[]), CAST(:provider_message_id AS varchar[]),
            CAST(:cost AS numeric[]), CAST(:currency AS varchar[]),
            CAST(:error_code AS varchar[]), CAST(:error_message AS text[]),
            CAST(:http_status AS smallint[]), CAST(:sent_at AS timestamptz[]))
     AS v(id, status, counts, next_attempt_at, provider_message_id, cost, currency, error_code,
          error_message, http_status, sent_at)
WHERE m.id = v.id AND m.lease_token = :token
""")

# A batch holds one attempt per message, so the number subquery never sees a sibling.
_ATTEMPT = text("""
INSERT INTO attempts (message_id, number, started_at, finished_at, duration_ms, http_status,
                      outcome, error_code, error_message, key_fingerprint)
SELECT v.message_id,
       COALESCE((SELECT max(a.number) FROM attempts a WHERE a.message_id = v.message_id), 0) + 1,
       v.started_at, v.finished_at, v.duration_ms, v.http_status, v.outcome, v.error_code,
       v.error_message, v.key_fingerprint
FROM unnest(CAST(:message_id AS bigint[]), CAST(:started_at AS timestamptz[]),
            CAST(:finished_at AS timestamptz[]), CAST(:duration_ms AS integer[]),
            CAST(:http_status AS smallint[]), CAST(:outcome AS varchar[]),
            CAST(:error_code AS varchar[]), CAST(:error_message AS text[]),
            CAST(:key_fingerprint AS varchar[]))
     AS v(message_id, started_at, finished_at, duration_ms, http_status, outcome, error_code,
          error_message, key_fingerprint)
""")

_DEAD_LETTER = text("""
INSERT INTO dead_letters (message_id, campaign_id, reason_code, reason_message, payload)
VALUES (:message_id, :campaign_id, :code, :message, CAST(:payload AS jsonb))
""")

_HALT = text("""
UPDATE campaigns SET status = 'halted', halt_code = :code, halt_message = :message
WHERE id = :campaign_id AND status = 'running'
""")

_PAUSE = text("""
UPDATE campaigns SET status = 'paused', halt_code = :code, halt_message = :message,
       paused_until = :until
WHERE id = :campaign_id AND status = 'running'
""")


def record(
    engine: Engine,
    claim_: Claim,
    outcomes: Sequence[Outcome],
    released: Sequence[int] = (),
    change: CampaignChange | None = None,
) -> Progress:
    """Write a batch's outcomes, attempts, dead letters and campaign change in one transaction.

    Returns the campaign's progress as that transaction left it (what the chain does next).
    """
    import json

    with engine.begin() as conn:
        if change is not None:
            statement = _HALT if change.action == "halt" else _PAUSE
            conn.execute(
                statement,
                {
                    "campaign_id": claim_.campaign_id,
                    "code": change.code,
                    "message": change.message,
                    "until": change.until,
                },
            )
        if outcomes:
            conn.execute(
                _RECORD,
                {
                    "token": claim_.token,
                    "campaign_id": claim_.campaign_id,
                    **_columns([_record_params(o) for o in outcomes]),
                },
            )
            attempts = [_attempt_params(o) for o in outcomes if o.attempt_outcome is not None]
            if attempts:
                conn.execute(_ATTEMPT, _columns(attempts))
            dead = [o for o in outcomes if o.dead_letter]
            if dead:
                conn.execute(
                    _DEAD_LETTER,
                    [
                        {
                            "message_id": o.message_id,
                            "campaign_id": claim_.campaign_id,
                            "code": o.error_code or "UNAUTHORIZED",
                            "message": o.error_message,
                            "payload": json.dumps(
                                {"campaign_id": claim_.campaign_id, "message_id": o.message_id}
                            ),
                        }
                        for o in dead
                    ],
                )
        if released:
            conn.execute(
                _RELEASE,
                {"ids": list(released), "token": claim_.token, "campaign_id": claim_.campaign_id},
            )
        return _progress(conn, claim_.campaign_id)


def _columns(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Rows of parameters turned into one array per column (for unnest)."""
    return {name: [row[name] for row in rows] for name in rows[0]}


def _record_params(o: Outcome) -> dict[str, Any]:
    return {
        "ids": o.message_id,
        "statuses": o.status,
        "counts": o.counts_attempt,
        "next_attempt_at": o.next_attempt_at,
        "provider_message_id": o.provider_message_id,
        "cost": o.cost,
        "currency": o.currency,
        "error_code": o.error_code,
        "error_message": _clip(o.error_message),
        "http_status": o.http_status,
        "sent_at": o.sent_at,
    }


def _attempt_params(o: Outcome) -> dict[str, Any]:
    assert o.started_at is not None and o.finished_at is not None
    duration = (o.finished_at - o.started_at).total_seconds() * 1000
    return {
        "message_id": o.message_id,
        "started_at": o.started_at,
        "finished_at": o.finished_at,
        "duration_ms": max(0, round(duration)),
        "http_status": o.http_status,
        "outcome": o.attempt_outcome,
        "error_code": o.error_code,
        "error_message": _clip(o.error_message),
        "key_fingerprint": o.key_fingerprint,
    }


def _clip(value: str | None, limit: int = 1000) -> str | None:
    return value if value is None or len(value) <= limit else value[:limit] + "…"


_NEXT_DUE = text("""
SELECT c.status, c.priority, (SELECT min(next_attempt_at) FROM messages
                  WHERE campaign_id = c.id AND status = 'pending') AS next_due,
       now() AS now
FROM campaigns c WHERE c.id = :campaign_id
""")

_FINISH = text("""
UPDATE campaigns SET status = 'completed', finished_at = now()
WHERE id = :campaign_id AND status = 'running'
  AND NOT EXISTS (SELECT 1 FROM messages
                  WHERE campaign_id = :campaign_id AND status IN ('pending', 'sending'))
RETURNING id
""")


@dataclass(frozen=True)
class Progress:
    """Whether a campaign has more to send, and when its next message is due."""

    status: str | None
    next_due: datetime | None
    now: datetime
    priority: int = 0


def progress(engine: Engine, campaign_id: str) -> Progress:
    """The campaign's status and its earliest pending message's due time."""
    with engine.connect() as conn:
        return _progress(conn, campaign_id)


def _progress(conn: sa.Connection, campaign_id: str) -> Progress:
    row = conn.execute(_NEXT_DUE, {"campaign_id": campaign_id}).first()
    if row is None:
        return Progress(None, None, datetime.now().astimezone())
    return Progress(row.status, row.next_due, row.now, row.priority)


def finish_if_done(engine: Engine, campaign_id: str) -> bool:
    """Mark a running campaign completed when nothing is pending or sending; True if it was."""
    with engine.begin() as conn:
        return conn.execute(_FINISH, {"campaign_id": campaign_id}).first() is not None


def campaign_exists(engine: Engine, campaign_id: str) -> bool:
    """Whether the id names a campaign (jobs for vanished campaigns are dropped)."""
    with engine.connect() as conn:
        return (
            conn.execute(
                sa.text("SELECT 1 FROM campaigns WHERE id = :id"), {"id": campaign_id}
            ).first()
            is not None
        )
