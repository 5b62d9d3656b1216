"""The Dockerfile and the compose file, checked without Docker: the services, their commands, their
healthchecks (each names a route the process really serves, on the port it really listens on), the
restart policy, and settings from an env file whose committed example holds no real secret."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from fastapi.routing import iter_route_contexts
from typer.main import get_command

from gateway.api.metrics import admin_app
from gateway.app import create_app
from gateway.cli import app as cli_app
from gateway.clock import system_clock
from gateway.settings import Settings, listen_address
from gateway.store.db import Database

DOCKER = Path(__file__).resolve().parents[1] / "docker"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = yaml.safe_load((DOCKER / "compose.yaml").read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


def api_paths() -> set[str]:
    app = create_app(Settings(data_dir=Path(tempfile.mkdtemp()), run_dispatcher=False))
    paths = {str(route.path) for route in iter_route_contexts(app.routes)}
    app.state.services.db.dispose()
    return paths


def admin_paths() -> set[str]:
    database = Database(f"sqlite:///{Path(tempfile.mkdtemp()) / 'gateway.db'}")
    paths = {str(getattr(route, "path", "")) for route in admin_app(database, system_clock).routes}
    database.dispose()
    return paths


def probed_url(test: list[str]) -> str:
    """The URL a healthcheck command opens."""
    (url,) = re.findall(r"https?://[^'\"\s]+", " ".join(test))
    return url


def served_port(service: dict[str, Any]) -> dict[str, int]:
    """The port of each listener of a gateway service: the API's from `serve --port`, the admin
    listener's from HOMECARE_ADMIN_LISTEN."""
    ports: dict[str, int] = {}
    command = service["command"]
    if "serve" in command:
        ports["api"] = int(command[command.index("--port") + 1])
    admin = listen_address(service["environment"]["HOMECARE_ADMIN_LISTEN"])
    assert admin is not None
    ports["admin"] = admin[1]
    return ports


def test_the_services_are_postgres_an_api_and_a_worker(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"postgres", "api", "worker"}
    assert services["api"]["command"][:2] == ["homecare-gateway", "serve"]
    assert services["worker"]["command"] == ["homecare-gateway", "worker"]
    # The API leaves sending to the worker.
    assert services["api"]["environment"]["HOMECARE_RUN_DISPATCHER"] == "false"
    commands = {name for name in get_command(cli_app).commands}  # type: ignore[attr-defined]
    assert {"serve", "worker", "clients", "providers", "keys"} <= commands
    for name in ("api", "worker"):
        depends = services[name]["depends_on"]
        assert depends["postgres"]["condition"] == "service_healthy"
    assert services["worker"]["depends_on"]["api"]["condition"] == "service_healthy"


def test_every_service_restarts_and_has_a_healthcheck(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        assert service["restart"] == "unless-stopped", name
        assert service["healthcheck"]["test"], name


def test_the_healthchecks_name_routes_the_processes_serve(compose: dict[str, Any]) -> None:
    services = compose["services"]
    api_url = urlsplit(probed_url(services["api"]["healthcheck"]["test"]))
    assert api_url.path == "/ready" and api_url.path in api_paths()
    assert api_url.port == served_port(services["api"])["api"]
    worker_url = urlsplit(probed_url(services["worker"]["healthcheck"]["test"]))
    assert worker_url.path in admin_paths()
    assert worker_url.port == served_port(services["worker"])["admin"]
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])


def test_the_dockerfile_healthcheck_probes_the_liveness_route() -> None:
    dockerfile = (DOCKER / "Dockerfile").read_text(encoding="utf-8")
    healthcheck = re.search(r"^HEALTHCHECK .*?CMD (\[.*?\])$", dockerfile, re.M | re.S)
    assert healthcheck is not None
    url = urlsplit(probed_url([healthcheck.group(1)]))
    assert url.path == "/health" and url.path in api_paths()
    command = re.search(r"^CMD (\[.*\])$", dockerfile, re.M)
    assert command is not None
    served = yaml.safe_load(command.group(1))
    assert served[:2] == ["homecare-gateway", "serve"]
    assert url.port == int(served[served.index("--port") + 1])


def test_settings_and_secrets_come_from_an_env_file(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        assert service["env_file"] == ["gateway.env"], name
        inline = service.get("environment", {})
        assert not any("PASSWORD" in key or "TOKEN" in key or key == "DATABASE_URL" for key in inline), name
    example = (DOCKER / "gateway.env.example").read_text(encoding="utf-8")
    values = dict(
        line.split("=", 1) for line in example.splitlines() if line.strip() and not line.startswith("#")
    )
    for key in ("POSTGRES_PASSWORD", "DATABASE_URL", "HOMECARE_METRICS_TOKEN", "HOMECARE_PUBLIC_BASE_URL"):
        assert key in values, key
    assert values["POSTGRES_PASSWORD"] == values["HOMECARE_METRICS_TOKEN"] == "change-me"
    assert ":change-me@postgres:" in values["DATABASE_URL"]
    ignored = (DOCKER.parent / ".gitignore").read_text(encoding="utf-8").splitlines()
    assert "docker/gateway.env" in ignored
    # Every gateway setting in the example is one the gateway knows.
    known = {f"HOMECARE_{name.upper()}" for name in Settings.model_fields}
    settings = {key for key in values if key.startswith("HOMECARE_")}
    assert settings <= known, settings - known


def test_metrics_are_never_published_outside_the_compose_network(compose: dict[str, Any]) -> None:
    for name in ("api", "worker"):
        service = compose["services"][name]
        admin = served_port(service)["admin"]
        assert all(str(admin) not in str(published) for published in service.get("ports", [])), name
    assert compose["services"]["api"]["ports"] == ["8000:8000"]
