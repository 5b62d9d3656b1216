"""Status from providers through their adapters, and orders held for providers that pull them.

`provider_message` keeps every status message a provider sent through an adapter's listener or
poller (an HL7 v2 message, a row of a status file) with a unique de-duplication key: a repeat is
acknowledged and applied once. A MedicationDispense may now come from such a message
(`provider_message_id`) instead of a dispense-notification (`message_id`, now optional). The outbox
learns `held_at`: when an order was last held for its provider to pull (`pull` adapter).

Revision ID: 0009_inbound_messages
Revises: 0008_kpi
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from gateway.store.types import UTCDateTime

revision: str = "0009_inbound_messages"
down_revision: str | None = "0008_kpi"
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "provider_message",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("dedupe_key", sa.String(300), nullable=False),
        sa.Column("scheme", sa.String(40), nullable=False),
        sa.Column("provider_ods", sa.String(12), nullable=False),
        sa.Column("peer", sa.String(300), nullable=True),
        sa.Column("raw", sa.LargeBinary(), nullable=False),
        sa.Column("reports", sa.Integer(), nullable=False),
        sa.Column("received_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("dedupe_key", name="uq_provider_message_dedupe_key"),
    )
    op.create_index("ix_provider_message_provider", "provider_message", ["provider_ods", "received_at"])
    with op.batch_alter_table("medication_dispense") as batch:
        batch.alter_column("message_id", existing_type=sa.String(36), nullable=True)
        batch.add_column(sa.Column("provider_message_id", sa.String(36), nullable=True))
        batch.create_foreign_key(
            "fk_medication_dispense_provider_message", "provider_message", ["provider_message_id"], ["id"]
        )
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("held_at", UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("held_at")
    op.execute("DELETE FROM medication_dispense WHERE message_id IS NULL")
    with op.batch_alter_table("medication_dispense") as batch:
        batch.drop_constraint("fk_medication_dispense_provider_message", type_="foreignkey")
        batch.drop_column("provider_message_id")
        batch.alter_column("message_id", existing_type=sa.String(36), nullable=False)
    op.drop_index("ix_provider_message_provider", table_name="provider_message")
    op.drop_table("provider_message")
