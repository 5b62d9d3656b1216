"""A homecare provider that speaks the `fhir-rest` protocol on a real port, for the demo and for tests.

    with SimulatorServer(ods="VNCEL", seed=1, step_delay_seconds=0.01) as provider:
        adapter = create_adapter("fhir-rest", {"base_url": provider.base_url})
        ...
        provider.orders(), provider.receipt_counts(), provider.status_log()

or from a shell: `python -m adapters.fhir_rest.simulator --port 8101 --ods VNCEL --seed 1`.

Routes (one table, below):

| route                                   | does                                                    |
|-----------------------------------------|---------------------------------------------------------|
| `POST /fhir/$process-message`           | takes an order (see `simulated_provider.ProviderSimulator`) |
| `GET /fhir/metadata`                    | a CapabilityStatement (503 when `down`)                 |
| `POST /oauth2/token`                    | client-credentials tokens, when `client_id` is set      |
| `GET/POST /_simulator/config`           | read or change behaviour (JSON; POST a partial object)  |
| `GET /_simulator/orders`                | accepted orders with item statuses and receipt counts   |
| `GET /_simulator/orders/{id}/message`   | the exact bytes received for a prescription ID          |
| `GET /_simulator/receipts`              | every request and its outcome, plus counts per key      |
| `GET /_simulator/status-log`            | every status Task produced, and whether it was posted   |
| `POST /_simulator/reset`                | forget orders, receipts and reports (config stays)      |
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Any
from urllib.parse import parse_qsl

import orjson
import uvicorn
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from adapters.fhir_rest.simulated_provider import (
    AcceptedOrder,
    Answer,
    ProviderSimulator,
    Receipt,
    StatusReport,
)
from adapters.fhir_rest.simulator_config import SimulatorConfig
from adapters.simulation.lifecycle import SimulationTime

__all__ = [
    "AcceptedOrder",
    "ProviderSimulator",
    "Receipt",
    "SimulatorConfig",
    "SimulatorServer",
    "StatusReport",
    "create_simulator_app",
    "main",
    "run_simulator",
]


def _json(content: Any, status_code: int = 200, media_type: str = "application/json") -> Response:
    return Response(orjson.dumps(content), status_code=status_code, media_type=media_type)


def _render(answer: Answer) -> Response:
    return Response(
        orjson.dumps(answer.body),
        status_code=answer.status_code,
        headers=answer.headers,
        media_type=answer.media_type,
    )


def _order_json(order: AcceptedOrder) -> dict[str, Any]:
    shown = asdict(order)
    shown.pop("message")
    shown["received_at"] = order.received_at.isoformat()
    shown["message_bytes"] = len(order.message)
    return shown


def _receipt_json(receipt: Receipt) -> dict[str, Any]:
    return {**asdict(receipt), "received_at": receipt.received_at.isoformat()}


def _report_json(report: StatusReport) -> dict[str, Any]:
    return {**asdict(report), "posted": report.posted}


def create_simulator_app(simulator: ProviderSimulator) -> Starlette:
    """The simulator as an ASGI app; its lifespan starts and stops the lifecycle machinery.

    Long on purpose: the handlers are small closures over `simulator`, kept beside the one route
    table at the end so the module docstring's table and the code read the same."""

    async def process_message(request: Request) -> Response:
        try:
            body = await request.body()
        except ClientDisconnect:  # the sender went away mid-request (e.g. a killed dispatcher)
            return Response(status_code=400)
        return _render(await simulator.receive(body, dict(request.headers)))

    async def metadata(request: Request) -> Response:
        return _render(simulator.metadata())

    async def token(request: Request) -> Response:
        form = dict(parse_qsl((await request.body()).decode("utf-8", "replace")))
        return _render(simulator.issue_token(request.headers.get("authorization"), form))

    async def read_config(request: Request) -> Response:
        return _json(simulator.config.public())

    async def change_config(request: Request) -> Response:
        try:
            changes = orjson.loads(await request.body() or b"{}")
            if not isinstance(changes, dict):
                return _json({"error": "send a JSON object of settings to change"}, 400)
            return _json(simulator.configure(**changes).public())
        except orjson.JSONDecodeError:
            return _json({"error": "the body is not valid JSON"}, 400)
        except ValidationError as exc:
            problems = exc.errors(include_input=False, include_url=False, include_context=False)
            return _json({"error": "invalid settings", "problems": problems}, 422)

    async def orders(request: Request) -> Response:
        return _json([_order_json(order) for order in simulator.orders()])

    async def order_message(request: Request) -> Response:
        order = simulator.order(request.path_params["short_form_id"])
        if order is None:
            return _json({"error": "no such order"}, 404)
        return Response(order.message, media_type="application/fhir+json")

    async def receipts(request: Request) -> Response:
        return _json(
            {
                "receipts": [_receipt_json(receipt) for receipt in simulator.receipts()],
                "counts": simulator.receipt_counts(),
            }
        )

    async def status_log(request: Request) -> Response:
        return _json([_report_json(report) for report in simulator.status_log()])

    async def reset(request: Request) -> Response:
        simulator.reset()
        return Response(status_code=204)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await simulator.start()
        try:
            yield
        finally:
            await simulator.stop()

    routes = [
        Route("/fhir/$process-message", process_message, methods=["POST"]),
        Route("/fhir/metadata", metadata, methods=["GET"]),
        Route("/oauth2/token", token, methods=["POST"]),
        Route("/_simulator/config", read_config, methods=["GET"]),
        Route("/_simulator/config", change_config, methods=["POST"]),
        Route("/_simulator/orders", orders, methods=["GET"]),
        Route("/_simulator/orders/{short_form_id}/message", order_message, methods=["GET"]),
        Route("/_simulator/receipts", receipts, methods=["GET"]),
        Route("/_simulator/status-log", status_log, methods=["GET"]),
        Route("/_simulator/reset", reset, methods=["POST"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


def _server(simulator: ProviderSimulator, host: str) -> uvicorn.Server:
    config = uvicorn.Config(
        create_simulator_app(simulator), host=host, log_config=None, access_log=False, lifespan="on"
    )
    return uvicorn.Server(config)


class SimulatorServer:
    """The simulator on a loopback port (a free one by default), served from a background thread.

    `start()` returns the FHIR base URL to give the `fhir-rest` adapter as `base_url`. Extra keyword
    arguments are `SimulatorConfig` settings (e.g. `step_delay_seconds=0.01, reject_rate=0.1`).
    """

    def __init__(
        self,
        ods: str = "VNCEL",
        *,
        seed: int = 0,
        host: str = "127.0.0.1",
        port: int = 0,
        config: SimulatorConfig | None = None,
        time_source: SimulationTime | None = None,
        status_token_source: Callable[[], str] | None = None,
        **settings: Any,
    ) -> None:
        if config is None:
            config = SimulatorConfig(ods=ods, seed=seed, **settings)
        elif settings:
            config = config.updated(settings)
        self.simulator = ProviderSimulator(
            config, time_source=time_source, status_token_source=status_token_source
        )
        self.host = host
        self._port = port
        self._socket: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._socket is None:
            raise RuntimeError("the simulator has not been started")
        return int(self._socket.getsockname()[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The FHIR base: orders go to `{base_url}/$process-message`."""
        return f"{self.url}/fhir"

    @property
    def control_url(self) -> str:
        return f"{self.url}/_simulator"

    def start(self, timeout: float = 15.0) -> str:
        if self._thread is not None:
            raise RuntimeError("the simulator is already running")
        self._socket = _bind(self.host, self._port)
        self._server = _server(self.simulator, self.host)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._socket]},
            name=f"provider-simulator-{self.simulator.config.ods}-{self.port}",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                self.stop()
                raise RuntimeError("the provider simulator did not start")
            time.sleep(0.01)
        return self.base_url

    def stop(self, timeout: float = 10.0) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=timeout)
        if self._socket is not None:
            self._socket.close()
        self._server = None
        self._thread = None

    def __enter__(self) -> SimulatorServer:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    # The simulator's reads and controls, for convenience.

    def configure(self, **changes: Any) -> SimulatorConfig:
        return self.simulator.configure(**changes)

    def reset(self) -> None:
        self.simulator.reset()

    def orders(self) -> list[AcceptedOrder]:
        return self.simulator.orders()

    def order(self, short_form_id: str) -> AcceptedOrder | None:
        return self.simulator.order(short_form_id)

    def receipts(self) -> list[Receipt]:
        return self.simulator.receipts()

    def receipt_counts(self) -> dict[str, int]:
        return self.simulator.receipt_counts()

    def status_log(self) -> list[StatusReport]:
        return self.simulator.status_log()

    def tokens_issued(self) -> int:
        return self.simulator.tokens_issued()


def run_simulator(config: SimulatorConfig, *, host: str = "127.0.0.1", port: int = 8101) -> None:
    """Serve the simulator in this thread until interrupted (Ctrl-C)."""
    simulator = ProviderSimulator(config)
    sock = _bind(host, port)
    shown_host = f"[{host}]" if ":" in host else host
    url = f"http://{shown_host}:{sock.getsockname()[1]}"
    sys.stdout.write(
        f"Homecare provider simulator {config.ods} (fhir-rest) listening on {url}/fhir\n"
        f"  orders:      POST {url}/fhir/$process-message\n"
        f"  control API: {url}/_simulator/config | orders | receipts | status-log | reset\n"
        f"  status Tasks {'POSTed to ' + str(config.status_url) if config.status_url else 'logged only'}\n"
    )
    sys.stdout.flush()
    try:
        _server(simulator, host).run(sockets=[sock])
    finally:
        sock.close()


def _arguments(argv: Sequence[str] | None) -> tuple[argparse.Namespace, dict[str, Any]]:
    parser = argparse.ArgumentParser(
        prog="python -m adapters.fhir_rest.simulator",
        description="A homecare provider speaking FHIR $process-message, for demos and tests.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8101, help="0 picks a free port")
    parser.add_argument("--ods", default="VNCEL", help="the provider's ODS code")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--status-url", help="POST each status Task here (otherwise only logged)")
    parser.add_argument("--status-token", help="bearer token for --status-url")
    parser.add_argument("--reject-rate", type=float, help="share of orders refused at intake")
    parser.add_argument("--delay-seconds", type=float, help="wait before answering each order")
    parser.add_argument("--fail-next", type=int, help="answer the next N orders with 500")
    parser.add_argument("--down", action="store_true", default=None, help="answer 503 until changed")
    parser.add_argument("--step-delay-seconds", type=float, help="wait before each status change")
    parser.add_argument("--lifecycle-reject-rate", type=float, help="share of items rejected on review")
    parser.add_argument("--query-rate", type=float, help="share of items queried")
    parser.add_argument("--delivery-failure-rate", type=float, help="chance a delivery attempt fails")
    parser.add_argument("--max-delivery-attempts", type=int)
    parser.add_argument("--required-token", help="accept only this bearer token")
    parser.add_argument("--client-id", help="serve /oauth2/token for this client")
    parser.add_argument("--client-secret")
    parser.add_argument("--no-lifecycle", dest="lifecycle", action="store_false", default=None)
    options = parser.parse_args(argv)
    settings = {
        name: value
        for name, value in vars(options).items()
        if name not in ("host", "port") and value is not None
    }
    return options, settings


def main(argv: Sequence[str] | None = None) -> int:
    options, settings = _arguments(argv)
    try:
        config = SimulatorConfig(**settings)
    except ValidationError as exc:
        sys.stderr.write(f"invalid simulator settings:\n{exc}\n")
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    run_simulator(config, host=options.host, port=options.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
