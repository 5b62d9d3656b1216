"""Where the gateway's CPU goes under intake load: py-spy on the running server (see bench/profile.sh).

    bench/profile.sh [--seconds 20] [--connections 16] [--workers 1] [--rate 100] [--label NAME]
                     [--out DIR] [--log-level INFO] [--no-dispatcher] [--database-url URL] [--gil]

Starts `homecare-gateway serve` as `bench/intake.py --peers` does (SQLite, a trust client for the
order's sender, the order's provider registered where nothing listens, the dispatcher on), loads it
with wrk and the peer benchmark's copies of the real EPS homecare order (closed loop, C
connections), and while the load runs samples every process of the server with py-spy
(`--nonblocking`, busy samples only). Writes to DIR (default `var/profiles/<UTC stamp>-<label>`):
`stacks.txt` (collapsed stacks), `flame.svg`, `top.txt` (self time by package and by function,
inclusive time by function), and prints the top table with the load's req/s and the server's CPU
ms per request over the same window (py-spy's sampling included).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import flame
from bench.side_by_side import make_bodies, peer_bench_dir, running_gateway, sender_and_provider
from bench.wrk_cpu import process_tree_cpu_seconds

REPO = Path(__file__).resolve().parents[1]
PY_SPY = str(Path(sys.executable).with_name("py-spy"))


def wrk(
    harness: Path, url: str, token: str, bodies: Path, *, connections: int, seconds: int, offset: int
) -> subprocess.Popen[bytes]:
    env = {**os.environ, "BODIES": str(bodies), "BODIES_OFFSET": str(offset), "TOKEN": token}
    command = ["wrk", "-t", "1", "-c", str(connections), "-d", f"{seconds}s", "--timeout", "10s"]
    command += ["-s", str(harness / "post.lua"), url, "--", "1"]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)


def wrk_result(process: subprocess.Popen[bytes]) -> dict[str, object]:
    out, _ = process.communicate()
    lines = [line for line in out.decode().splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument("--label", default="gateway")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--no-dispatcher", action="store_true")
    parser.add_argument("--database-url")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument(
        "--gil", action="store_true", help="only samples holding the GIL: Python's own CPU, no waits"
    )
    arguments = parser.parse_args()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = arguments.out or REPO / "var" / "profiles" / f"{stamp}-{arguments.label}"
    out.mkdir(parents=True, exist_ok=True)
    harness = peer_bench_dir()
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as temporary:
        folder = Path(temporary)
        count = 1200 * (arguments.seconds + arguments.warmup + 4)
        bodies = make_bodies(harness, count, folder / "bodies", None)
        sender, provider = sender_and_provider(bodies)
        with running_gateway(
            folder / "gateway",
            workers=arguments.workers,
            sender=sender,
            provider=provider,
            log_level=arguments.log_level,
            dispatcher=not arguments.no_dispatcher,
            database_url=arguments.database_url,
        ) as gateway:
            assert gateway.process is not None
            pid = gateway.process.pid
            token = gateway.access_token()
            url = f"http://127.0.0.1:{gateway.port}/fhir/$process-message"
            warm = wrk_result(
                wrk(
                    harness,
                    url,
                    token,
                    bodies,
                    connections=arguments.connections,
                    seconds=arguments.warmup,
                    offset=0,
                )
            )
            load = wrk(
                harness,
                url,
                token,
                bodies,
                connections=arguments.connections,
                seconds=arguments.seconds + 2,
                offset=int(str(warm.get("requests", 0))),
            )
            time.sleep(1)  # wrk reads its bodies first
            cpu_before = process_tree_cpu_seconds(pid)
            started = time.monotonic()
            stacks = out / "stacks.txt"
            subprocess.run(
                [
                    *(PY_SPY, "record", "--pid", str(pid), "--subprocesses", "--nonblocking", "--nolineno"),
                    *("--format", "raw", "--rate", str(arguments.rate), "--duration", str(arguments.seconds)),
                    *("--output", str(stacks)),
                    *(("--gil",) if arguments.gil else ()),
                ],
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            cpu = process_tree_cpu_seconds(pid) - cpu_before
            elapsed = time.monotonic() - started
            result = wrk_result(load)
    rate = float(str(result.get("requests_per_s", 0)))
    summary = (
        f"{arguments.label}: {rate:.0f} req/s over {arguments.connections} connections "
        f"(p50 {result.get('p50_ms')} ms, p99 {result.get('p99_ms')} ms, non-2xx {result.get('non_2xx')}); "
        f"server CPU {1000 * cpu / max(rate * elapsed, 1):.2f} ms per request while sampled"
    )
    collapsed = flame.read_stacks(stacks)
    table = f"{summary}\n{flame.top_tables(collapsed, arguments.top)}\n"
    (out / "top.txt").write_text(table, encoding="utf-8")
    (out / "flame.svg").write_text(flame.flame_svg(collapsed, summary), encoding="utf-8")
    print(table)
    print(f"written: {out}/top.txt, flame.svg, stacks.txt")


if __name__ == "__main__":
    main()
