"""Common mistakes at the command line: one line that says what to do, exit 1, no traceback.

Each runs the real `homecare-gateway` in a subprocess, as a person would.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from gateway.store.db import Database
from gateway.store.providers import list_providers
from tests.support import free_port


def clean_environment(data_dir: Path, **settings: str) -> dict[str, str]:
    """The caller's environment without gateway settings, plus a data folder and `settings`."""
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("HOMECARE_") and name != "DATABASE_URL"
    }
    return {**environment, "HOMECARE_DATA_DIR": str(data_dir), "HOMECARE_ADMIN_LISTEN": "off", **settings}


def gateway(*arguments: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *arguments],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def assert_one_line_of_advice(result: subprocess.CompletedProcess[str], *words: str) -> str:
    assert result.returncode == 1, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def test_a_bad_setting_names_its_environment_variable(tmp_path: Path) -> None:
    result = gateway("db", "upgrade", env=clean_environment(tmp_path, HOMECARE_ENVIRONMENT="prod"))
    assert_one_line_of_advice(result, "HOMECARE_ENVIRONMENT", "'development' or 'production'")


def test_an_unreachable_database_says_to_check_database_url(tmp_path: Path) -> None:
    url = f"postgresql://nobody@127.0.0.1:{free_port()}/none"
    result = gateway("db", "upgrade", env=clean_environment(tmp_path, DATABASE_URL=url))
    assert_one_line_of_advice(result, "DATABASE_URL")


def test_a_database_url_that_is_not_one_says_what_one_looks_like(tmp_path: Path) -> None:
    result = gateway("providers", "list", env=clean_environment(tmp_path, DATABASE_URL="not a url"))
    assert_one_line_of_advice(result, "DATABASE_URL", "postgresql://")


def test_a_port_in_use_says_to_choose_another_with_port(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = gateway("serve", "--port", str(port), env=clean_environment(tmp_path))
    assert_one_line_of_advice(result, str(port), "--port")


def test_a_missing_key_file_says_key(tmp_path: Path) -> None:
    result = gateway(
        *("token", "--client-id", "epr", "--key", str(tmp_path / "absent.pem")),
        *("--token-url", "http://127.0.0.1:9/auth/token"),
        env=clean_environment(tmp_path),
    )
    assert_one_line_of_advice(result, "absent.pem", "--key")


def test_a_gateway_that_does_not_answer_when_fetching_a_token(tmp_path: Path) -> None:
    environment = clean_environment(tmp_path)
    made = gateway("clients", "keygen", "--out", str(tmp_path / "epr"), "--alg", "ES256", env=environment)
    assert made.returncode == 0, made.stderr
    token_url = f"http://127.0.0.1:{free_port()}/auth/token"
    result = gateway(
        *("token", "--client-id", "epr", "--key", str(tmp_path / "epr.pem"), "--token-url", token_url),
        env=environment,
    )
    assert_one_line_of_advice(result, token_url, "is it running", "--token-url")


def test_production_without_a_signing_key_says_keys_rotate(tmp_path: Path) -> None:
    environment = clean_environment(
        tmp_path,
        HOMECARE_ENVIRONMENT="production",
        HOMECARE_SIGNING_KEYS_DIR=str(tmp_path / "keys"),
        HOMECARE_PUBLIC_BASE_URL="https://gateway.example.nhs.uk",
    )
    result = gateway("serve", "--port", str(free_port()), env=environment)
    assert_one_line_of_advice(result, "keys rotate")
    unset = gateway("serve", "--port", str(free_port()), env={**environment, "HOMECARE_SIGNING_KEYS_DIR": ""})
    assert_one_line_of_advice(unset, "HOMECARE_SIGNING_KEYS_DIR")


@contextmanager
def running(
    *arguments: str,
    env: dict[str, str],
    port: int | None = None,
    urls: tuple[str, ...] = (),
    cwd: Path | None = None,
) -> Iterator[subprocess.Popen[str]]:
    """A long-running command, until it answers on `port` (its FHIR metadata) and at every one of
    `urls`; interrupted (as Ctrl-C) afterwards."""
    if port is not None:
        urls = (f"http://127.0.0.1:{port}/fhir/metadata", *urls)
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", *arguments],
        env=env,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                for url in urls:
                    httpx.get(url, timeout=1)
                break
            except httpx.TransportError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(
                        f"did not start: {process.stderr.read() if process.stderr else ''}"
                    ) from None
                time.sleep(0.2)
        yield process
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_serve_on_another_port_puts_that_port_in_the_token_audience(tmp_path: Path) -> None:
    port = free_port()
    with running("serve", "--port", str(port), env=clean_environment(tmp_path), port=port):
        published = httpx.get(f"http://127.0.0.1:{port}/.well-known/smart-configuration").json()
    assert published["token_endpoint"] == f"http://127.0.0.1:{port}/auth/token"


@pytest.mark.slow
def test_a_second_demo_refuses_before_changing_anything(tmp_path: Path) -> None:
    environment = clean_environment(tmp_path)
    port = free_port()
    with running("demo", "--port", str(port), "--prescriptions", "0", env=environment, port=port):
        database = Database(f"sqlite:///{tmp_path / 'gateway.db'}", pool_size=1)
        with database.read() as session:
            before = {p.ods_code: p.settings for p in list_providers(session)}
        second = gateway("demo", "--port", str(free_port()), "--prescriptions", "0", env=environment)
        same_port = gateway("demo", "--port", str(port), "--prescriptions", "0", env=environment)
        with database.read() as session:
            after = {p.ods_code: p.settings for p in list_providers(session)}
        database.dispose()
    assert_one_line_of_advice(second, "Another demo", "HOMECARE_DATA_DIR")
    assert_one_line_of_advice(same_port, "Another demo")
    assert before and after == before, "the running demo's providers still point at its simulators"


def test_a_worker_whose_mllp_address_is_taken_says_which_setting_to_change(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = f"127.0.0.1:{holder.getsockname()[1]}"
        result = gateway("worker", env=clean_environment(tmp_path, HOMECARE_MLLP_LISTEN=taken))
    assert_one_line_of_advice(result, f"HOMECARE_MLLP_LISTEN={taken}", "cannot listen")


def test_an_mllp_address_without_a_port_is_a_bad_setting(tmp_path: Path) -> None:
    result = gateway("worker", env=clean_environment(tmp_path, HOMECARE_MLLP_LISTEN="0.0.0.0"))
    assert_one_line_of_advice(result, "HOMECARE_MLLP_LISTEN", "host:port")
