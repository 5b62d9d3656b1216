"""Mutation testing of the rules that must not break quietly, one module group at a time (mutmut).

    python scripts/mutants.py [GROUP ...] [--max-children N] [--report-only]

Groups: auth, identifiers, status, tenancy, intake, outbox (default: all, in that order). Each group
runs in a folder of its own, mutants/<group>/, holding a copy of the packages and the tests and a
pyproject.toml whose [tool.mutmut] is the project's with the group's own files to mutate and its own
test selection (TESTS below; a file that fast direct tests cover alone runs apart with them, PARTS
below, in mutants/<group>-<part>/): mutmut learns once which of those tests reach which function, then
runs, for each mutant, only the tests that reach the mutated function, on SQLite, stopping at the
first failure. Results are kept per group: a second run carries on where the first stopped, and a
group's run never resets another's. After the runs it prints the score per module (killed /
(killed + survived); timeouts count as killed, mutants no test reaches as survived) and every
survivor, to judge against docs/mutation-testing.md.
Never part of `make test` or CI: a full run takes hours on two shared cores.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import shutil
import subprocess
import sys
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MUTANTS = ROOT / "mutants"
PACKAGES = ("auth", "fhir_profiles", "gateway", "adapters")

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

# Each group: the files mutmut mutates (globs, as in [tool.mutmut] only_mutate).
FILES: dict[str, tuple[str, ...]] = {
    "auth": ("auth/*.py",),
    "identifiers": ("fhir_profiles/identifiers.py",),
    "status": ("gateway/domain/status.py", "gateway/domain/status_authority.py"),
    "tenancy": ("auth/tenancy.py", "gateway/store/items.py"),
    "intake": (
        "fhir_profiles/homecare.py",
        "gateway/domain/intake.py",
        "gateway/domain/messages.py",
        "gateway/domain/orders.py",
    ),
    "outbox": ("gateway/store/outbox.py", "gateway/domain/delivery.py"),
}

# Each group: the fast tests that exercise its modules (mutmut runs, per mutant, those of them that
# reach the mutated function). A test missing here cannot kill the group's mutants.
TESTS: dict[str, tuple[str, ...]] = {
    "auth": (
        "tests/test_client_assertion.py",
        "tests/test_client_registry.py",
        "tests/test_token_endpoint.py",
        "tests/test_rate_limits.py",
        "tests/test_audit.py",
        "tests/test_access.py",
        "tests/test_security_cli.py",
    ),
    "identifiers": (
        "tests/test_identifiers.py",
        "tests/test_ascii_identifiers.py",
        "tests/test_homecare_profile.py",
    ),
    "status": (
        "tests/test_status_machine.py",
        "tests/test_status_authority.py",
        "tests/test_status_api.py",
        "tests/test_dispatch.py",
    ),
    "tenancy": ("tests/test_access.py", "tests/test_tenancy_matrix.py"),
    "intake": (
        "tests/test_homecare_profile.py",
        "tests/test_duplicate_keys.py",
        "tests/test_intake_api.py",
        "tests/test_ascii_identifiers.py",
        "tests/test_validate_and_capability.py",
    ),
    "outbox": (
        "tests/test_dispatch.py",
        "tests/test_notifications.py",
        "tests/adapters/test_pull.py",
        "tests/test_e2e_pull.py",
        "tests/test_lifecycle_e2e.py",
    ),
}

# Files of a group that fast direct tests cover on their own run apart, each part in a folder of its own
# (mutants/<group>-<part>/) with only those tests: every HTTP test reaches the homecare profile, and a
# survivor there would run them all (tens of seconds each, and on a loaded machine a timeout, which
# counts as killed). The group's other files run in mutants/<group>/ with TESTS[group].
PARTS: dict[str, dict[str, tuple[tuple[str, ...], tuple[str, ...]]]] = {
    "intake": {
        "profile": (
            ("fhir_profiles/homecare.py",),
            ("tests/test_homecare_profile.py",),
        ),
    },
}

KILLED = {1, 3, 36, 24, -24, 152, 255, 37}  # failed tests, pytest error, timeouts, type check
SURVIVED = {0, 5, 33}  # tests passed, or no test reaches the mutant


def toml_value(value: Any) -> str:
    return json.dumps(value)  # a JSON string, list or bool is also TOML


def folders(group: str) -> list[tuple[str, tuple[str, ...], tuple[str, ...]]]:
    """The folders a group runs in: (name under mutants/, files to mutate, tests), its parts first."""
    parts = PARTS.get(group, {})
    apart = {file for files, _ in parts.values() for file in files}
    chosen = [(f"{group}-{part}", files, tests) for part, (files, tests) in parts.items()]
    rest = tuple(file for file in FILES[group] if file not in apart)
    return [*chosen, (group, rest, TESTS[group])] if rest else chosen


def prepare(name: str, files: tuple[str, ...], tests: tuple[str, ...]) -> Path:
    """mutants/<name>/: the packages, the tests and a mutmut configuration for these files and tests."""
    folder = MUTANTS / name
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in (*PACKAGES, "tests"):
        shutil.copytree(ROOT / package, folder / package, dirs_exist_ok=True, ignore=ignore)
    project = (ROOT / "pyproject.toml").read_text()
    settings = tomllib.loads(project)["tool"]["mutmut"]
    settings["only_mutate"] = list(files)
    settings["pytest_add_cli_args_test_selection"] = [test for test in tests if (ROOT / test).exists()]
    settings["use_git_change_detection"] = False
    start = project.index("[tool.mutmut]")
    end = project.find("\n[", start + 1)
    section = "[tool.mutmut]\n" + "".join(f"{key} = {toml_value(value)}\n" for key, value in settings.items())
    rest = project[end:] if end != -1 else "\n"
    (folder / "pyproject.toml").write_text(project[:start] + section + rest)
    return folder


def run_group(group: str, max_children: int, *, survivors_only: bool = False) -> int:
    returncode = 0
    for name, files, tests in folders(group):
        folder = prepare(name, files, tests)
        command = [sys.executable, "-m", "mutmut", "run", "--max-children", str(max_children)]
        if survivors_only:
            # After new tests: only the earlier survivors are tried again (mutmut runs named mutants anew).
            names = sorted(mutant for mutant, code in in_group(group, name).items() if code in SURVIVED)
            if not names:
                continue
        else:
            # Only a group that mutates part of a file names its functions: mutmut runs every mutant it is
            # given by name again, while a run without names carries on where the last one stopped.
            names = [] if all(pattern.endswith(".*") for pattern in GROUPS[group]) else list(GROUPS[group])
        returncode = subprocess.run([*command, *names], cwd=folder, check=False).returncode or returncode
    return returncode


def results(name: str) -> dict[str, int | None]:
    """Every mutant's exit code in the folder mutants/<name>/ (None: not yet run)."""
    codes: dict[str, int | None] = {}
    for meta in (MUTANTS / name / "mutants").rglob("*.py.meta"):
        codes.update(json.loads(meta.read_text())["exit_code_by_key"])
    return codes


def in_group(group: str, name: str | None = None) -> dict[str, int | None]:
    """The group's mutants and their exit codes, from all its folders or from the one named."""
    names = [name] if name else [folder for folder, _, _ in folders(group)]
    return {
        mutant: code
        for folder in names
        for mutant, code in results(folder).items()
        if any(fnmatch.fnmatchcase(mutant, pattern) for pattern in GROUPS[group])
    }


def module_of(mutant: str) -> str:
    return mutant.rsplit(".", 1)[0]


def report(groups: list[str]) -> int:
    survivors: list[str] = []
    print(f"{'module':44} {'killed':>7} {'survived':>9} {'not run':>8} {'score':>7}")
    for group in groups:
        chosen = in_group(group)
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
    parser.add_argument(
        "--survivors", action="store_true", help="run only the earlier survivors again (after new tests)"
    )
    arguments = parser.parse_args()
    groups = arguments.groups or list(GROUPS)
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown:
        parser.error(f"unknown group {unknown[0]!r}; choose from {', '.join(GROUPS)}")
    if not arguments.report_only:
        for group in groups:
            print(f"== mutmut: {group}", flush=True)
            run_group(group, arguments.max_children, survivors_only=arguments.survivors)
    return report(groups)


if __name__ == "__main__":
    sys.exit(main())
