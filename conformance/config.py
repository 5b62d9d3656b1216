"""The suite's configuration file (TOML): which clients it signs in as, and where its own actors listen.

Paths in the file are relative to the file. See the README, "Conformance suite", for an example.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conformance.assertions import KeyFileError, SigningIdentity
from conformance.identifiers import ODS_PATTERN


class ConfigError(Exception):
    """The configuration cannot be used; the message says why, in one line."""


@dataclass(frozen=True)
class Client:
    """A machine client registered at the gateway under test, whose private key the suite holds."""

    name: str
    ods: str
    identity: SigningIdentity


@dataclass(frozen=True)
class GatewayConfig:
    trust_a: Client | None = None
    trust_b: Client | None = None
    provider: Client | None = None
    provider_b: Client | None = None
    provider_listen: tuple[str, int] | None = None
    token_url: str | None = None
    unknown_provider_ods: str = "ZZ9ZZ"
    wait_seconds: float = 20.0


@dataclass(frozen=True)
class TrustConfig:
    """The trust system under test, as the suite (playing the gateway) knows it."""

    client_id: str | None = None
    ods: str | None = None
    jwks: dict[str, Any] | None = None
    wait_seconds: float = 120.0


@dataclass(frozen=True)
class ProviderConfig:
    ods: str | None = None
    transport: str = "fhir-rest"
    trust_ods: str = "RCF"
    listen: tuple[str, int] | None = None
    status_token: str | None = None
    bearer_token: str | None = None
    wait_seconds: float = 30.0
    ack_timeout_seconds: float = 30.0
    order_dir: str = "orders"
    status_dir: str = "status"


@dataclass(frozen=True)
class SuiteConfig:
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    trust: TrustConfig = field(default_factory=TrustConfig)
    provider: ProviderConfig = field(default_factory=ProviderConfig)


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ConfigError(f"listen address {value!r} must be HOST:PORT, e.g. 127.0.0.1:8301")
    return host, int(port)


def _string(section: dict[str, Any], key: str, where: str, *, required: bool = False) -> str | None:
    value = section.get(key)
    if value is None:
        if required:
            raise ConfigError(f"{where}: '{key}' is required")
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: '{key}' must be a non-empty string")
    return value


def _ods(section: dict[str, Any], key: str, where: str, *, required: bool = True) -> str | None:
    value = _string(section, key, where, required=required)
    if value is not None and not ODS_PATTERN.fullmatch(value):
        raise ConfigError(f"{where}: '{key}' {value!r} is not an ODS code (3-6 capital letters and digits)")
    return value


def load_client(name: str, section: Any, base: Path) -> Client:
    where = f"[gateway.clients.{name}]"
    if not isinstance(section, dict):
        raise ConfigError(f"{where} must be a table")
    client_id = _string(section, "client_id", where, required=True)
    key = Path(str(_string(section, "key", where, required=True)))
    ods = _ods(section, "ods", where)
    try:
        identity = SigningIdentity.from_file(
            str(client_id), key if key.is_absolute() else base / key, section.get("kid"), section.get("alg")
        )
    except KeyFileError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    return Client(name, str(ods), identity)


def _gateway(section: dict[str, Any], base: Path) -> GatewayConfig:
    clients = section.get("clients", {})
    if not isinstance(clients, dict):
        raise ConfigError("[gateway.clients] must be a table of clients")
    unknown = set(clients) - {"trust_a", "trust_b", "provider", "provider_b"}
    if unknown:
        raise ConfigError(
            f"[gateway.clients]: unknown client {sorted(unknown)[0]!r} (trust_a, trust_b, provider, provider_b)"
        )
    loaded = {name: load_client(name, value, base) for name, value in clients.items()}
    listen = _string(section, "provider_listen", "[gateway]")
    return GatewayConfig(
        trust_a=loaded.get("trust_a"),
        trust_b=loaded.get("trust_b"),
        provider=loaded.get("provider"),
        provider_b=loaded.get("provider_b"),
        provider_listen=parse_listen(listen) if listen else None,
        token_url=_string(section, "token_url", "[gateway]"),
        unknown_provider_ods=_ods(section, "unknown_provider_ods", "[gateway]", required=False) or "ZZ9ZZ",
        wait_seconds=float(section.get("wait_seconds", 20.0)),
    )


def _trust(section: dict[str, Any], base: Path) -> TrustConfig:
    jwks_path = _string(section, "jwks", "[trust]")
    jwks = None
    if jwks_path:
        path = Path(jwks_path) if Path(jwks_path).is_absolute() else base / jwks_path
        try:
            jwks = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"[trust]: cannot read the JWKS {path}: {exc}") from exc
    return TrustConfig(
        client_id=_string(section, "client_id", "[trust]"),
        ods=_ods(section, "ods", "[trust]", required=False),
        jwks=jwks,
        wait_seconds=float(section.get("wait_seconds", 120.0)),
    )


def _provider(section: dict[str, Any]) -> ProviderConfig:
    listen = _string(section, "listen", "[provider]")
    return ProviderConfig(
        ods=_ods(section, "ods", "[provider]", required=False),
        transport=_string(section, "transport", "[provider]") or "fhir-rest",
        trust_ods=_ods(section, "trust_ods", "[provider]", required=False) or "RCF",
        listen=parse_listen(listen) if listen else None,
        status_token=_string(section, "status_token", "[provider]"),
        bearer_token=_string(section, "bearer_token", "[provider]"),
        wait_seconds=float(section.get("wait_seconds", 30.0)),
        ack_timeout_seconds=float(section.get("ack_timeout_seconds", 30.0)),
        order_dir=_string(section, "order_dir", "[provider]") or "orders",
        status_dir=_string(section, "status_dir", "[provider]") or "status",
    )


def load_config(path: Path | None) -> SuiteConfig:
    if path is None:
        return SuiteConfig()
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read configuration {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"configuration {path} is not valid TOML: {exc}") from exc
    unknown = set(document) - {"gateway", "trust", "provider"}
    if unknown:
        raise ConfigError(f"configuration {path}: unknown section [{sorted(unknown)[0]}]")
    base = path.resolve().parent
    try:
        return SuiteConfig(
            gateway=_gateway(document.get("gateway", {}), base),
            trust=_trust(document.get("trust", {}), base),
            provider=_provider(document.get("provider", {})),
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"configuration {path}: {exc}") from exc


def load_waivers(path: Path | None) -> dict[str, str]:
    """Waivers file (TOML): `[waivers]` with `TEST-ID = "reason"`; every waiver needs a reason."""
    if path is None:
        return {}
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read waivers {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"waivers {path} is not valid TOML: {exc}") from exc
    waivers = document.get("waivers")
    if not isinstance(waivers, dict):
        raise ConfigError(f'waivers {path}: expected a [waivers] table of TEST-ID = "reason"')
    for test_id, reason in waivers.items():
        if not isinstance(reason, str) or not reason.strip():
            raise ConfigError(f"waivers {path}: {test_id} needs a reason (a non-empty string)")
    return {str(k): str(v) for k, v in waivers.items()}
