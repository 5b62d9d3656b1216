"""Intake: providers, accepted messages, prescriptions, line items and the status event log.

Revision ID: 0001_intake
Revises:
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from gateway.store.types import UTCDateTime

revision: str = "0001_intake"
down_revision: str | None = None
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None


def upgrade() -> None:
    """The first tables, as they were created (long: one create per table, in dependency order)."""
    op.create_table(
        "provider",
        sa.Column("ods_code", sa.String(12), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("adapter", sa.String(40), nullable=False),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "inbound_message",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("tenant_ods", sa.String(12), nullable=False),
        sa.Column("bundle_identifier", sa.String(200), nullable=False),
        sa.Column("event", sa.String(40), nullable=False),
        sa.Column("body_sha256", sa.String(64), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("response_status", sa.Integer(), nullable=False),
        sa.Column("response_body", sa.LargeBinary(), nullable=False),
        sa.Column("response_location", sa.String(200), nullable=True),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("received_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("tenant_ods", "bundle_identifier", name="uq_inbound_message_bundle"),
    )
    op.create_table(
        "prescription",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("tenant_ods", sa.String(12), nullable=False),
        sa.Column("short_form_id", sa.String(20), nullable=False),
        sa.Column("long_form_id", sa.String(36), nullable=False),
        sa.Column("provider_ods", sa.String(12), sa.ForeignKey("provider.ods_code"), nullable=False),
        sa.Column("nhs_number", sa.String(10), nullable=False),
        sa.Column("prescription_type", sa.String(8), nullable=False),
        sa.Column("message_id", sa.String(36), sa.ForeignKey("inbound_message.id"), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("tenant_ods", "short_form_id", name="uq_prescription_short_form"),
    )
    op.create_index("ix_prescription_nhs_number", "prescription", ["nhs_number"])
    op.create_index("ix_prescription_provider_status", "prescription", ["provider_ods", "status"])
    op.create_table(
        "prescription_item",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("prescription_id", sa.String(36), sa.ForeignKey("prescription.id"), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("item_identifier", sa.String(200), nullable=False),
        sa.Column("resource", sa.LargeBinary(), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_prescription_item_prescription", "prescription_item", ["prescription_id"])
    op.create_table(
        "status_event",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True
        ),
        sa.Column("prescription_id", sa.String(36), sa.ForeignKey("prescription.id"), nullable=False),
        sa.Column("item_id", sa.String(36), nullable=True),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("occurred_at", UTCDateTime(), nullable=False),
        sa.Column("recorded_at", UTCDateTime(), nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=True),
    )
    op.create_index("ix_status_event_prescription", "status_event", ["prescription_id", "id"])


def downgrade() -> None:
    op.drop_table("status_event")
    op.drop_table("prescription_item")
    op.drop_table("prescription")
    op.drop_table("inbound_message")
    op.drop_table("provider")
