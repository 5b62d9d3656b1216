"""The outbox's lanes: an index on (state, provider_ods, kind, due_at, id), so a dispatcher's poll reads
each provider's pending messages in due order and never a held-back provider's backlog.

Revision ID: 0012_outbox_lanes
Revises: 0011_run_out
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0012_outbox_lanes"
down_revision: str | None = "0011_run_out"
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_outbox_lane", "outbox", ["state", "provider_ods", "kind", "due_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_outbox_lane", table_name="outbox")
