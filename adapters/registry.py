"""The adapter registry: adapters are found by scheme through the `homecare_gateway.adapters` entry points.

    adapter = create_adapter("fhir-rest", {"base_url": "https://provider.example/fhir"})

Nothing is imported until a scheme is asked for, so a broken third-party adapter only affects the
providers that use it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import Any, cast

from pydantic import BaseModel, ValidationError

from adapters.base import Adapter
from adapters.inbound import ReportSink, StatusPoller, StatusSource

ENTRY_POINT_GROUP = "homecare_gateway.adapters"


class AdapterRegistryError(Exception):
    """Base of the registry's errors; `str()` is a message fit for an operator."""


class UnknownAdapter(AdapterRegistryError):  # noqa: N818 -- named for what it is, like KeyError
    def __init__(self, scheme: str, available: list[str]) -> None:
        self.scheme = scheme
        self.available = available
        known = ", ".join(available) or "none installed"
        super().__init__(f"No adapter is installed for scheme '{scheme}' (available: {known})")


class InvalidAdapterSettings(AdapterRegistryError):  # noqa: N818
    """The settings do not fit the adapter's `config_model`. Messages never repeat the values given,
    which may be secrets."""

    def __init__(self, scheme: str, problems: list[str]) -> None:
        self.scheme = scheme
        self.problems = problems
        super().__init__(f"Invalid settings for adapter '{scheme}': " + "; ".join(problems))


class AdapterLoadError(AdapterRegistryError):
    """The entry point exists but does not name a usable adapter class."""


def _entry_points() -> dict[str, EntryPoint]:
    return {point.name: point for point in entry_points(group=ENTRY_POINT_GROUP)}


def available_schemes() -> list[str]:
    """The schemes of every installed adapter, sorted."""
    return sorted(_entry_points())


def load_adapter_class(scheme: str) -> type[Adapter]:
    """The adapter class registered for `scheme`, checked against the interface's rules."""
    points = _entry_points()
    point = points.get(scheme)
    if point is None:
        raise UnknownAdapter(scheme, sorted(points))
    try:
        loaded = point.load()
    except (ImportError, AttributeError) as exc:
        raise AdapterLoadError(f"Adapter '{scheme}' ({point.value}) cannot be imported: {exc}") from exc
    _check_adapter_class(scheme, point.value, loaded)
    return cast(type[Adapter], loaded)


def _check_adapter_class(scheme: str, where: str, loaded: object) -> None:
    def broken(problem: str) -> AdapterLoadError:
        return AdapterLoadError(f"Adapter '{scheme}' ({where}) {problem}")

    if not inspect.isclass(loaded):
        raise broken("is not a class")
    if getattr(loaded, "scheme", None) != scheme:
        raise broken(f"declares scheme {getattr(loaded, 'scheme', None)!r}, not its entry-point name")
    config_model = getattr(loaded, "config_model", None)
    if not (inspect.isclass(config_model) and issubclass(config_model, BaseModel)):
        raise broken("has no pydantic config_model")
    if config_model.model_config.get("extra") != "forbid":
        raise broken("has a config_model that accepts unknown settings (use extra='forbid')")
    for method in ("send", "check", "aclose"):
        if not inspect.iscoroutinefunction(getattr(loaded, method, None)):
            raise broken(f"has no async method '{method}'")


def validate_settings(scheme: str, settings: Mapping[str, Any]) -> BaseModel:
    """The provider's settings parsed by the adapter's `config_model` (e.g. to check them on registration)."""
    return _parse_settings(load_adapter_class(scheme), settings)


def _parse_settings(adapter_class: type[Adapter], settings: Mapping[str, Any]) -> BaseModel:
    try:
        return adapter_class.config_model.model_validate(dict(settings))
    except ValidationError as exc:
        # Not chained: pydantic's own message repeats the values given, and some are secrets.
        raise InvalidAdapterSettings(adapter_class.scheme, _describe(exc)) from None


def _describe(error: ValidationError) -> list[str]:
    problems = []
    for item in error.errors(include_input=False, include_url=False, include_context=False):
        where = ".".join(str(part) for part in item["loc"]) or "settings"
        problems.append(f"{where}: {item['msg']}")
    return problems


def create_adapter(scheme: str, settings: Mapping[str, Any]) -> Adapter:
    """A ready adapter for one provider; call `aclose()` on it when done."""
    adapter_class = load_adapter_class(scheme)
    return adapter_class(_parse_settings(adapter_class, settings))


# --- Status in: the listeners and pollers an adapter offers (optional class methods) -------------


def create_status_poller(
    scheme: str, settings: Mapping[str, Any], *, provider_ods: str, sink: ReportSink
) -> StatusPoller | None:
    """The poller that reads this provider's status (e.g. a `csv-drop` status folder), from the
    adapter's optional `status_poller(config, *, provider_ods, sink)`; None for adapters without one."""
    adapter_class = load_adapter_class(scheme)
    hook = getattr(adapter_class, "status_poller", None)
    if hook is None:
        return None
    poller = hook(_parse_settings(adapter_class, settings), provider_ods=provider_ods, sink=sink)
    return cast(StatusPoller, poller)


def create_status_listener(
    scheme: str,
    options: Mapping[str, Any],
    *,
    sink: ReportSink,
    provider_settings: Callable[[str], Mapping[str, Any] | None],
) -> StatusSource:
    """The one listener a process runs for every provider of `scheme` (e.g. the `hl7v2-mllp` MLLP
    port), from the adapter's optional `status_listener(options, *, sink, provider_settings)`.
    `provider_settings` gives the registered settings of the scheme's provider with an ODS code."""
    adapter_class = load_adapter_class(scheme)
    hook = getattr(adapter_class, "status_listener", None)
    if hook is None:
        raise AdapterLoadError(f"Adapter '{scheme}' has no status listener")
    try:
        listener = hook(options, sink=sink, provider_settings=provider_settings)
    except ValidationError as exc:
        raise InvalidAdapterSettings(scheme, _describe(exc)) from None
    return cast(StatusSource, listener)
