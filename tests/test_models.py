"""Constraints of the data model hold in PostgreSQL."""

from __future__ import annotations

from decimal import Decimal

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from models import Campaign, Message, MessageStatus, SkipReason


def _campaign(session: Session, **extra: object) -> Campaign:
    campaign = Campaign(name="c", instance_id="inst", template="Hi", **extra)
    session.add(campaign)
    session.flush()
    return campaign


def test_duplicate_phone_in_a_campaign_is_rejected(db: sa.Engine) -> None:
    with Session(db) as session:
        campaign = _campaign(session)
        session.add(Message(campaign_id=campaign.id, row_number=1, phone="6281234567890", body="a"))
        session.flush()
        session.add(Message(campaign_id=campaign.id, row_number=2, phone="6281234567890", body="b"))
        with pytest.raises(IntegrityError):
            session.flush()


def test_a_skipped_duplicate_is_recorded_beside_the_original(db: sa.Engine) -> None:
    with Session(db) as session:
        campaign = _campaign(session)
        session.add(Message(campaign_id=campaign.id, row_number=1, phone="6281234567890", body="a"))
        session.add(
            Message(
                campaign_id=campaign.id,
                row_number=2,
                phone="6281234567890",
                body="a",
                status=MessageStatus.SKIPPED,
                skip_reason=SkipReason.DUPLICATE,
            )
        )
        session.commit()
        count = session.scalar(sa.select(sa.func.count()).select_from(Message))
        assert count == 2


def test_money_keeps_exact_decimals(db: sa.Engine) -> None:
    with Session(db) as session:
        campaign = _campaign(session)
        for i in range(3):
            session.add(
                Message(
                    campaign_id=campaign.id,
                    row_number=i,
                    phone=f"62812345678{i}",
                    body="x",
                    cost=Decimal("0.1"),
                    currency="IDR",
                )
            )
        session.commit()
        total = session.scalar(sa.select(sa.func.sum(Message.cost)))
        assert total == Decimal("0.3")
        cost = session.scalar(sa.select(Message.cost).limit(1))
        assert isinstance(cost, Decimal)


def test_idempotency_key_is_unique_when_given(db: sa.Engine) -> None:
    with Session(db) as session:
        _campaign(session)
        _campaign(session)  # no key twice is fine
        _campaign(session, idempotency_key="k1")
        with pytest.raises(IntegrityError):
            _campaign(session, idempotency_key="k1")


def test_statuses_outside_the_contract_are_refused(db: sa.Engine) -> None:
    with db.connect() as conn, pytest.raises(IntegrityError):
        conn.execute(
            sa.text(
                "INSERT INTO campaigns (id, name, instance_id, template, status) "
                "VALUES (gen_random_uuid(), 'x', 'i', 't', 'exploded')"
            )
        )
