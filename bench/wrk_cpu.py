"""`wrk`, with the CPU time of the server it loads read before and after (for `bench/side_by_side.py`).

The peer benchmark reads a peer's CPU time around its measured run, but not that of a target it did
not start. This wrapper, put first on PATH as `wrk`, does the same for the gateways: when the URL
wrk is given is one of `BENCH_CPU_TARGETS` (JSON: URL -> server PID), it reads the CPU seconds of
that process and its children (the harness's `proc_cpu.py` reading) before and after, and wrk's own
CPU time (the load generator shares the cores), and appends one JSON line to `BENCH_CPU_LOG`. wrk's
output passes through unchanged.

A gateway goes on working after a run: it seals the audit rows, folds the events into the KPI
figures and tries its (here unreachable) provider. So before any wrk run, a peer's included, it waits
(at most 20 s) until every gateway is quiet, under 6% of a core each: the next measurement is not
charged for the last one's work. After a gateway's run it waits again and records that work too
(`after_cpu_s`): the CPU a prescription costs in all, beside what the harness reads for the peers
(to the end of the run).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path


def process_tree_cpu_seconds(root: int) -> float:
    """User + system CPU seconds of a process and its live descendants (Linux /proc)."""
    parents: dict[int, int] = {}
    seconds: dict[int, float] = {}
    ticks = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            data = (entry / "stat").read_text()
        except OSError:
            continue
        fields = data[data.rindex(")") + 2 :].split()
        parents[int(entry.name)] = int(fields[1])
        seconds[int(entry.name)] = (int(fields[11]) + int(fields[12])) / ticks
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += seconds.get(pid, 0.0)
        todo.extend(child for child, parent in parents.items() if parent == pid)
    return total


def _children_cpu_seconds() -> float:
    """User + system CPU seconds of this process's finished children (wrk, once it has been waited for)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


QUIET_SHARE = 0.06  # of one core: a server below it is idle (its timers, an unreachable provider's retries)
QUIET_WINDOW_S = 1.0
QUIET_LIMIT_S = 20.0


def wait_until_quiet(pids: list[int]) -> float:
    """Wait (at most 20 s) until each of these process trees uses under 6% of a core over a second;
    returns their CPU seconds then."""
    deadline = time.monotonic() + QUIET_LIMIT_S
    used = [process_tree_cpu_seconds(pid) for pid in pids]
    while time.monotonic() < deadline:
        time.sleep(QUIET_WINDOW_S)
        now = [process_tree_cpu_seconds(pid) for pid in pids]
        if all(
            after - before < QUIET_SHARE * QUIET_WINDOW_S for before, after in zip(used, now, strict=True)
        ):
            return sum(now)
        used = now
    return sum(used)


def main(arguments: list[str]) -> int:
    real = os.environ["BENCH_REAL_WRK"]
    targets: dict[str, int] = json.loads(os.environ.get("BENCH_CPU_TARGETS", "{}"))
    url = next((argument for argument in arguments if argument.startswith("http")), None)
    wait_until_quiet(list(targets.values()))
    if url not in targets:
        os.execv(real, [real, *arguments])
    pid = targets[url]
    before = process_tree_cpu_seconds(pid)
    loadgen_before = _children_cpu_seconds()
    finished = subprocess.run([real, *arguments], stdout=subprocess.PIPE, check=False)
    loadgen = _children_cpu_seconds() - loadgen_before
    after = process_tree_cpu_seconds(pid)
    settled = wait_until_quiet([pid])
    sys.stdout.buffer.write(finished.stdout)
    sys.stdout.flush()
    result: dict[str, object] = next(
        (json.loads(line) for line in finished.stdout.decode().splitlines() if line.startswith("{")), {}
    )
    connections = int(arguments[arguments.index("-c") + 1]) if "-c" in arguments else None
    reading = {
        "url": url,
        "connections": connections,
        "requests": result.get("requests"),
        "cpu_s": round(after - before, 3),
        "loadgen_cpu_s": round(loadgen, 3),
        "after_cpu_s": round(max(settled - after, 0.0), 3),
    }
    with Path(os.environ["BENCH_CPU_LOG"]).open("a", encoding="utf-8") as log:
        log.write(json.dumps(reading) + "\n")
    return finished.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
