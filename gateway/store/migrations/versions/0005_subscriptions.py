"""Subscriptions: trusts' rest-hook subscriptions, and notifications to them through the outbox.

The outbox learns three columns: `subscription_id` (set on notifications), `payload` (the resource
as it was when the notification was queued) and `ordering_key` (messages with the same key go out in
order; provider messages keep their prescription id, so existing rows get it).

Revision ID: 0005_subscriptions
Revises: 0004_status
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from gateway.store.types import UTCDateTime

revision: str = "0005_subscriptions"
down_revision: str | None = "0004_status"
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "subscription",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("tenant_ods", sa.String(12), nullable=False),
        sa.Column("client_id", sa.String(100), nullable=False),
        sa.Column("criteria", sa.String(500), nullable=False),
        sa.Column("endpoint", sa.String(2000), nullable=False),
        sa.Column("payload", sa.String(40), nullable=True),
        sa.Column("headers", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.String(500), nullable=True),
        sa.Column("failure_count", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(500), nullable=False),
        sa.Column("end_at", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_subscription_tenant_status", "subscription", ["tenant_ods", "status"])
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("ordering_key", sa.String(80), nullable=True))
        batch.add_column(sa.Column("subscription_id", sa.String(36), nullable=True))
        batch.add_column(sa.Column("payload", sa.LargeBinary(), nullable=True))
    op.execute("UPDATE outbox SET ordering_key = prescription_id")
    with op.batch_alter_table("outbox") as batch:
        batch.alter_column("ordering_key", existing_type=sa.String(80), nullable=False)
        batch.create_foreign_key("fk_outbox_subscription", "subscription", ["subscription_id"], ["id"])
        batch.create_index("ix_outbox_ordering", ["ordering_key", "id"])
        batch.create_index("ix_outbox_subscription", ["subscription_id", "state"])


def downgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.drop_index("ix_outbox_subscription")
        batch.drop_index("ix_outbox_ordering")
        batch.drop_constraint("fk_outbox_subscription", type_="foreignkey")
        batch.drop_column("payload")
        batch.drop_column("subscription_id")
        batch.drop_column("ordering_key")
    op.drop_index("ix_subscription_tenant_status", table_name="subscription")
    op.drop_table("subscription")
