"""Where a prescription's CPU goes, stage by stage: the gateway's intake cut short at each stage in turn.

    python bench/stages.py [--seconds 10] [--connections 16] [--workers 1] [--repeat 1]

Starts `homecare-gateway serve` as `bench/intake.py --peers` does (SQLite, a trust client for the
order's sender, the order's provider registered where nothing listens, the dispatcher on) once per
stage, loads it with wrk and the peer benchmark's copies of the real EPS homecare order, and reads
the server's CPU time (every process and thread) around the measured run:

- `answer`: the body is read and a fixed answer sent. What every request costs before intake's own
  work: the HTTP server, the request middleware (ids, access log, rate limits, body deadline),
  authentication and the answer;
- `checked`: and the body parsed, its keys checked for repeats, its structure and the homecare
  profile checked, as intake does;
- `built`: and the prescription's rows built (prescription, items, events, outbox, audit, the stored
  message and the answer), nothing stored;
- `stored`: intake as it runs: the rows written by the batch writer, then the background work they
  bring (audit sealing, KPI fold, the dispatcher's polls).

The cut is made by a `sitecustomize` module on the server's `PYTHONPATH` that replaces the route's
handler (`answer`, `checked`) or the order's handler (`built`) before the app starts; the gateway's
code is not changed. A measurement, not a test: it prints figures. Each stage's CPU ms per request,
and what it adds to the stage before, is that stage's cost on this machine under this load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.loadgen import BenchGateway
from bench.profile import wrk, wrk_result
from bench.side_by_side import make_bodies, peer_bench_dir, running_gateway, sender_and_provider
from bench.wrk_cpu import process_tree_cpu_seconds

STAGES = ("answer", "checked", "built", "stored")
STAGE_VARIABLE = "HOMECARE_BENCH_STAGE"

# Imported by the server's interpreter at start-up (`site`), before the app is built.
_CUT = """
import os

_stage = os.environ.get("HOMECARE_BENCH_STAGE", "stored")
if _stage in ("answer", "checked"):
    from fhir_profiles.homecare import validate_message
    from gateway.api import process_message
    from gateway.api.responses import FhirResponse
    from gateway.domain.messages import informational

    _answer = informational(200, "Stage " + _stage + ": nothing was stored")

    async def _process(request, caller, services):
        if _stage == "answer":
            await request.body()
        else:
            body, document = await process_message.read_fhir_json_body(
                request, services.settings.max_body_bytes
            )
            validate_message(document, body)
        return FhirResponse(_answer.body, status_code=200)

    process_message._process = _process
elif _stage == "built":
    from fhir_profiles import codes
    from gateway.domain import intake, orders

    async def _built(ctx, received):
        order = received.result.order
        orders.check_provider(ctx, order)
        new, answer = orders._new_prescription(
            received, order, prescription_id=orders.new_id(), now=ctx.clock()
        )
        orders.prescription_rows(new)
        return answer

    intake.HANDLERS = {**intake.HANDLERS, codes.EVENT_PRESCRIPTION_ORDER: _built}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=1, help="rounds of every stage, interleaved")
    arguments = parser.parse_args()
    harness = peer_bench_dir()
    results: dict[str, list[tuple[float, float]]] = {stage: [] for stage in STAGES}
    with tempfile.TemporaryDirectory(prefix="bench-stages-") as temporary:
        folder = Path(temporary)
        cut = folder / "cut"
        cut.mkdir()
        (cut / "sitecustomize.py").write_text(_CUT, encoding="utf-8")
        # The fastest stage takes the most bodies (every request must be a new prescription).
        bodies = make_bodies(
            harness, 6000 * (arguments.seconds + arguments.warmup + 3), folder / "bodies", None
        )
        sender, provider = sender_and_provider(bodies)
        for round_number in range(arguments.repeat):
            for stage in STAGES:
                os.environ[STAGE_VARIABLE] = stage
                try:
                    with running_gateway(
                        folder / f"{stage}-{round_number}",
                        workers=arguments.workers,
                        sender=sender,
                        provider=provider,
                        code=cut,
                    ) as gateway:
                        results[stage].append(_measure(harness, gateway, bodies, arguments))
                finally:
                    os.environ.pop(STAGE_VARIABLE, None)
                rate, cpu = results[stage][-1]
                print(f"[round {round_number + 1}] {stage}: {rate:,.0f} req/s, {cpu:.3f} ms CPU per request")
    _print_table(results, arguments)


def _measure(
    harness: Path, gateway: BenchGateway, bodies: Path, arguments: argparse.Namespace
) -> tuple[float, float]:
    """(requests/s, server CPU ms per request) of one measured run after a warm-up."""
    assert gateway.process is not None
    token = gateway.access_token()
    url = f"http://127.0.0.1:{gateway.port}/fhir/$process-message"
    connections = arguments.connections
    warm = wrk(harness, url, token, bodies, connections=connections, seconds=arguments.warmup, offset=0)
    offset = int(str(wrk_result(warm).get("requests", 0)))
    time.sleep(1)
    cpu_before = process_tree_cpu_seconds(gateway.process.pid)
    load = wrk(harness, url, token, bodies, connections=connections, seconds=arguments.seconds, offset=offset)
    result = wrk_result(load)
    cpu = process_tree_cpu_seconds(gateway.process.pid) - cpu_before
    requests = int(str(result.get("requests", 0)))
    if int(str(result.get("non_2xx", 0))) or not requests:
        raise SystemExit(f"the run was not all answered 200: {result}")
    return float(str(result.get("requests_per_s", 0))), 1000 * cpu / requests


def _print_table(results: dict[str, list[tuple[float, float]]], arguments: argparse.Namespace) -> None:
    print(
        f"\n{arguments.workers} worker(s), {arguments.connections} connections, {arguments.seconds} s a run; "
        "median of the rounds; CPU of every process and thread of the server over the run\n"
    )
    print(f"{'stage':10} {'req/s':>8} {'CPU ms/req':>11} {'adds':>7}")
    previous: float | None = None
    for stage in STAGES:
        rate = statistics.median(rate for rate, _ in results[stage])
        cpu = statistics.median(cpu for _, cpu in results[stage])
        adds = "" if previous is None else f"{cpu - previous:+.3f}"
        print(f"{stage:10} {rate:8,.0f} {cpu:11.3f} {adds:>7}")
        previous = cpu


if __name__ == "__main__":
    main()
