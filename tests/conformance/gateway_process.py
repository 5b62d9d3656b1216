"""Our gateway as a process of its own, started the way `homecare-gateway serve` starts it (settings
from the environment, `gateway.server.run_server`), with or without a test fault.

Processes are forked from a multiprocessing fork server that imported the gateway once (this
module is its preload), so each process starts in a fraction of a second of CPU instead of
importing everything again; each is still a process of its own, with its own memory, so the fault
one of them installs cannot reach another.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.context import ForkServerContext
from pathlib import Path

import httpx

import gateway.app  # preloaded by the fork server: what makes a start cheap
import gateway.asgi  # noqa: F401
from gateway.server import run_server

START_SECONDS = 60.0  # the machine is shared: a start can be slow, and must not fail a test
STOP_SECONDS = 15.0


def _fork_server() -> ForkServerContext:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context


def serve(environment: Mapping[str, str], port: int, log: str) -> None:
    """The child: its settings are exactly `environment`; its output goes to the file `log`."""
    output = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(output, 1)
    os.dup2(output, 2)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    os.environ.clear()
    os.environ.update(environment)
    os.environ.setdefault("HOMECARE_ADMIN_LISTEN", "off")
    run_server(host="127.0.0.1", port=port, workers=1)


@dataclass(frozen=True)
class GatewayProcess:
    url: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


def _wait_until_ready(process: multiprocessing.process.BaseProcess, started: GatewayProcess) -> None:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if not process.is_alive():
            raise RuntimeError(f"the gateway exited ({process.exitcode}): {started.output()[-2000:]}")
        try:
            if httpx.get(f"{started.url}/fhir/metadata", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"the gateway did not start in {START_SECONDS:.0f} s: {started.output()[-2000:]}")


@contextmanager
def gateway_process(environment: Mapping[str, str], port: int, log: Path) -> Iterator[GatewayProcess]:
    """A gateway process with exactly these settings, listening on `port` until the block ends."""
    process = _fork_server().Process(
        target=serve, args=(dict(environment), port, str(log)), name=f"gateway-{port}", daemon=True
    )
    started = GatewayProcess(f"http://127.0.0.1:{port}", log)
    process.start()
    try:
        _wait_until_ready(process, started)
        yield started
    finally:
        process.terminate()
        process.join(STOP_SECONDS)
        if process.is_alive():
            process.kill()
            process.join()
