"""The gateway side by side with other FHIR intakes, through the shared peer benchmark.

`bench/intake.py --peers` lands here. The peer benchmark (`../shared/peer-bench`, see its README)
starts each peer fresh, loads it with wrk and the same generated copies of a real EPS homecare
order, and reads the peer's CPU time around the measured run. The gateway is one of its extra
`NAME=URL` targets: started here (`homecare-gateway serve`, one per worker count asked for, each with
an empty SQLite database, or a throw-away PostgreSQL schema), with a registered trust client (the
order's sender) and the order's provider registered at an address where nothing listens, so the
dispatcher runs but only retries in the background, as a gateway whose provider is down.

The harness reads no CPU time for a target it did not start, so `wrk` is wrapped (see
`bench/wrk_cpu.py`): the wrapper reads the gateway's CPU time (all its processes) before and after
each wrk run against it, exactly as the harness does for its peers. The table printed at the end has,
per connection count: req/s (median over rounds, with the range), p50/p99, server CPU ms per
request, and each gateway's throughput as a ratio of every peer's.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.loadgen import BenchGateway, cli, database, post_at_rate

REPO = Path(__file__).resolve().parents[1]
PEER_BENCH = Path(os.environ.get("PEER_BENCH", REPO.parent / "shared" / "peer-bench"))
ODS_SYSTEM = "https://fhir.nhs.uk/Id/ods-organization-code"
# Where the registered provider "lives": nothing listens on the discard port.
UNREACHABLE_PROVIDER = "http://127.0.0.1:9/fhir"
PUBLIC_BASE_URL = "http://gateway.bench.test"


@dataclass(frozen=True)
class Options:
    peers: str
    workers: Sequence[int]
    connections: Sequence[int]
    duration: int
    warmup: int
    repeat: int
    bodies: int
    template: str | None
    database_url: str | None
    log_level: str
    dispatcher: bool
    out: Path | None
    # Another checkout of the gateway (a folder with its packages) measured in the same run.
    baseline: Path | None = None


def peer_bench_dir() -> Path:
    if (PEER_BENCH / "run_side_by_side.sh").is_file():
        return PEER_BENCH
    raise SystemExit(f"the peer benchmark is not at {PEER_BENCH} (set PEER_BENCH to its folder)")


def make_bodies(harness: Path, count: int, folder: Path, template: str | None) -> Path:
    """`count` unique copies of the template order (the harness's generator and default template)."""
    command = [sys.executable, str(harness / "gen_bodies.py"), str(count), str(folder)]
    if template:
        command.append(template)
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return folder / "bodies.jsonl"


def sender_and_provider(bodies: Path) -> tuple[str, str]:
    """The ODS codes of the order's sender (the trust) and of its performer (the provider)."""
    with bodies.open("rb") as lines:
        message = json.loads(lines.readline())
    sender = performer = None
    for entry in message["entry"]:
        resource = entry["resource"]
        if resource["resourceType"] == "MessageHeader":
            sender = resource["sender"]["identifier"]["value"]
        if resource["resourceType"] == "MedicationRequest":
            identifier = resource["dispenseRequest"]["performer"]["identifier"]
            if identifier["system"] == ODS_SYSTEM:
                performer = identifier["value"]
    if sender is None or performer is None:
        raise SystemExit("the template has no MessageHeader sender or no MedicationRequest performer")
    return sender, performer


@contextmanager
def running_gateway(
    folder: Path,
    *,
    workers: int,
    sender: str,
    provider: str,
    log_level: str = "INFO",
    dispatcher: bool = True,
    database_url: str | None = None,
    code: Path | None = None,
) -> Iterator[BenchGateway]:
    """`homecare-gateway serve` with a client for the sender and the provider registered (unreachable).

    `code`: a folder holding another version of the gateway's packages, imported instead of these.
    """
    env = {
        "HOMECARE_LOG_LEVEL": log_level,
        "HOMECARE_RUN_DISPATCHER": "true" if dispatcher else "false",
        # One token for every gateway of the run: the same signing keys and published address.
        "HOMECARE_PUBLIC_BASE_URL": PUBLIC_BASE_URL,
        "HOMECARE_SIGNING_KEYS_DIR": str(folder.parent / "signing-keys"),
        "HOMECARE_ACCESS_TOKEN_SECONDS": "3600",
        **({"PYTHONPATH": str(code)} if code else {}),
    }
    folder.mkdir()
    with database(database_url) as url:
        gateway = BenchGateway(
            folder,
            workers=workers,
            ods=sender,
            client_id=f"bench-{sender.lower()}",
            database_url=url,
            extra_env=env,
        )
        cli(
            gateway.env,
            *("providers", "add", "--ods", provider, "--name", "Unreachable bench provider"),
            *("--adapter", "fhir-rest", "--base-url", UNREACHABLE_PROVIDER),
        )
        with gateway:
            yield gateway


def gateway_for(
    options: Options, folder: Path, workers: int, sender: str, provider: str, code: Path | None
) -> AbstractContextManager[BenchGateway]:
    """`running_gateway` as the options ask (log level, dispatcher, database)."""
    return running_gateway(
        folder,
        workers=workers,
        sender=sender,
        provider=provider,
        log_level=options.log_level,
        dispatcher=options.dispatcher,
        database_url=options.database_url,
        code=code,
    )


def wrap_wrk(folder: Path, targets: dict[str, int], cpu_log: Path) -> dict[str, str]:
    """A `wrk` first on PATH that reads the gateways' CPU time around each run against them."""
    real = shutil.which("wrk")
    if real is None:
        raise SystemExit("wrk not found: run the peer benchmark's peers/setup.sh once")
    bin_dir = folder / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "wrk"
    wrapper.write_text(
        f'#!/bin/sh\nexec "{sys.executable}" "{REPO / "bench" / "wrk_cpu.py"}" "$@"\n', encoding="utf-8"
    )
    wrapper.chmod(0o755)
    return {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "BENCH_REAL_WRK": real,
        "BENCH_CPU_TARGETS": json.dumps(targets),
        "BENCH_CPU_LOG": str(cpu_log),
    }


def run(options: Options) -> None:
    harness = peer_bench_dir()
    subprocess.run(["bash", str(harness / "peers" / "setup.sh")], check=True)
    with tempfile.TemporaryDirectory(prefix="bench-intake-") as temporary, ExitStack() as stack:
        folder = Path(temporary)
        bodies = make_bodies(harness, options.bodies, folder / "bodies", options.template)
        sender, provider = sender_and_provider(bodies)
        targets: dict[str, int] = {}
        names: dict[str, str] = {}
        token = ""
        versions = [("gateway", None)] + ([("baseline", options.baseline)] if options.baseline else [])
        for (name, code), workers in itertools.product(versions, options.workers):
            gateway = stack.enter_context(
                gateway_for(options, folder / f"{name}-{workers}w", workers, sender, provider, code)
            )
            token = token or gateway.access_token()
            url = f"http://127.0.0.1:{gateway.port}/fhir/$process-message"
            assert gateway.process is not None
            targets[url] = gateway.process.pid
            names[f"{name}-{workers}w"] = url
        results = options.out or folder / "results.jsonl"
        cpu_log = folder / "cpu.jsonl"
        env = {**os.environ, "TOKEN": token, **wrap_wrk(folder, targets, cpu_log)}
        command = [
            "bash",
            str(harness / "run_side_by_side.sh"),
            *("--no-setup", "--bodies-file", str(bodies), "--out", str(results)),
            *("--duration", str(options.duration), "--warmup", str(options.warmup)),
            *("--connections", ",".join(map(str, options.connections)), "--repeat", str(options.repeat)),
            *("--peers", options.peers or "none"),
            *(f"{name}={url}" for name, url in names.items()),
        ]
        # The harness's own table goes to a file: the one printed here adds the gateway's CPU.
        with (folder / "harness-table.txt").open("wb") as table:
            subprocess.run(command, check=True, env=env, stdout=table)
        rows = attach_cpu(load_jsonl(results), load_jsonl(cpu_log))
        if options.out:
            options.out.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        print_table(rows, options)


def open_loop(options: Options, rates: Sequence[int]) -> None:
    """The gateway (and the baseline, if given) at steady request rates, open loop (`loadgen.post_at_rate`):
    latency at a given load, where wrk's closed loop measures queueing at saturation. Each row: a fresh
    gateway, `warmup` seconds at the rate, then `duration` seconds measured, new bodies throughout."""
    harness = peer_bench_dir()
    versions = [("gateway", None)] + ([("baseline", options.baseline)] if options.baseline else [])
    per_row = max(rates) * (options.warmup + options.duration)
    with tempfile.TemporaryDirectory(prefix="bench-open-loop-") as temporary:
        folder = Path(temporary)
        bodies_file = make_bodies(
            harness,
            per_row * len(versions) * len(options.workers) * len(rates) * options.repeat,
            folder / "bodies",
            options.template,
        )
        bodies = bodies_file.read_bytes().splitlines()
        sender, provider = sender_and_provider(bodies_file)
        print(
            f"open loop on the {len(bodies[0]) / 1024:.1f} KiB order, {options.warmup} s warm-up then "
            f"{options.duration} s measured; gateway on {'PostgreSQL' if options.database_url else 'SQLite'}, "
            f"dispatcher {'on' if options.dispatcher else 'off'}; latency from each request's due time"
        )
        header = (
            f"{'target':<20} {'rate/s':>7} {'got/s':>7} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} "
            f"{'max ms':>8} {'non-2xx':>8}"
        )
        print(f"\n{header}\n{'-' * len(header)}")
        taken = 0
        for _round, rate, (name, code), workers in itertools.product(
            range(options.repeat), rates, versions, options.workers
        ):
            warm, measured = rate * options.warmup, rate * options.duration
            batch = bodies[taken : taken + warm + measured]
            taken += warm + measured
            with gateway_for(
                options, folder / f"{name}-{workers}w-{rate}-{taken}", workers, sender, provider, code
            ) as gateway:
                headers = {
                    "Authorization": f"Bearer {gateway.access_token()}",
                    "Content-Type": "application/fhir+json",
                }
                path = "/fhir/$process-message"
                post_at_rate(gateway.port, path, batch[:warm], rate=rate, headers=headers)
                figures = post_at_rate(gateway.port, path, batch[warm:], rate=rate, headers=headers)
            print(
                f"{f'{name}-{workers}w':<20} {rate:>7} {figures['rps']:>7.0f} {figures['p50_ms']:>8.1f} "
                f"{figures['p99_ms']:>8.1f} {figures['p999_ms']:>9.1f} {figures['max_ms']:>8.1f} "
                f"{figures['non_2xx']:>8.0f}"
            )


def print_second_worker(version: str, runs: dict[str, list[dict[str, Any]]]) -> None:
    """What a second worker adds, with the load generator accounted for: wrk runs on the same cores,
    so the cores each row's server used are shown beside wrk's, and two workers' throughput is
    also given scaled to both cores at the CPU per request they measured (wrk on another machine)."""
    if len(runs) != 2:
        return
    cores: dict[str, tuple[float, float, float]] = {}
    for target, found in runs.items():
        rate = statistics.median(r["requests_per_s"] for r in found)
        server, loadgen = _median(found, "server_cpu_s"), _median(found, "loadgen_cpu_s")
        duration = statistics.median(r["duration_s"] for r in found)
        if server is None or loadgen is None or not duration:
            return
        cores[target] = (rate, server / duration, loadgen / duration)
    (one, one_server, one_wrk), (two, two_server, two_wrk) = cores[f"{version}-1w"], cores[f"{version}-2w"]
    cpu_count = os.cpu_count() or 2
    scaled = two * cpu_count / two_server
    print(
        f"  {version}: a second worker adds {100 * (two / one - 1):+.0f}% req/s here; the server used "
        f"{one_server:.2f} cores with one worker and {two_server:.2f} with two, wrk {one_wrk:.2f} and "
        f"{two_wrk:.2f}; two workers with all {cpu_count} cores at the CPU per request measured: "
        f"{scaled:.0f} req/s ({100 * (scaled / one - 1):+.0f}% over one worker)"
    )


def load_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def attach_cpu(rows: list[dict[str, Any]], readings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Give each gateway measurement the CPU time the wrk wrapper read around that very run."""
    unused = list(readings)
    for row in rows:
        if row.get("kind") != "target" or "requests" not in row:
            continue
        for reading in unused:
            if (
                reading["url"] == row["url"]
                and reading["requests"] == row["requests"]
                and reading["connections"] == row["connections"]
            ):
                row["server_cpu_s"] = reading["cpu_s"]
                row["server_cpu_ms_per_req"] = round(1000 * reading["cpu_s"] / row["requests"], 3)
                row["loadgen_cpu_s"] = reading.get("loadgen_cpu_s")
                if reading.get("after_cpu_s") is not None:
                    row["after_cpu_ms_per_req"] = round(1000 * reading["after_cpu_s"] / row["requests"], 3)
                unused.remove(reading)
                break
    return rows


def _median(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [row[key] for row in rows if row.get(key) is not None]
    return statistics.median(values) if values else None


def print_table(rows: list[dict[str, Any]], options: Options) -> None:
    groups: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for row in rows:
        if "requests" in row:
            groups.setdefault((row["connections"], row["target"]), []).append(row)
    rounds = max((row.get("round", 1) for row in rows), default=1)
    print(
        f"\nmedian of {rounds} round(s), {options.duration} s each after {options.warmup} s warm-up; "
        f"gateway on {'PostgreSQL' if options.database_url else 'SQLite'}, log level {options.log_level}, "
        f"dispatcher {'on' if options.dispatcher else 'off'}; {os.cpu_count()} cores shared with wrk; "
        "each run starts with every gateway quiet; CPU ms/req to the end of the run, as for the peers, "
        "+after: the gateway's work after it (sealing, KPI fold, delivery attempts) until quiet"
    )
    header = (
        f"{'target':<20} {'c':>4} {'req/s':>7} {'(range)':>11} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'CPU ms/req':>10} {'+after':>7} {'non-2xx':>8}"
    )
    for connections in sorted({c for c, _ in groups}):
        print(f"\n{header}\n{'-' * len(header)}")
        here = {target: found for (c, target), found in groups.items() if c == connections}
        rates = {
            target: statistics.median(r["requests_per_s"] for r in found) for target, found in here.items()
        }
        for target, found in here.items():
            spread = [r["requests_per_s"] for r in found]
            span = f"{min(spread):.0f}-{max(spread):.0f}" if len(found) > 1 else ""
            cpu = _median(found, "server_cpu_ms_per_req")
            after = _median(found, "after_cpu_ms_per_req")
            print(
                f"{target:<20} {connections:>4} {rates[target]:>7.0f} {span:>11} "
                f"{_median(found, 'p50_ms') or 0:>8.1f} {_median(found, 'p99_ms') or 0:>8.1f} "
                f"{'-' if cpu is None else f'{cpu:.2f}':>10} {'' if after is None else f'{after:.2f}':>7} "
                f"{sum(r['non_2xx'] for r in found):>8}"
            )
        for target in (t for t in here if t.startswith("gateway")):
            ratios = ", ".join(
                f"{peer} {rates[target] / rates[peer]:.2f}x"
                for peer in here
                if not peer.startswith("gateway")
            )
            if ratios:
                print(f"  {target} req/s as a ratio of: {ratios}")
            cpus = {t: _median(found, "server_cpu_ms_per_req") for t, found in here.items()}
            mine = cpus[target]
            cpu_ratios = ", ".join(
                f"{other} {mine / cpu:.2f}x"
                for other, cpu in cpus.items()
                if other != target and cpu and mine
            )
            if cpu_ratios:
                print(f"  {target} CPU per request as a ratio of: {cpu_ratios}")
        for version in sorted({t.rpartition("-")[0] for t in here if t.endswith("-1w")}):
            print_second_worker(
                version, {t: here[t] for t in (f"{version}-1w", f"{version}-2w") if t in here}
            )
