"""Status: line items carry their own status, tenancy and provider; queries and dispenses.

Revision ID: 0004_status
Revises: 0003_security
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from gateway.store.types import UTCDateTime

revision: str = "0004_status"
down_revision: str | None = "0003_security"
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("prescription_item") as batch:
        batch.add_column(sa.Column("tenant_ods", sa.String(12), nullable=True))
        batch.add_column(sa.Column("provider_ods", sa.String(12), nullable=True))
        batch.add_column(sa.Column("resume_status", sa.String(32), nullable=True))
        batch.add_column(sa.Column("last_modified", UTCDateTime(), nullable=True))
        batch.add_column(sa.Column("version", sa.Integer(), nullable=False, server_default="1"))
    owner = "FROM prescription WHERE prescription.id = prescription_item.prescription_id"
    op.execute(
        f"UPDATE prescription_item SET tenant_ods = (SELECT tenant_ods {owner}), "  # noqa: S608  (no input)
        f"provider_ods = (SELECT provider_ods {owner})"
    )
    with op.batch_alter_table("prescription_item") as batch:
        batch.alter_column("tenant_ods", existing_type=sa.String(12), nullable=False)
        batch.alter_column("provider_ods", existing_type=sa.String(12), nullable=False)
    op.create_index(
        "ix_item_provider_status", "prescription_item", ["provider_ods", "status", "updated_at", "id"]
    )
    op.create_index(
        "ix_item_tenant_status", "prescription_item", ["tenant_ods", "status", "updated_at", "id"]
    )
    op.create_index("ix_item_provider_updated", "prescription_item", ["provider_ods", "updated_at", "id"])
    op.create_index("ix_item_tenant_updated", "prescription_item", ["tenant_ods", "updated_at", "id"])
    op.create_index("ix_item_identifier", "prescription_item", ["prescription_id", "item_identifier"])

    with op.batch_alter_table("prescription") as batch:
        batch.add_column(sa.Column("valid_until", UTCDateTime(), nullable=True))
        batch.add_column(sa.Column("partial", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.create_index("ix_prescription_valid_until", "prescription", ["valid_until"])

    with op.batch_alter_table("status_event") as batch:
        batch.add_column(sa.Column("verdict", sa.String(16), nullable=True))
    op.create_index("ix_status_event_item", "status_event", ["item_id", "id"])

    with op.batch_alter_table("outbox") as batch:
        # The message a row sends when it is not the prescription's order (a cancellation).
        batch.add_column(sa.Column("message_id", sa.String(36), nullable=True))

    op.create_table(
        "query_message",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("prescription_id", sa.String(36), sa.ForeignKey("prescription.id"), nullable=False),
        sa.Column("item_id", sa.String(36), sa.ForeignKey("prescription_item.id"), nullable=False),
        sa.Column("author_role", sa.String(16), nullable=False),
        sa.Column("author_ods", sa.String(12), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("sent_at", UTCDateTime(), nullable=False),
        sa.Column("request_id", sa.String(64), nullable=False),
    )
    op.create_index("ix_query_message_item", "query_message", ["item_id", "sent_at"])
    op.create_table(
        "medication_dispense",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("prescription_id", sa.String(36), sa.ForeignKey("prescription.id"), nullable=False),
        sa.Column("item_id", sa.String(36), sa.ForeignKey("prescription_item.id"), nullable=False),
        sa.Column("message_id", sa.String(36), sa.ForeignKey("inbound_message.id"), nullable=False),
        sa.Column("resource", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_medication_dispense_item", "medication_dispense", ["item_id"])


def downgrade() -> None:
    op.drop_table("medication_dispense")
    op.drop_table("query_message")
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("message_id")
    op.drop_index("ix_status_event_item", "status_event")
    with op.batch_alter_table("status_event") as batch:
        batch.drop_column("verdict")
    op.drop_index("ix_prescription_valid_until", "prescription")
    with op.batch_alter_table("prescription") as batch:
        batch.drop_column("partial")
        batch.drop_column("valid_until")
    for index in (
        "ix_item_identifier",
        "ix_item_tenant_updated",
        "ix_item_provider_updated",
        "ix_item_tenant_status",
        "ix_item_provider_status",
    ):
        op.drop_index(index, "prescription_item")
    with op.batch_alter_table("prescription_item") as batch:
        for column in ("version", "last_modified", "resume_status", "provider_ods", "tenant_ods"):
            batch.drop_column(column)
