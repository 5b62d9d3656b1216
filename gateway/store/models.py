"""The gateway's tables. Migrations in `migrations/versions` create them; keep both in step."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Date,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlmodel import Field, SQLModel

from gateway.store.types import UTCDateTime


class Provider(SQLModel, table=True):
    """A registered homecare provider and how to reach it."""

    __tablename__ = "provider"

    ods_code: str = Field(sa_column=Column(String(12), primary_key=True))
    name: str = Field(sa_column=Column(String(200), nullable=False))
    adapter: str = Field(sa_column=Column(String(40), nullable=False))
    settings: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    enabled: bool = Field(default=True, nullable=False)
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    updated_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))


class InboundMessage(SQLModel, table=True):
    """Every accepted message: the exact bytes received and the answer given (for idempotent replay)."""

    __tablename__ = "inbound_message"
    __table_args__ = (UniqueConstraint("tenant_ods", "bundle_identifier", name="uq_inbound_message_bundle"),)

    id: str = Field(sa_column=Column(String(36), primary_key=True))
    tenant_ods: str = Field(sa_column=Column(String(12), nullable=False))
    bundle_identifier: str = Field(sa_column=Column(String(200), nullable=False))
    event: str = Field(sa_column=Column(String(40), nullable=False))
    body_sha256: str = Field(sa_column=Column(String(64), nullable=False))
    body: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    response_status: int = Field(sa_column=Column(Integer, nullable=False))
    response_body: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    response_location: str | None = Field(default=None, sa_column=Column(String(200), nullable=True))
    request_id: str = Field(sa_column=Column(String(64), nullable=False))
    received_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))


class Prescription(SQLModel, table=True):
    """A homecare prescription: one order message, one patient, one provider, 1-4 line items."""

    __tablename__ = "prescription"
    __table_args__ = (
        UniqueConstraint("tenant_ods", "short_form_id", name="uq_prescription_short_form"),
        Index("ix_prescription_nhs_number", "nhs_number"),
        Index("ix_prescription_short_form_id", "short_form_id"),
        Index("ix_prescription_provider_status", "provider_ods", "status"),
        Index("ix_prescription_valid_until", "valid_until"),
        # The clinician worklist: one trust's prescriptions, newest activity first; those whose items
        # need attention; those not yet accepted.
        Index("ix_prescription_tenant_updated", "tenant_ods", "updated_at", "id"),
        Index("ix_prescription_tenant_attention", "tenant_ods", "attention", "updated_at", "id"),
        Index("ix_prescription_tenant_status_created", "tenant_ods", "status", "created_at", "id"),
    )

    id: str = Field(sa_column=Column(String(36), primary_key=True))
    tenant_ods: str = Field(sa_column=Column(String(12), nullable=False))
    short_form_id: str = Field(sa_column=Column(String(20), nullable=False))
    long_form_id: str = Field(sa_column=Column(String(36), nullable=False))
    provider_ods: str = Field(sa_column=Column(String(12), ForeignKey("provider.ods_code"), nullable=False))
    nhs_number: str = Field(sa_column=Column(String(10), nullable=False))
    prescription_type: str = Field(sa_column=Column(String(8), nullable=False))
    message_id: str = Field(sa_column=Column(String(36), ForeignKey("inbound_message.id"), nullable=False))
    status: str = Field(sa_column=Column(String(32), nullable=False))
    partial: bool = Field(default=False, sa_column=Column(Boolean, nullable=False, server_default=false()))
    valid_until: datetime | None = Field(default=None, sa_column=Column(UTCDateTime, nullable=True))
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    updated_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    # When the prescription's (derived) status last changed: "time in status" on the clinician pages.
    status_since: datetime | None = Field(default=None, sa_column=Column(UTCDateTime, nullable=True))
    # The most urgent status among its items that needs the trust's attention (domain.status.ATTENTION).
    attention: str | None = Field(default=None, sa_column=Column(String(32), nullable=True))


class PrescriptionItem(SQLModel, table=True):
    """One MedicationRequest (line item) of a prescription, kept as the trust sent it."""

    __tablename__ = "prescription_item"
    __table_args__ = (
        Index("ix_prescription_item_prescription", "prescription_id"),
        Index("ix_item_provider_status", "provider_ods", "status", "updated_at", "id"),
        Index("ix_item_tenant_status", "tenant_ods", "status", "updated_at", "id"),
        Index("ix_item_provider_updated", "provider_ods", "updated_at", "id"),
        Index("ix_item_tenant_updated", "tenant_ods", "updated_at", "id"),
        Index("ix_item_identifier", "prescription_id", "item_identifier"),
    )

    id: str = Field(sa_column=Column(String(36), primary_key=True))
    prescription_id: str = Field(sa_column=Column(String(36), ForeignKey("prescription.id"), nullable=False))
    # Copied from the prescription so that status searches are served by one index.
    tenant_ods: str = Field(sa_column=Column(String(12), nullable=False))
    provider_ods: str = Field(sa_column=Column(String(12), nullable=False))
    position: int = Field(sa_column=Column(Integer, nullable=False))
    item_identifier: str = Field(sa_column=Column(String(200), nullable=False))
    resource: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    # The medicine's name as the trust wrote it (medicationCodeableConcept text or coding display).
    medicine: str | None = Field(default=None, sa_column=Column(String(500), nullable=True))
    status: str = Field(sa_column=Column(String(32), nullable=False))
    # The status a query or a cancel request interrupted (where it goes back to).
    resume_status: str | None = Field(default=None, sa_column=Column(String(32), nullable=True))
    # The newest `lastModified` applied to the item.
    last_modified: datetime | None = Field(default=None, sa_column=Column(UTCDateTime, nullable=True))
    version: int = Field(default=1, sa_column=Column(Integer, nullable=False, server_default="1"))
    updated_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))


class StatusEvent(SQLModel, table=True):
    """Append-only log of every status change: the timeline and the KPIs come from here."""

    __tablename__ = "status_event"
    __table_args__ = (
        Index("ix_status_event_prescription", "prescription_id", "id"),
        Index("ix_status_event_item", "item_id", "id"),
        # Recent events of one kind (e.g. cancellations requested this week) for the worklist.
        Index("ix_status_event_status_recorded", "status", "recorded_at"),
        # A month's KPI recompute finds the prescriptions with an event in the month, and those with a
        # delivery agreed before it.
        Index("ix_status_event_occurred", "occurred_at"),
        Index(
            "ix_status_event_scheduled",
            "occurred_at",
            postgresql_where=text("status = 'delivery-scheduled'"),
            sqlite_where=text("status = 'delivery-scheduled'"),
        ),
    )

    id: int | None = Field(
        default=None,
        sa_column=Column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    )
    prescription_id: str = Field(sa_column=Column(String(36), ForeignKey("prescription.id"), nullable=False))
    item_id: str | None = Field(default=None, sa_column=Column(String(36), nullable=True))
    status: str = Field(sa_column=Column(String(32), nullable=False))
    occurred_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    recorded_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    source: str = Field(sa_column=Column(String(64), nullable=False))
    detail: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    # applied, duplicate or superseded (an older update from the same source): kept either way.
    verdict: str | None = Field(default=None, sa_column=Column(String(16), nullable=True))


class Subscription(SQLModel, table=True):
    """A trust's FHIR Subscription (rest-hook) to the status of its prescriptions.

    States: `requested` (never stored: a new one is checked and made `active` at once), `active`,
    `error` (deliveries kept failing; `error` says why), `off` (deleted by its owner). `headers` are
    what the subscriber asked to receive (an Authorization header, say): stored, sent, never logged.
    """

    __tablename__ = "subscription"
    __table_args__ = (Index("ix_subscription_tenant_status", "tenant_ods", "status"),)

    id: str = Field(sa_column=Column(String(36), primary_key=True))
    tenant_ods: str = Field(sa_column=Column(String(12), nullable=False))
    client_id: str = Field(sa_column=Column(String(100), nullable=False))
    criteria: str = Field(sa_column=Column(String(500), nullable=False))
    endpoint: str = Field(sa_column=Column(String(2000), nullable=False))
    payload: str | None = Field(default=None, sa_column=Column(String(40), nullable=True))
    headers: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    status: str = Field(sa_column=Column(String(16), nullable=False))
    error: str | None = Field(default=None, sa_column=Column(String(500), nullable=True))
    failure_count: int = Field(default=0, sa_column=Column(Integer, nullable=False))
    reason: str = Field(sa_column=Column(String(500), nullable=False))
    end_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime, nullable=True))
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    updated_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))


class OutboxMessage(SQLModel, table=True):
    """A message waiting to go out, written with the change it carries: an order or a cancel for a
    provider, or (with `subscription_id` set) a notification to a subscriber, whose `payload` is the
    resource as it was when the change was made.

    States: `pending` (due at `due_at`), `sending` (claimed by `lease_owner` until `lease_until`),
    `done` (the provider's system, or the subscriber, answered for it), `dead` (retries exhausted: a
    provider message can be re-driven; a notification is never sent once its subscription is in error
    or off). Messages with the same `ordering_key` go out one at a time, in id order: the prescription id for
    provider messages, `sub:<subscription id>` for notifications.
    """

    __tablename__ = "outbox"
    __table_args__ = (
        UniqueConstraint("idempotency_key", name="uq_outbox_idempotency_key"),
        Index("ix_outbox_due", "state", "due_at"),
        # A dispatcher's lanes while providers are held back: each provider's pending messages of
        # each kind, in due order, without reading the held-back ones (outbox._due_ids).
        Index("ix_outbox_lane", "state", "provider_ods", "kind", "due_at", "id"),
        Index("ix_outbox_prescription", "prescription_id", "id"),
        Index("ix_outbox_ordering", "ordering_key", "id"),
        Index("ix_outbox_subscription", "subscription_id", "state"),
    )

    id: int | None = Field(
        default=None,
        sa_column=Column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    )
    prescription_id: str = Field(sa_column=Column(String(36), ForeignKey("prescription.id"), nullable=False))
    kind: str = Field(sa_column=Column(String(16), nullable=False))
    provider_ods: str = Field(sa_column=Column(String(12), nullable=False))
    idempotency_key: str = Field(sa_column=Column(String(80), nullable=False))
    # The message to send when it is not the prescription's order (e.g. a cancellation).
    message_id: str | None = Field(default=None, sa_column=Column(String(36), nullable=True))
    state: str = Field(sa_column=Column(String(16), nullable=False))
    attempts: int = Field(sa_column=Column(Integer, nullable=False))
    due_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    lease_owner: str | None = Field(default=None, sa_column=Column(String(80), nullable=True))
    lease_until: datetime | None = Field(default=None, sa_column=Column(UTCDateTime, nullable=True))
    last_error: str | None = Field(default=None, sa_column=Column(String(500), nullable=True))
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    updated_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    ordering_key: str = Field(sa_column=Column(String(80), nullable=False))
    subscription_id: str | None = Field(
        default=None, sa_column=Column(String(36), ForeignKey("subscription.id"), nullable=True)
    )
    payload: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))
    # When a provider message was last held for the provider to pull (`pull` adapter, state `held`).
    held_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime, nullable=True))


class ProviderMessage(SQLModel, table=True):
    """A status message a provider sent through its adapter's listener or poller (an HL7 v2 message, a
    row of a status file), kept as received with the key that makes it applied once."""

    __tablename__ = "provider_message"
    __table_args__ = (
        UniqueConstraint("dedupe_key", name="uq_provider_message_dedupe_key"),
        Index("ix_provider_message_provider", "provider_ods", "received_at"),
    )

    id: str = Field(sa_column=Column(String(36), primary_key=True))
    dedupe_key: str = Field(sa_column=Column(String(300), nullable=False))
    scheme: str = Field(sa_column=Column(String(40), nullable=False))
    provider_ods: str = Field(sa_column=Column(String(12), nullable=False))
    peer: str | None = Field(default=None, sa_column=Column(String(300), nullable=True))
    raw: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    reports: int = Field(sa_column=Column(Integer, nullable=False))
    received_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))


class QueryMessage(SQLModel, table=True):
    """One message of a query thread about a line item: the provider asks, the trust answers."""

    __tablename__ = "query_message"
    __table_args__ = (Index("ix_query_message_item", "item_id", "sent_at"),)

    id: str = Field(sa_column=Column(String(36), primary_key=True))
    prescription_id: str = Field(sa_column=Column(String(36), ForeignKey("prescription.id"), nullable=False))
    item_id: str = Field(sa_column=Column(String(36), ForeignKey("prescription_item.id"), nullable=False))
    author_role: str = Field(sa_column=Column(String(16), nullable=False))
    author_ods: str = Field(sa_column=Column(String(12), nullable=False))
    text: str = Field(sa_column=Column(Text, nullable=False))
    sent_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    request_id: str = Field(sa_column=Column(String(64), nullable=False))


class MedicationDispenseRecord(SQLModel, table=True):
    """A MedicationDispense from a provider's dispense-notification, kept as sent (`message_id`), or
    built from what a provider reported through its adapter (`provider_message_id`)."""

    __tablename__ = "medication_dispense"
    __table_args__ = (Index("ix_medication_dispense_item", "item_id"),)

    id: str = Field(sa_column=Column(String(36), primary_key=True))
    prescription_id: str = Field(sa_column=Column(String(36), ForeignKey("prescription.id"), nullable=False))
    item_id: str = Field(sa_column=Column(String(36), ForeignKey("prescription_item.id"), nullable=False))
    message_id: str | None = Field(
        default=None, sa_column=Column(String(36), ForeignKey("inbound_message.id"), nullable=True)
    )
    provider_message_id: str | None = Field(
        default=None, sa_column=Column(String(36), ForeignKey("provider_message.id"), nullable=True)
    )
    resource: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))


class ClinicianUser(SQLModel, table=True):
    """A person who signs in to the clinician pages: a member of one trust (role `clinician`).

    Local accounts hold an argon2 `password_hash`; people who sign in through OpenID Connect hold the
    issuer and subject instead. Accounts are disabled, never deleted, so the audit log's names stay
    meaningful.
    """

    __tablename__ = "clinician_user"
    __table_args__ = (
        UniqueConstraint("username", name="uq_clinician_user_username"),
        UniqueConstraint("oidc_issuer", "oidc_subject", name="uq_clinician_user_oidc"),
    )

    id: str = Field(sa_column=Column(String(36), primary_key=True))
    username: str = Field(sa_column=Column(String(100), nullable=False))
    display_name: str = Field(sa_column=Column(String(200), nullable=False))
    ods_code: str = Field(sa_column=Column(String(12), nullable=False))
    password_hash: str | None = Field(default=None, sa_column=Column(String(200), nullable=True))
    oidc_issuer: str | None = Field(default=None, sa_column=Column(String(500), nullable=True))
    oidc_subject: str | None = Field(default=None, sa_column=Column(String(255), nullable=True))
    enabled: bool = Field(default=True, sa_column=Column(Boolean, nullable=False))
    failed_attempts: int = Field(default=0, sa_column=Column(Integer, nullable=False))
    locked_until: datetime | None = Field(default=None, sa_column=Column(UTCDateTime, nullable=True))
    last_sign_in_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime, nullable=True))
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    updated_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))


class WebSession(SQLModel, table=True):
    """A browser's session with the clinician pages, kept server-side.

    The cookie holds a random opaque token; only its SHA-256 is stored (`token_hash`), so a copy of
    the table opens no session. A session without `user_id` belongs to someone not yet signed in
    (it carries the sign-in form's CSRF token, and an OpenID Connect sign-in's state, nonce and PKCE
    verifier in `pending`). Signing in replaces it with a new session (no fixation).
    """

    __tablename__ = "web_session"
    __table_args__ = (
        Index("ix_web_session_user", "user_id"),
        Index("ix_web_session_expires", "expires_at"),
    )

    token_hash: str = Field(sa_column=Column(String(64), primary_key=True))
    user_id: str | None = Field(
        default=None, sa_column=Column(String(36), ForeignKey("clinician_user.id"), nullable=True)
    )
    csrf_token: str = Field(sa_column=Column(String(64), nullable=False))
    pending: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    last_seen_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    expires_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))


class KpiMonthly(SQLModel, table=True):
    """One KPI's figures for one provider, one trust and one calendar month (gateway.kpi).

    Every column is a sum over prescriptions, so the figures are kept up to date by adding what
    new events change: `numerator`, `denominator`, `strata` (counts by breakdown and category, e.g.
    failed deliveries by cause) and `distribution` (how many observations took each whole number of
    minutes, for medians and percentiles).
    """

    __tablename__ = "kpi_monthly"

    month: str = Field(sa_column=Column(String(7), primary_key=True))
    provider_ods: str = Field(sa_column=Column(String(12), primary_key=True))
    tenant_ods: str = Field(sa_column=Column(String(12), primary_key=True))
    measure: str = Field(sa_column=Column(String(40), primary_key=True))
    numerator: int = Field(sa_column=Column(BigInteger, nullable=False))
    denominator: int = Field(sa_column=Column(BigInteger, nullable=False))
    strata: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    distribution: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    updated_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))


class KpiRestatement(SQLModel, table=True):
    """A month of one provider and trust that received events after it closed: its figures were
    restated, last at `restated_at` (the newest such event's recording time)."""

    __tablename__ = "kpi_restatement"

    month: str = Field(sa_column=Column(String(7), primary_key=True))
    provider_ods: str = Field(sa_column=Column(String(12), primary_key=True))
    tenant_ods: str = Field(sa_column=Column(String(12), primary_key=True))
    restated_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))


class KpiFold(SQLModel, table=True):
    """How far the KPI aggregate has read the event log: every event up to `last_event_id` is in it."""

    __tablename__ = "kpi_fold"

    name: str = Field(sa_column=Column(String(20), primary_key=True))
    last_event_id: int = Field(sa_column=Column(BigInteger, nullable=False))
    updated_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))


class RunOutAlert(SQLModel, table=True):
    """A run-out warning raised for one supply of a course (gateway.domain.run_out): raised once per
    course and supply, open (flagging the worklist) until the course is no longer at risk.

    `course` is a digest of the trust, the patient and the medicine (no patient data in it);
    `prescription_id`/`item_id` are the order flagged: the next order when there is one, else the
    delivered supply itself."""

    __tablename__ = "run_out_alert"
    __table_args__ = (
        UniqueConstraint("course", "supply_item_id", name="uq_run_out_alert_supply"),
        Index("ix_run_out_alert_prescription", "prescription_id"),
        Index("ix_run_out_alert_open", "cleared_at", "tenant_ods"),
    )

    id: int | None = Field(
        default=None,
        sa_column=Column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    )
    course: str = Field(sa_column=Column(String(64), nullable=False))
    supply_item_id: str = Field(sa_column=Column(String(36), nullable=False))
    prescription_id: str = Field(sa_column=Column(String(36), ForeignKey("prescription.id"), nullable=False))
    item_id: str = Field(sa_column=Column(String(36), nullable=False))
    tenant_ods: str = Field(sa_column=Column(String(12), nullable=False))
    provider_ods: str = Field(sa_column=Column(String(12), nullable=False))
    run_out_on: date = Field(sa_column=Column(Date, nullable=False))
    reason: str = Field(sa_column=Column(String(32), nullable=False))
    raised_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    cleared_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime, nullable=True))


class RunOutDue(SQLModel, table=True):
    """When the run-out watch next looks at a course that nothing happens to (the day its supply
    comes within the lead days of running out, or daily while at risk), and one of its line items
    (to find the patient's items again). Courses with no row are looked at when an event comes."""

    __tablename__ = "run_out_due"
    __table_args__ = (Index("ix_run_out_due_due_on", "due_on"),)

    course: str = Field(sa_column=Column(String(64), primary_key=True))
    item_id: str = Field(sa_column=Column(String(36), nullable=False))
    due_on: date = Field(sa_column=Column(Date, nullable=False))
