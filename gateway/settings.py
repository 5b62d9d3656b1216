"""The gateway's one settings object: `HOMECARE_*` environment variables, and `DATABASE_URL`."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any

from limits import parse
from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway.dispatch.policy import RetryPolicy
from gateway.dispatch.settings import DispatcherSettings
from gateway.faults import Fault


class Environment(StrEnum):
    DEVELOPMENT = "development"
    PRODUCTION = "production"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HOMECARE_", extra="ignore")

    environment: Environment = Environment.DEVELOPMENT
    data_dir: Path = Path("var")
    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("DATABASE_URL", "HOMECARE_DATABASE_URL")
    )
    public_base_url: str = Field(
        default="http://127.0.0.1:8000",
        description="The gateway's address as clients see it; assertions' `aud` is this + /auth/token.",
    )
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    header_timeout_seconds: float = Field(
        default=10.0, gt=0, description="A connection's request headers must arrive within this."
    )
    body_timeout_seconds: float = Field(
        default=30.0, gt=0, description="A request's body must arrive within this of its headers (else 408)."
    )
    max_connections: int = Field(
        default=1000, ge=1, description="Open connections per server process; beyond it new requests get 503."
    )
    rate_limit_token_per_address: str = Field(
        default="3000/minute",
        description="Token requests per source address and process (a `limits` string such as "
        "'600/minute', or 'none').",
    )
    rate_limit_token_per_client: str = Field(
        default="600/minute",
        description="Access tokens issued per client and process; only verified requests count.",
    )
    rate_limit_api_per_address: str = Field(
        default="12000/minute", description="API requests (/fhir) per source address and process."
    )
    rate_limit_api_per_client: str = Field(
        default="6000/minute", description="API requests (/fhir) per authenticated client and process."
    )
    refusal_audit_window_seconds: float = Field(
        default=60.0,
        gt=0,
        description="Refusals alike (client or address, route, status) are one audit row per window, "
        "with a count.",
    )
    refusal_audit_max_keys: int = Field(
        default=1000, ge=1, description="Distinct refusal keys per window and process; beyond, one key."
    )
    max_subscriptions_per_tenant: int = Field(
        default=100, ge=1, description="Subscriptions (not turned off) a trust may hold."
    )
    log_level: str = "INFO"
    log_json: bool = True
    db_pool_size: int = Field(default=10, ge=1)
    run_dispatcher: bool = Field(default=True, description="Run the dispatcher inside the API process.")
    dispatch_poll_seconds: float = Field(default=0.2, gt=0)
    dispatch_lease_seconds: float = Field(default=60.0, gt=0)
    dispatch_max_in_flight: int = Field(default=32, ge=1)
    retry_base_seconds: float = Field(default=1.0, gt=0)
    retry_cap_seconds: float = Field(default=300.0, gt=0)
    retry_max_attempts: int = Field(default=12, ge=1)
    breaker_threshold: int = Field(default=5, ge=1)
    breaker_cooldown_seconds: float = Field(default=30.0, ge=0)
    expiry_check_seconds: float = Field(default=60.0, gt=0, description="How often expiry is checked.")
    cancel_wait_seconds: float = Field(
        default=5.0, ge=0, description="How long a cancellation waits for the provider's answer before 202."
    )
    notification_timeout_seconds: float = Field(
        default=10.0, gt=0, description="How long a subscriber's endpoint has to answer a notification."
    )
    subscription_error_after: int = Field(
        default=5,
        ge=1,
        description="Failed notification deliveries in a row that put a subscription in error.",
    )
    allow_loopback_subscribers: bool = Field(
        default=False,
        description="Development only: let subscriptions post to loopback (127.0.0.0/8, ::1), plain http "
        "included, e.g. to a receiver on this machine. Off by default, in development too; production "
        "refuses to start with it on. Other private, link-local and reserved addresses are never allowed.",
    )
    provider_cache_seconds: float = Field(
        default=2.0, ge=0, description="How long a process trusts its copy of the provider registry."
    )
    mllp_listen: str | None = Field(
        default=None,
        description="host:port of the inbound MLLP listener that takes hl7v2-mllp providers' status "
        "messages (e.g. 0.0.0.0:2575; port 0 picks a free one). Unset: no listener.",
    )
    mllp_tls_cert_file: Path | None = Field(
        default=None, description="The MLLP listener's TLS certificate (PEM); with the key, TLS is on."
    )
    mllp_tls_key_file: Path | None = Field(default=None, description="The MLLP listener's TLS private key.")
    mllp_tls_client_ca_file: Path | None = Field(
        default=None,
        description="CA of the certificates providers must present to the MLLP listener (needs TLS).",
    )
    admin_listen: str = Field(
        default="127.0.0.1:9464",
        description="host:port of the operators' listener that serves /metrics (Prometheus), started by "
        "`serve` and `worker`; loopback by default, so only this machine can scrape it. `off` (or empty): "
        "no listener. A worker on the same machine as `serve` needs another port (`worker --admin-listen`).",
    )
    metrics_token: str | None = Field(
        default=None,
        description="When set, /metrics on the admin listener wants `Authorization: Bearer <this>`.",
    )
    ready_timeout_seconds: float = Field(
        default=2.0, gt=0, description="How long /ready waits for the database before answering 503."
    )
    poll_status_folders: bool = Field(
        default=True,
        description="Read the status folder of every enabled csv-drop provider (one poller per folder).",
    )
    status_sources_refresh_seconds: float = Field(
        default=10.0, gt=0, description="How often the registry is read for status folders to poll."
    )
    pull_check_seconds: float = Field(
        default=30.0,
        gt=0,
        description="How often orders held for pull providers are checked against unpulled_alert_seconds.",
    )
    signing_keys_dir: Path | None = Field(
        default=None,
        description="Folder of the gateway's private signing keys (PEM, owner-only). In development it "
        "defaults to <data_dir>/signing-keys and the first key is generated there; production must set it.",
    )
    access_token_seconds: int = Field(default=300, ge=30, le=3600)
    jwks_cache_seconds: float = Field(
        default=300.0, ge=0, description="How long a client's JWKS URL is trusted."
    )
    jwks_refresh_seconds: float = Field(
        default=10.0, ge=0, description="Least time between fetches of one client's JWKS for an unknown kid."
    )
    jwks_fetch_timeout_seconds: float = Field(default=5.0, gt=0)
    audit_seal_seconds: float = Field(
        default=2.0,
        ge=0,
        description="How often the server seals the audit log; 0 leaves it to `homecare-gateway audit seal`.",
    )
    kpi_fold_seconds: float = Field(
        default=10.0,
        ge=0,
        description="How often the server folds new events into the KPI figures; 0 leaves it to "
        "`homecare-gateway kpi recompute`.",
    )
    kpi_small_number_threshold: int = Field(
        default=5, ge=1, description='Published counts below this (and above 0) are shown as "<N".'
    )
    kpi_month_close_days: int = Field(
        default=5,
        ge=0,
        description="Days after a month ends when its KPI figures become final; later events restate it.",
    )
    run_out_check_seconds: float = Field(
        default=60.0,
        ge=0,
        description="How often the server looks for courses at risk of running out and raises their "
        "warnings (worklist flag, event, notification); 0 turns it off.",
    )
    run_out_lead_days: int = Field(
        default=7,
        ge=0,
        description="A supply with no delivery agreed is at risk this many days before it runs out.",
    )
    audit_max_unsealed_seconds: float = Field(
        default=60.0, gt=0, description="`audit verify` fails when a row stays unsealed longer than this."
    )
    test_fault: Fault | None = Field(
        default=None,
        description="Test only: break one rule on purpose (gateway/faults.py), to test the conformance "
        "suite. Production refuses it.",
    )

    # The clinician pages (gateway/web): sessions, lock-out, the worklist's action-needed rules.
    web_session_idle_seconds: float = Field(
        default=1800, gt=0, description="A signed-in session ends after this long without a request."
    )
    web_session_max_seconds: float = Field(
        default=43200, gt=0, description="A signed-in session ends this long after sign-in, whatever happens."
    )
    web_lockout_attempts: int = Field(
        default=5, ge=1, description="Wrong passwords in a row that lock a local account."
    )
    web_lockout_seconds: float = Field(
        default=900, gt=0, description="How long a locked account stays locked."
    )
    web_page_size: int = Field(default=25, ge=5, le=200, description="Worklist rows per page.")
    web_live_poll_seconds: float = Field(
        default=5.0, gt=0, description="How often an open page asks whether its prescriptions changed."
    )
    worklist_acceptance_hours: float = Field(
        default=24.0,
        gt=0,
        description="An order the provider has not accepted within this long needs action.",
    )
    worklist_expiring_days: float = Field(
        default=7.0, gt=0, description="Expiring this soon with nothing dispensed needs action."
    )
    worklist_recent_days: float = Field(
        default=7.0, gt=0, description="Rejections and refused cancellations need action for this long."
    )
    oidc_issuer: str | None = Field(
        default=None,
        description="OpenID Connect issuer for clinician sign-in (e.g. NHS CIS2); its discovery document "
        "is read from <issuer>/.well-known/openid-configuration. Unset: local accounts only.",
    )
    oidc_client_id: str | None = None
    oidc_client_secret: str | None = None
    oidc_scopes: str = Field(default="openid profile", description="Scopes asked for at sign-in.")
    oidc_ods_claim: str = Field(
        default="ods_code",
        description="The id_token (or userinfo) claim holding the person's trust ODS code; a dotted path "
        "reaches into objects and the first element of lists.",
    )
    oidc_name_claim: str = Field(default="name", description="The claim holding the person's display name.")
    oidc_button_label: str = Field(default="Sign in with your organisation's account")

    @field_validator("admin_listen")
    @classmethod
    def _admin_host_and_port(cls, value: str) -> str:
        if value.strip().lower() not in ("", "off") and listen_address(value) is None:
            raise ValueError("HOMECARE_ADMIN_LISTEN is host:port (e.g. 127.0.0.1:9464) or off")
        return value

    @property
    def admin_address(self) -> tuple[str, int] | None:
        """Where the admin listener listens, or None when it is off."""
        return None if self.admin_listen.strip().lower() in ("", "off") else listen_address(self.admin_listen)

    @field_validator("mllp_listen")
    @classmethod
    def _host_and_port(cls, value: str | None) -> str | None:
        if value is not None and listen_address(value) is None:
            raise ValueError("HOMECARE_MLLP_LISTEN is host:port, e.g. 0.0.0.0:2575 or [::]:2575")
        return value

    @field_validator(
        "rate_limit_token_per_address",
        "rate_limit_token_per_client",
        "rate_limit_api_per_address",
        "rate_limit_api_per_client",
    )
    @classmethod
    def _rate_limit(cls, value: str) -> str:
        if value.strip().lower() != "none":
            try:
                parse(value)
            except ValueError:
                raise ValueError(
                    f"'{value}' is not a rate limit: write e.g. '600/minute', '50/second' or 'none'"
                ) from None
        return value.strip()

    @model_validator(mode="after")
    def _refuse_development_defaults_in_production(self) -> Settings:
        if self.environment is Environment.PRODUCTION:
            if self.test_fault is not None:
                raise ValueError(
                    f"HOMECARE_TEST_FAULT={self.test_fault.value} breaks the gateway on purpose, for "
                    "testing the conformance suite; production refuses it: unset it"
                )
            if self.signing_keys_dir is None:
                raise ValueError(
                    "HOMECARE_SIGNING_KEYS_DIR must name the gateway's signing key folder in production "
                    "(make its first key with `homecare-gateway keys rotate`)"
                )
            if self.allow_loopback_subscribers:
                raise ValueError(
                    "HOMECARE_ALLOW_LOOPBACK_SUBSCRIBERS is for development only: unset it in production"
                )
            if not self.public_base_url.startswith("https://"):
                raise ValueError("HOMECARE_PUBLIC_BASE_URL must be the gateway's https address in production")
            if self.oidc_issuer and not self.oidc_issuer.startswith("https://"):
                raise ValueError("HOMECARE_OIDC_ISSUER must be an https address in production")
        if self.oidc_issuer and not (self.oidc_client_id and self.oidc_client_secret):
            raise ValueError(
                "HOMECARE_OIDC_ISSUER needs HOMECARE_OIDC_CLIENT_ID and HOMECARE_OIDC_CLIENT_SECRET"
            )
        return self

    @property
    def is_development(self) -> bool:
        return self.environment is Environment.DEVELOPMENT

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'gateway.db').as_posix()}"

    def mllp_listener_options(self) -> dict[str, Any] | None:
        """The MLLP listener's settings (`adapters.hl7v2_mllp.MllpListenerSettings`), or None."""
        address = listen_address(self.mllp_listen) if self.mllp_listen else None
        if address is None:
            return None
        options: dict[str, Any] = {"host": address[0], "port": address[1]}
        for key, value in (
            ("tls_cert_file", self.mllp_tls_cert_file),
            ("tls_key_file", self.mllp_tls_key_file),
            ("tls_client_ca_file", self.mllp_tls_client_ca_file),
        ):
            if value is not None:
                options[key] = value
        return options

    def dispatcher_settings(self) -> DispatcherSettings:
        return DispatcherSettings(
            poll_seconds=self.dispatch_poll_seconds,
            lease_seconds=self.dispatch_lease_seconds,
            max_in_flight=self.dispatch_max_in_flight,
            retry=RetryPolicy(
                base_seconds=self.retry_base_seconds,
                cap_seconds=self.retry_cap_seconds,
                max_attempts=self.retry_max_attempts,
            ),
            breaker_threshold=self.breaker_threshold,
            breaker_cooldown_seconds=self.breaker_cooldown_seconds,
            notification_timeout_seconds=self.notification_timeout_seconds,
            subscription_error_after=self.subscription_error_after,
            allow_loopback_subscribers=self.allow_loopback_subscribers,
        )

    @property
    def resolved_signing_keys_dir(self) -> Path:
        return self.signing_keys_dir or self.data_dir / "signing-keys"

    @property
    def secure_cookies(self) -> bool:
        """Cookies are marked Secure when the gateway is published over https."""
        return self.public_base_url.startswith("https://")

    @property
    def base_url(self) -> str:
        return self.public_base_url.rstrip("/")

    @property
    def token_url(self) -> str:
        """The token endpoint's URL as published: the one `aud` of every client assertion must name."""
        return f"{self.base_url}/auth/token"


def listen_address(value: str) -> tuple[str, int] | None:
    """`host:port` (`[v6 address]:port` too) as (host, port), or None when it is not one."""
    host, _, port = value.strip().rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not host or not port.isascii() or not port.isdigit() or int(port) > 65535:
        return None
    return host, int(port)
