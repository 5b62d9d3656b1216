"""Find a prescription by its short-form ID alone.

Providers address status reports, and `based-on:identifier` searches name prescriptions, by the
short-form ID without the trust, so the (tenant, short-form ID) unique index cannot serve them: on
a large database each report scanned an index. This one serves them.

Revision ID: 0006_search_indexes
Revises: 0005_subscriptions
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006_search_indexes"
down_revision: str | None = "0005_subscriptions"
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_prescription_short_form_id", "prescription", ["short_form_id"])


def downgrade() -> None:
    op.drop_index("ix_prescription_short_form_id", table_name="prescription")
