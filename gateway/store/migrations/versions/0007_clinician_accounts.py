"""Clinician accounts and web sessions; what the clinician pages read off prescriptions.

- `clinician_user` (people who sign in, one trust each) and `web_session` (server-side sessions).
- `prescription_item.medicine`: the medicine's name, filled from each stored MedicationRequest.
- `prescription.status_since`: when the derived status last changed (existing rows: their last update).
- `prescription.attention`: the most urgent of its items' statuses that needs the trust's attention
  (query, delivery-failed, undeliverable, rejected), kept with the derived status from now on.
- Indexes for the worklist: a trust's prescriptions by last activity, by attention, by status and
  arrival; and recent events by status.

Revision ID: 0007_clinician_accounts
Revises: 0006_search_indexes
"""

from collections.abc import Sequence

import orjson
import sqlalchemy as sa
from alembic import op

from fhir_profiles.medication import medicine_name
from gateway.store.types import UTCDateTime

revision: str = "0007_clinician_accounts"
down_revision: str | None = "0006_search_indexes"
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None

_BACKFILL_BATCH = 1000
# The first of domain.status.ATTENTION that any item of the prescription is in (frozen here: a
# migration must not change when that list does).
ATTENTION_BACKFILL = """
UPDATE prescription SET attention = CASE
  WHEN EXISTS (SELECT 1 FROM prescription_item AS item
               WHERE item.prescription_id = prescription.id AND item.status = 'query') THEN 'query'
  WHEN EXISTS (SELECT 1 FROM prescription_item AS item
               WHERE item.prescription_id = prescription.id AND item.status = 'delivery-failed')
       THEN 'delivery-failed'
  WHEN EXISTS (SELECT 1 FROM prescription_item AS item
               WHERE item.prescription_id = prescription.id AND item.status = 'undeliverable')
       THEN 'undeliverable'
  WHEN EXISTS (SELECT 1 FROM prescription_item AS item
               WHERE item.prescription_id = prescription.id AND item.status = 'rejected') THEN 'rejected'
END
"""


def upgrade() -> None:
    op.create_table(
        "clinician_user",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("username", sa.String(100), nullable=False),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("ods_code", sa.String(12), nullable=False),
        sa.Column("password_hash", sa.String(200), nullable=True),
        sa.Column("oidc_issuer", sa.String(500), nullable=True),
        sa.Column("oidc_subject", sa.String(255), nullable=True),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("failed_attempts", sa.Integer(), nullable=False),
        sa.Column("locked_until", UTCDateTime(), nullable=True),
        sa.Column("last_sign_in_at", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("username", name="uq_clinician_user_username"),
        sa.UniqueConstraint("oidc_issuer", "oidc_subject", name="uq_clinician_user_oidc"),
    )
    op.create_table(
        "web_session",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("user_id", sa.String(36), sa.ForeignKey("clinician_user.id"), nullable=True),
        sa.Column("csrf_token", sa.String(64), nullable=False),
        sa.Column("pending", sa.JSON(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("last_seen_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_web_session_user", "web_session", ["user_id"])
    op.create_index("ix_web_session_expires", "web_session", ["expires_at"])
    with op.batch_alter_table("prescription_item") as batch:
        batch.add_column(sa.Column("medicine", sa.String(500), nullable=True))
    with op.batch_alter_table("prescription") as batch:
        batch.add_column(sa.Column("status_since", UTCDateTime(), nullable=True))
        batch.add_column(sa.Column("attention", sa.String(32), nullable=True))
    op.execute("UPDATE prescription SET status_since = updated_at")
    op.execute(ATTENTION_BACKFILL)
    op.create_index("ix_prescription_tenant_updated", "prescription", ["tenant_ods", "updated_at", "id"])
    op.create_index(
        "ix_prescription_tenant_attention", "prescription", ["tenant_ods", "attention", "updated_at", "id"]
    )
    op.create_index(
        "ix_prescription_tenant_status_created", "prescription", ["tenant_ods", "status", "created_at", "id"]
    )
    op.create_index("ix_status_event_status_recorded", "status_event", ["status", "recorded_at"])
    _backfill_medicines()


def _backfill_medicines() -> None:
    """Each stored item's medicine name, read from the MedicationRequest kept as the trust sent it."""
    connection = op.get_bind()
    items = sa.table(
        "prescription_item",
        sa.column("id", sa.String),
        sa.column("resource", sa.LargeBinary),
        sa.column("medicine", sa.String),
    )
    last = ""
    while True:
        rows = connection.execute(
            sa.select(items.c.id, items.c.resource)
            .where(items.c.id > last, items.c.medicine.is_(None))
            .order_by(items.c.id)
            .limit(_BACKFILL_BATCH)
        ).all()
        if not rows:
            return
        for item_id, resource in rows:
            try:
                name = medicine_name(orjson.loads(resource))
            except orjson.JSONDecodeError:
                name = None
            if name is not None:
                connection.execute(items.update().where(items.c.id == item_id).values(medicine=name))
        last = rows[-1][0]


def downgrade() -> None:
    op.drop_index("ix_status_event_status_recorded", table_name="status_event")
    op.drop_index("ix_prescription_tenant_status_created", table_name="prescription")
    op.drop_index("ix_prescription_tenant_attention", table_name="prescription")
    op.drop_index("ix_prescription_tenant_updated", table_name="prescription")
    with op.batch_alter_table("prescription") as batch:
        batch.drop_column("attention")
        batch.drop_column("status_since")
    with op.batch_alter_table("prescription_item") as batch:
        batch.drop_column("medicine")
    op.drop_index("ix_web_session_expires", table_name="web_session")
    op.drop_index("ix_web_session_user", table_name="web_session")
    op.drop_table("web_session")
    op.drop_table("clinician_user")
