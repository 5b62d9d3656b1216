"""KPIs from the event log: monthly figures per provider and trust, restated months, the fold's place.

`kpi_monthly` holds each measure's sums for one provider, trust and month; `kpi_restatement` the
months that received events after they closed; `kpi_fold` how far the log has been read. Indexes
on `status_event.occurred_at` (all events, and the agreed deliveries) let a month be recomputed
without reading the whole log. Existing
events are folded in by the running gateway (or `homecare-gateway kpi recompute`).

Revision ID: 0008_kpi
Revises: 0006_search_indexes
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from gateway.store.types import UTCDateTime

revision: str = "0008_kpi"
down_revision: str | None = "0007_clinician_accounts"
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "kpi_monthly",
        sa.Column("month", sa.String(7), primary_key=True),
        sa.Column("provider_ods", sa.String(12), primary_key=True),
        sa.Column("tenant_ods", sa.String(12), primary_key=True),
        sa.Column("measure", sa.String(40), primary_key=True),
        sa.Column("numerator", sa.BigInteger(), nullable=False),
        sa.Column("denominator", sa.BigInteger(), nullable=False),
        sa.Column("strata", sa.JSON(), nullable=False),
        sa.Column("distribution", sa.JSON(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "kpi_restatement",
        sa.Column("month", sa.String(7), primary_key=True),
        sa.Column("provider_ods", sa.String(12), primary_key=True),
        sa.Column("tenant_ods", sa.String(12), primary_key=True),
        sa.Column("restated_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "kpi_fold",
        sa.Column("name", sa.String(20), primary_key=True),
        sa.Column("last_event_id", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_status_event_occurred", "status_event", ["occurred_at"])
    scheduled = sa.text("status = 'delivery-scheduled'")
    op.create_index(
        "ix_status_event_scheduled",
        "status_event",
        ["occurred_at"],
        postgresql_where=scheduled,
        sqlite_where=scheduled,
    )


def downgrade() -> None:
    op.drop_index("ix_status_event_scheduled", table_name="status_event")
    op.drop_index("ix_status_event_occurred", table_name="status_event")
    op.drop_table("kpi_fold")
    op.drop_table("kpi_restatement")
    op.drop_table("kpi_monthly")
