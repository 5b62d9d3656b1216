"""Settings of the `hl7v2-mllp` adapter (one set per provider) and of the gateway's one MLLP listener."""

from __future__ import annotations

import ipaddress
import ssl
from typing import Any, Literal, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, FilePath, field_validator, model_validator

from adapters.base import AdapterSettings

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _comma_separated(value: Any) -> Any:
    """`providers add --setting key=a,b` passes one string: split it."""
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


class Hl7v2MllpSettings(AdapterSettings):
    """Where the provider's MLLP listener is, how to reach it, and who may send status back.

    Outbound: orders go to `host`:`port` over one reused connection, with TLS when `tls` is on
    (`tls_ca_file` to trust a private CA, `tls_client_cert_file`/`tls_client_key_file` when the
    provider wants the gateway's certificate). Inbound: the provider's status messages reach the
    gateway's MLLP listener and are taken only from `inbound_allowed_addresses` (required: without it
    the provider cannot send status), and, when the listener verifies client certificates, only with
    a certificate whose subject CN or DNS name is `inbound_tls_subject`.
    """

    host: str = Field(min_length=1, description="The provider's MLLP host")
    port: int = Field(ge=1, le=65535)
    tls: bool = False
    tls_ca_file: FilePath | None = None
    tls_client_cert_file: FilePath | None = None
    tls_client_key_file: FilePath | None = None
    tls_server_name: str | None = Field(
        default=None, description="Name to check in the provider's certificate"
    )
    connect_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    ack_timeout_seconds: float = Field(default=30.0, gt=0, le=600)
    sending_application: str = Field(default="HOMECARE-GATEWAY", min_length=1, max_length=180)
    sending_facility: str = Field(default="HOMECARE-GATEWAY", min_length=1, max_length=180)
    receiving_application: str = Field(default="PHARMACY", min_length=1, max_length=180)
    processing_id: Literal["P", "T", "D"] = "P"
    inbound_allowed_addresses: tuple[IpNetwork, ...] = Field(
        default=(), description="Addresses or networks (CIDR) the provider's status messages come from"
    )
    inbound_tls_subject: str | None = None

    _split = field_validator("inbound_allowed_addresses", mode="before")(_comma_separated)

    @model_validator(mode="after")
    def _tls_settings_need_tls(self) -> Self:
        uses_tls = (
            self.tls_ca_file,
            self.tls_client_cert_file,
            self.tls_client_key_file,
            self.tls_server_name,
        )
        if not self.tls and any(value is not None for value in uses_tls):
            raise ValueError("TLS files or server name are set but tls is off")
        if (self.tls_client_cert_file is None) != (self.tls_client_key_file is None):
            raise ValueError("tls_client_cert_file and tls_client_key_file go together")
        return self

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        context = ssl.create_default_context(cafile=str(self.tls_ca_file) if self.tls_ca_file else None)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.tls_client_cert_file is not None and self.tls_client_key_file is not None:
            context.load_cert_chain(str(self.tls_client_cert_file), str(self.tls_client_key_file))
        return context

    def allows(self, address: str, certificate_names: frozenset[str] | None) -> bool:
        """Whether a status connection from `address` (with the client certificate's names, when the
        listener verified one) may speak for this provider."""
        try:
            peer = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(peer, ipaddress.IPv6Address) and peer.ipv4_mapped is not None:
            peer = peer.ipv4_mapped
        if not any(peer in network for network in self.inbound_allowed_addresses):
            return False
        if self.inbound_tls_subject is not None:
            return certificate_names is not None and self.inbound_tls_subject in certificate_names
        return True


class MllpListenerSettings(BaseModel):
    """The gateway's one inbound MLLP port, shared by every `hl7v2-mllp` provider."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=2575, ge=0, le=65535, description="0 picks a free port (tests)")
    tls_cert_file: FilePath | None = None
    tls_key_file: FilePath | None = None
    tls_client_ca_file: FilePath | None = Field(
        default=None, description="When set, clients must present a certificate signed by this CA"
    )
    default_timezone: str = Field(default="Europe/London", description="For HL7 times without an offset")
    max_message_bytes: int = Field(default=1024 * 1024, ge=1024)
    idle_timeout_seconds: float = Field(default=600.0, gt=0)

    @field_validator("default_timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone '{value[:40]}'") from exc
        return value

    @model_validator(mode="after")
    def _certificate_and_key(self) -> Self:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("client certificates need TLS (tls_cert_file and tls_key_file)")
        return self

    def ssl_context(self) -> ssl.SSLContext | None:
        if self.tls_cert_file is None or self.tls_key_file is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(str(self.tls_cert_file), str(self.tls_key_file))
        if self.tls_client_ca_file is not None:
            context.load_verify_locations(cafile=str(self.tls_client_ca_file))
            context.verify_mode = ssl.CERT_REQUIRED
        return context
