"""sent cost index: a campaign's cost total from the index alone (`show` on 1M messages)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 16:40:01.222150
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # CONCURRENTLY: a live messages table keeps taking writes while the index builds.
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_messages_sent_cost",
            "messages",
            ["campaign_id", "currency"],
            unique=False,
            postgresql_include=["cost"],
            postgresql_where=sa.text("status = 'sent'"),
            postgresql_concurrently=True,
            if_not_exists=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index(
            "ix_messages_sent_cost",
            table_name="messages",
            postgresql_concurrently=True,
            if_exists=True,
        )
