"""Operational endpoints: `/health` and `/ready` on the API, unauthenticated and data-free; `/metrics`
only on the admin listener (loopback by default, optionally with a scraper token), which `serve`
and `worker` start; `/docs` served with Swagger UI's assets from a package, naming no other host."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
import pytest

from gateway.app import create_app
from gateway.server import AdminListener
from gateway.settings import Settings
from gateway.store.db import Database
from tests.support import RunningServer, free_port
from tests.test_cli_errors import clean_environment, running


def test_health_and_ready_answer_without_a_token(server: RunningServer) -> None:
    for path, word in (("/health", "alive"), ("/ready", "ready")):
        answer = httpx.get(f"{server.base_url}{path}")
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"].startswith("application/fhir+json")
        assert answer.json() == {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "information", "code": "informational", "diagnostics": word}],
        }


@contextmanager
def app_on(database: Database, tmp_path: Path, **settings: float) -> Iterator[RunningServer]:
    app = create_app(
        Settings(
            data_dir=tmp_path,
            run_dispatcher=False,
            audit_seal_seconds=0,
            kpi_fold_seconds=0,
            poll_status_folders=False,
            **settings,
        ),
        db=database,
    )
    with RunningServer(app) as running:
        yield running


def assert_not_ready(base_url: str) -> None:
    health = httpx.get(f"{base_url}/health", timeout=10)
    assert health.status_code == 200, "liveness does not depend on the database"
    answer = httpx.get(f"{base_url}/ready", timeout=10)
    assert answer.status_code == 503, answer.text
    assert answer.headers["retry-after"] == "5"
    (issue,) = answer.json()["issue"]
    assert issue["severity"] == "error"
    assert issue["code"] == "transient"
    assert "database" in issue["diagnostics"]


def test_ready_is_503_when_the_database_refuses_connections(tmp_path: Path) -> None:
    nobody = free_port()  # nothing listens there
    database = Database(f"postgresql://gateway@127.0.0.1:{nobody}/gateway", pool_size=1)
    with app_on(database, tmp_path) as running:
        assert_not_ready(running.base_url)
    database.dispose()


def test_ready_is_503_within_its_timeout_when_the_database_never_answers(tmp_path: Path) -> None:
    """A server that accepts the connection and says nothing (a hung database): /ready gives up after
    HOMECARE_READY_TIMEOUT_SECONDS instead of hanging with it."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        database = Database(f"postgresql://gateway@127.0.0.1:{port}/gateway?connect_timeout=30", pool_size=1)
        with app_on(database, tmp_path, ready_timeout_seconds=0.5) as running:
            assert_not_ready(running.base_url)
    database.dispose()


def test_metrics_are_not_on_the_public_api(server: RunningServer) -> None:
    answer = httpx.get(f"{server.base_url}/metrics")
    assert answer.status_code == 404
    assert "homecare_" not in answer.text
    assert "/metrics" not in httpx.get(f"{server.base_url}/openapi.json").json()["paths"]


def test_the_admin_listener_is_on_loopback_by_default() -> None:
    assert Settings().admin_address == ("127.0.0.1", 9464)
    assert Settings(admin_listen="off").admin_address is None


def test_the_admin_listener_serves_metrics(database: Database, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, admin_listen="127.0.0.1:0")
    settings = settings.model_copy(
        update={"database_url": database.url.render_as_string(hide_password=False)}
    )
    with AdminListener(settings) as admin:
        assert admin.url is not None and urlsplit(admin.url).hostname == "127.0.0.1"
        answer = httpx.get(f"{admin.url}/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    assert "homecare_outbox_depth" in answer.text


def test_a_scraper_token_guards_the_metrics(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, admin_listen="127.0.0.1:0", metrics_token="scrape-me")
    Database(settings.resolved_database_url, pool_size=1).migrate()
    with AdminListener(settings) as admin:
        assert httpx.get(f"{admin.url}/metrics").status_code == 401
        wrong = httpx.get(f"{admin.url}/metrics", headers={"Authorization": "Bearer scrape-you"})
        assert wrong.status_code == 401
        right = httpx.get(f"{admin.url}/metrics", headers={"Authorization": "Bearer scrape-me"})
        assert right.status_code == 200
        assert "homecare_outbox_depth" in right.text


def test_the_admin_listener_refuses_a_taken_port_in_words(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        taken = holder.getsockname()[1]
        settings = Settings(data_dir=tmp_path, admin_listen=f"127.0.0.1:{taken}")
        with pytest.raises(Exception, match=r"HOMECARE_ADMIN_LISTEN.*already in use.*--admin-listen"):
            AdminListener(settings).__enter__()


def test_serve_and_a_worker_each_start_an_admin_listener(tmp_path: Path) -> None:
    environment = clean_environment(tmp_path)
    port, serve_admin, worker_admin = free_port(), free_port(), free_port()
    serve_metrics = f"http://127.0.0.1:{serve_admin}/metrics"
    worker_metrics = f"http://127.0.0.1:{worker_admin}/metrics"
    with running(
        "serve",
        "--port",
        str(port),
        "--admin-listen",
        f"127.0.0.1:{serve_admin}",
        env=environment,
        urls=(serve_metrics, f"http://127.0.0.1:{port}/health"),
    ):
        assert "homecare_outbox_depth" in httpx.get(serve_metrics).text
        assert httpx.get(f"http://127.0.0.1:{port}/metrics").status_code == 404
        assert httpx.get(f"http://127.0.0.1:{port}/ready").status_code == 200
        with running(
            "worker", "--admin-listen", f"127.0.0.1:{worker_admin}", env=environment, urls=(worker_metrics,)
        ):
            assert "homecare_outbox_depth" in httpx.get(worker_metrics).text


def test_the_docs_name_no_other_host_and_their_assets_load(server: RunningServer) -> None:
    page = httpx.get(f"{server.base_url}/docs")
    assert page.status_code == 200
    html = page.text
    assert "Swagger UI" in html or "swagger-ui" in html
    external = re.findall(r"(?:https?:)?//[A-Za-z0-9.-]+", html)
    assert external == [], f"/docs names another host: {external}"
    assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html) + re.findall(
        r"""url:\s*['"]([^'"]+)['"]""", html
    )
    assert any(a.endswith("swagger-ui-bundle.js") for a in assets)
    assert any(a.endswith("swagger-ui.css") for a in assets)
    for asset in assets:
        loaded = httpx.get(urljoin(f"{server.base_url}/docs", asset))
        assert loaded.status_code == 200, asset
        assert len(loaded.content) > 100, asset
    script = httpx.get(urljoin(f"{server.base_url}/docs", next(a for a in assets if a.endswith(".js"))))
    assert "javascript" in script.headers["content-type"]
