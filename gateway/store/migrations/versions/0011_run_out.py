"""Run-out warnings: one row per course and supply found at risk of running out (`run_out_alert`),
open until the course is no longer at risk (the worklist flags the order it names), and the day
each quiet course is next due a look (`run_out_due`).

Revision ID: 0011_run_out
Revises: 0010_refusal_audit
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from gateway.store.types import UTCDateTime

revision: str = "0011_run_out"
down_revision: str | None = "0010_refusal_audit"
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "run_out_alert",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True
        ),
        sa.Column("course", sa.String(64), nullable=False),
        sa.Column("supply_item_id", sa.String(36), nullable=False),
        sa.Column("prescription_id", sa.String(36), sa.ForeignKey("prescription.id"), nullable=False),
        sa.Column("item_id", sa.String(36), nullable=False),
        sa.Column("tenant_ods", sa.String(12), nullable=False),
        sa.Column("provider_ods", sa.String(12), nullable=False),
        sa.Column("run_out_on", sa.Date(), nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("raised_at", UTCDateTime(), nullable=False),
        sa.Column("cleared_at", UTCDateTime(), nullable=True),
        sa.UniqueConstraint("course", "supply_item_id", name="uq_run_out_alert_supply"),
    )
    op.create_index("ix_run_out_alert_prescription", "run_out_alert", ["prescription_id"])
    op.create_index("ix_run_out_alert_open", "run_out_alert", ["cleared_at", "tenant_ods"])
    op.create_table(
        "run_out_due",
        sa.Column("course", sa.String(64), primary_key=True),
        sa.Column("item_id", sa.String(36), nullable=False),
        sa.Column("due_on", sa.Date(), nullable=False),
    )
    op.create_index("ix_run_out_due_due_on", "run_out_due", ["due_on"])


def downgrade() -> None:
    op.drop_index("ix_run_out_due_due_on", table_name="run_out_due")
    op.drop_table("run_out_due")
    op.execute("DELETE FROM kpi_fold WHERE name = 'run-out'")
    op.drop_index("ix_run_out_alert_open", table_name="run_out_alert")
    op.drop_index("ix_run_out_alert_prescription", table_name="run_out_alert")
    op.drop_table("run_out_alert")
