"""Mutation testing of the rules that must not break quietly, one module group at a time (mutmut).

    python scripts/mutants.py [GROUP ...] [--max-children N] [--report-only]

Groups: auth, identifiers, status, tenancy, intake, outbox (default: all, in that order). mutmut
(configured in pyproject.toml, [tool.mutmut]) copies the packages to mutants/, mutates the files of
the group and runs, for each mutant, only the selected tests that reach the mutated function, on
SQLite. Results are kept in mutants/: a second run carries on where the first stopped. After the runs
it prints the score per module (killed / (killed + survived); timeouts count as killed, mutants no
test reaches as survived) and every survivor, to judge against docs/mutation-testing.md.
Never part of `make test` or CI: a full run takes hours on two shared cores.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MUTANTS = ROOT / "mutants"

# Each group: the mutmut names (module.function) it covers.
GROUPS: dict[str, tuple[str, ...]] = {
    "auth": ("auth.*",),
    "identifiers": ("fhir_profiles.identifiers.*",),
    "status": ("gateway.domain.status.*", "gateway.domain.status_authority.*"),
    "tenancy": (
        "auth.tenancy.*",
        "gateway.store.items.x_visible_to__*",
        "gateway.store.items.x_prescription_visible_to__*",
        "gateway.store.items.x_find__*",
        "gateway.store.items.xǁItemKeyǁ*",
    ),
    "intake": (
        "fhir_profiles.homecare.*",
        "gateway.domain.intake.*",
        "gateway.domain.messages.*",
        "gateway.domain.orders.*",
    ),
    "outbox": ("gateway.store.outbox.*", "gateway.domain.delivery.*"),
}

KILLED = {1, 3, 36, 24, -24, 152, 255, 37}  # failed tests, pytest error, timeouts, type check
SURVIVED = {0, 5, 33}  # tests passed, or no test reaches the mutant


def run_group(patterns: tuple[str, ...], max_children: int) -> int:
    command = [sys.executable, "-m", "mutmut", "run", "--max-children", str(max_children), *patterns]
    return subprocess.run(command, cwd=ROOT, check=False).returncode


def results() -> dict[str, int | None]:
    """Every mutant's exit code, from mutmut's files in mutants/ (None: not yet run)."""
    codes: dict[str, int | None] = {}
    for meta in MUTANTS.rglob("*.py.meta"):
        codes.update(json.loads(meta.read_text())["exit_code_by_key"])
    return codes


def module_of(mutant: str) -> str:
    return mutant.rsplit(".", 1)[0]


def report(groups: list[str]) -> int:
    codes = results()
    survivors: list[str] = []
    print(f"{'module':44} {'killed':>7} {'survived':>9} {'not run':>8} {'score':>7}")
    for group in groups:
        chosen = {
            name: code
            for name, code in codes.items()
            if any(fnmatch.fnmatchcase(name, pattern) for pattern in GROUPS[group])
        }
        tally: Counter[tuple[str, str]] = Counter()
        for name, code in chosen.items():
            verdict = "not run" if code is None else "killed" if code in KILLED else "survived"
            tally[(module_of(name), verdict)] += 1
            if verdict == "survived":
                survivors.append(name)
        print(f"[{group}]")
        for module in sorted({module for module, _ in tally}):
            killed, survived = tally[(module, "killed")], tally[(module, "survived")]
            done = killed + survived
            score = f"{100 * killed / done:.1f}%" if done else "-"
            print(f"  {module:42} {killed:7} {survived:9} {tally[(module, 'not run')]:8} {score:>7}")
    print(f"\n{len(survivors)} survivors:")
    for name in sorted(survivors):
        print(f"  {name}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("groups", nargs="*", metavar="GROUP", help=", ".join(GROUPS))
    parser.add_argument("--max-children", type=int, default=1, help="mutants run at once (default 1)")
    parser.add_argument("--report-only", action="store_true", help="print the scores of earlier runs")
    arguments = parser.parse_args()
    groups = arguments.groups or list(GROUPS)
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown:
        parser.error(f"unknown group {unknown[0]!r}; choose from {', '.join(GROUPS)}")
    if not arguments.report_only:
        for group in groups:
            print(f"== mutmut: {group}", flush=True)
            run_group(GROUPS[group], arguments.max_children)
    return report(groups)


if __name__ == "__main__":
    sys.exit(main())
