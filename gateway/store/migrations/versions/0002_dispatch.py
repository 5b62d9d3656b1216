"""Dispatch: the transactional outbox of messages to providers.

Revision ID: 0002_dispatch
Revises: 0001_intake
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from gateway.store.types import UTCDateTime

revision: str = "0002_dispatch"
down_revision: str | None = "0001_intake"
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "outbox",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True
        ),
        sa.Column("prescription_id", sa.String(36), sa.ForeignKey("prescription.id"), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("provider_ods", sa.String(12), nullable=False),
        sa.Column("idempotency_key", sa.String(80), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("due_at", UTCDateTime(), nullable=False),
        sa.Column("lease_owner", sa.String(80), nullable=True),
        sa.Column("lease_until", UTCDateTime(), nullable=True),
        sa.Column("last_error", sa.String(500), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("idempotency_key", name="uq_outbox_idempotency_key"),
    )
    op.create_index("ix_outbox_due", "outbox", ["state", "due_at"])
    op.create_index("ix_outbox_prescription", "outbox", ["prescription_id", "id"])


def downgrade() -> None:
    op.drop_table("outbox")
