"""Refusals in the audit log, coalesced: `count` requests alike in one window, the `source` address
(when no client is known) and the `route` template they asked for. Null on every other row.

Revision ID: 0010_refusal_audit
Revises: 0009_inbound_messages
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010_refusal_audit"
down_revision: str | None = "0009_inbound_messages"
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("audit_event") as table:
        table.add_column(sa.Column("count", sa.Integer(), nullable=True))
        table.add_column(sa.Column("source", sa.String(64), nullable=True))
        table.add_column(sa.Column("route", sa.String(120), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("audit_event") as table:
        table.drop_column("route")
        table.drop_column("source")
        table.drop_column("count")
