"""The adapter registry: adapters found through entry points, settings validated by each adapter."""

from __future__ import annotations

from importlib.metadata import EntryPoint
from importlib.metadata import entry_points as installed_entry_points
from typing import Any

import pytest

from adapters import registry
from adapters.fhir_rest import FhirRestAdapter, FhirRestSettings
from adapters.registry import (
    ENTRY_POINT_GROUP,
    AdapterLoadError,
    InvalidAdapterSettings,
    UnknownAdapter,
    available_schemes,
    create_adapter,
    load_adapter_class,
    validate_settings,
)
from tests.adapters.sample_adapters import EchoAdapter
from tests.adapters.support import order_for

SAMPLES = "tests.adapters.sample_adapters"


@pytest.fixture
def extra_entry_points(monkeypatch: pytest.MonkeyPatch) -> None:
    """Entry points as if more adapter packages were installed next to this one."""
    extra = [
        EntryPoint("echo-test", f"{SAMPLES}:EchoAdapter", ENTRY_POINT_GROUP),
        EntryPoint("misnamed-test", f"{SAMPLES}:MisnamedAdapter", ENTRY_POINT_GROUP),
        EntryPoint("lax-test", f"{SAMPLES}:LaxAdapter", ENTRY_POINT_GROUP),
        EntryPoint("sync-test", f"{SAMPLES}:SyncAdapter", ENTRY_POINT_GROUP),
        EntryPoint("missing-test", f"{SAMPLES}:NoSuchAdapter", ENTRY_POINT_GROUP),
        EntryPoint("not-a-class-test", f"{SAMPLES}:SAMPLE_CONSTANT", ENTRY_POINT_GROUP),
    ]

    def entry_points(*, group: str) -> list[EntryPoint]:
        return [*installed_entry_points(group=group), *(point for point in extra if point.group == group)]

    monkeypatch.setattr(registry, "entry_points", entry_points)


def test_fhir_rest_is_found_through_its_entry_point() -> None:
    assert "fhir-rest" in available_schemes()
    assert load_adapter_class("fhir-rest") is FhirRestAdapter


def test_unknown_scheme_is_refused_naming_the_installed_ones() -> None:
    with pytest.raises(UnknownAdapter) as caught:
        load_adapter_class("fhir_rest")
    assert caught.value.scheme == "fhir_rest"
    assert "fhir-rest" in caught.value.available
    assert "fhir-rest" in str(caught.value)
    with pytest.raises(UnknownAdapter):
        create_adapter("carrier-pigeon", {})


@pytest.mark.anyio
async def test_create_adapter_validates_settings_with_the_config_model() -> None:
    adapter = create_adapter(
        "fhir-rest", {"base_url": "https://provider.example/fhir/R4/", "timeout_seconds": 3}
    )
    try:
        assert isinstance(adapter, FhirRestAdapter)
        assert isinstance(adapter.config, FhirRestSettings)
        assert adapter.config.process_message_url == "https://provider.example/fhir/R4/$process-message"
        assert adapter.config.timeout_seconds == 3
        assert adapter.config.verify_tls is True
    finally:
        await adapter.aclose()


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({}, "base_url: Field required"),
        ({"base_url": "ftp://provider.example/fhir"}, "base_url: URL scheme should be 'http' or 'https'"),
        (
            {"base_url": "https://provider.example", "base_ur1": "x"},
            "base_ur1: Extra inputs are not permitted",
        ),
        ({"base_url": "https://provider.example", "timeout_seconds": 0}, "timeout_seconds"),
        (
            {
                "base_url": "https://provider.example",
                "token_url": "https://auth.example/token",
                "client_id": "a",
            },
            "token_url, client_id and client_secret together",
        ),
        (
            {
                "base_url": "https://provider.example",
                "bearer_token": "t",
                "token_url": "https://auth.example/token",
                "client_id": "a",
                "client_secret": "b",
            },
            "either bearer_token or client credentials",
        ),
    ],
)
def test_bad_settings_are_refused_with_a_clear_message(settings: dict[str, Any], problem: str) -> None:
    with pytest.raises(InvalidAdapterSettings) as caught:
        validate_settings("fhir-rest", settings)
    assert caught.value.scheme == "fhir-rest"
    assert problem in str(caught.value)


def test_invalid_settings_never_repeat_the_values_given() -> None:
    secret = "do-not-print-this-secret"
    with pytest.raises(InvalidAdapterSettings) as caught:
        create_adapter(
            "fhir-rest",
            {"base_url": f"ftp://{secret}.example", "client_secret": secret, "timeout_seconds": secret},
        )
    assert secret not in str(caught.value)
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


def test_secrets_in_settings_are_masked_in_repr() -> None:
    settings = validate_settings(
        "fhir-rest", {"base_url": "https://p.example", "bearer_token": "s3cr3t-token"}
    )
    assert "s3cr3t-token" not in repr(settings)


@pytest.mark.anyio
@pytest.mark.usefixtures("extra_entry_points")
async def test_an_adapter_shipped_as_its_own_package_is_loaded_by_its_entry_point(
    builder: Any,
) -> None:
    assert {"echo-test", "fhir-rest"} <= set(available_schemes())
    adapter = create_adapter("echo-test", {"greeting": "hi"})
    assert isinstance(adapter, EchoAdapter)
    result = await adapter.send(order_for(builder.build()), idempotency_key="k-1")
    assert result.is_delivered
    assert result.detail == "hi k-1"
    await adapter.aclose()
    assert adapter.closed


@pytest.mark.usefixtures("extra_entry_points")
@pytest.mark.parametrize(
    ("scheme", "problem"),
    [
        ("misnamed-test", "declares scheme 'something-else', not its entry-point name"),
        ("lax-test", "accepts unknown settings"),
        ("sync-test", "no async method 'check'"),
        ("missing-test", "cannot be imported"),
        ("not-a-class-test", "is not a class"),
    ],
)
def test_a_broken_adapter_package_is_refused_when_loaded(scheme: str, problem: str) -> None:
    with pytest.raises(AdapterLoadError) as caught:
        load_adapter_class(scheme)
    assert problem in str(caught.value)


@pytest.mark.parametrize(
    ("scheme", "adapter_class", "settings"),
    [
        (
            "hl7v2-mllp",
            "adapters.hl7v2_mllp:Hl7v2MllpAdapter",
            {"host": "mllp.provider.example", "port": "2575"},
        ),
        ("csv-drop", "adapters.csv_drop:CsvDropAdapter", {"order_dir": "/srv/out", "status_dir": "/srv/in"}),
        ("pull", "adapters.pull:PullAdapter", {}),
    ],
)
@pytest.mark.anyio
async def test_every_built_in_scheme_loads_through_its_entry_point(
    scheme: str, adapter_class: str, settings: dict[str, str]
) -> None:
    module, _, name = adapter_class.partition(":")
    loaded = load_adapter_class(scheme)
    assert loaded.__module__.startswith(f"{module}.")
    assert loaded.__name__ == name and loaded.scheme == scheme
    adapter = create_adapter(scheme, settings)
    await adapter.aclose()


@pytest.mark.parametrize(
    ("scheme", "settings", "problem"),
    [
        ("hl7v2-mllp", {"host": "h"}, "port: Field required"),
        ("hl7v2-mllp", {"host": "h", "port": "70000"}, "port"),
        ("hl7v2-mllp", {"host": "h", "port": 1, "tls_server_name": "x"}, "tls is off"),
        (
            "hl7v2-mllp",
            {"host": "h", "port": 1, "inbound_allowed_addresses": "10.0.0.0/8,nonsense"},
            "inbound",
        ),
        ("hl7v2-mllp", {"host": "h", "port": 1, "processing_id": "X"}, "processing_id"),
        ("csv-drop", {"order_dir": "/a", "status_dir": "/a"}, "must differ"),
        ("csv-drop", {"order_dir": "/a", "status_dir": "/b", "order_format": "xml"}, "order_format"),
        (
            "csv-drop",
            {"order_dir": "/a", "status_dir": "/b", "sftp_host": "h"},
            "only used with transport=sftp",
        ),
        ("pull", {"lease_seconds": "1"}, "lease_seconds"),
        ("pull", {"nonsense": "1"}, "Extra inputs are not permitted"),
    ],
)
def test_each_new_adapter_refuses_bad_settings_clearly(
    scheme: str, settings: dict[str, Any], problem: str
) -> None:
    with pytest.raises(InvalidAdapterSettings) as caught:
        validate_settings(scheme, settings)
    assert problem in str(caught.value)


def test_hl7v2_settings_from_the_command_line_are_read_as_the_cli_passes_them() -> None:
    settings = validate_settings(
        "hl7v2-mllp",
        {
            "host": "h",
            "port": "2575",
            "ack_timeout_seconds": "5",
            "inbound_allowed_addresses": "10.1.0.0/16, 192.0.2.7",
        },
    )
    assert settings.port == 2575  # type: ignore[attr-defined]
    assert settings.allows("10.1.2.3", None) and settings.allows("192.0.2.7", None)  # type: ignore[attr-defined]
    assert not settings.allows("10.2.0.1", None)  # type: ignore[attr-defined]
    assert settings.allows("::ffff:192.0.2.7", None)  # type: ignore[attr-defined]
