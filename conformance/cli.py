"""`homecare-conformance`: the vendor conformance suite's command line.

Exit codes: 0 every required test passed (or was waived); 1 a required test failed or errored;
2 the suite could not run (target unreachable, bad configuration), with one line saying why;
3 usage error."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from conformance.assertions import KeyFileError, SigningIdentity
from conformance.config import Client, ConfigError, SuiteConfig, load_config, load_waivers, parse_listen
from conformance.model import REGISTRY, Outcome, Role, TestDefinition, TestResult
from conformance.reports import write_reports
from conformance.roles import open_role
from conformance.runner import RunResult, load_all_tests, run_tests, select_tests
from conformance.setup import registration_commands, run_registration, write_gateway_config
from conformance.wire import TargetUnreachableError

EXIT_PASSED, EXIT_FAILED, EXIT_CANNOT_RUN, EXIT_USAGE = 0, 1, 2, 3

app = typer.Typer(add_completion=False, no_args_is_help=True, help="The homecare gateway conformance suite.")
console = Console(highlight=False)
errors = Console(stderr=True, highlight=False)
COLOURS = {Outcome.PASS: "green", Outcome.FAIL: "red", Outcome.ERROR: "magenta", Outcome.SKIP: "yellow"}


class CommandLineError(Exception):
    """The command line asks for something that cannot be done (exit 3)."""


class CannotRunError(Exception):
    """The suite cannot run; the message is the one line the operator sees."""


def _cannot_run(message: str) -> typer.Exit:
    sys.stderr.write(f"homecare-conformance: cannot run: {message}\n")  # one line, never wrapped
    return typer.Exit(EXIT_CANNOT_RUN)


@app.command("list")
def list_tests(
    role: Annotated[Role | None, typer.Option(help="Only this role's tests.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List every test: ID, title, the requirement it checks, role."""
    tests = select_tests(role)
    if as_json:
        rows = [
            {
                "id": t.id,
                "title": t.title,
                "role": t.role.value,
                "optional": t.optional,
                "requirement": {"source": t.requirement.source, "text": t.requirement.text},
            }
            for t in tests
        ]
        console.print_json(json.dumps(rows))
        return
    table = Table("ID", "role", "title", "requirement")
    for test in tests:
        table.add_row(
            test.id,
            test.role.value,
            test.title + (" (optional)" if test.optional else ""),
            str(test.requirement),
        )
    console.print(table)


def _config_with_overrides(config: SuiteConfig, client_id: str | None, key: Path | None) -> SuiteConfig:
    if (client_id is None) != (key is None):
        raise CommandLineError("--client-id and --key go together")
    if client_id is None or key is None:
        return config
    try:
        identity = SigningIdentity.from_file(client_id, key)
    except KeyFileError as exc:
        raise CannotRunError(str(exc)) from exc
    ods = config.gateway.trust_a.ods if config.gateway.trust_a else "RCF"
    return replace(config, gateway=replace(config.gateway, trust_a=Client("trust_a", ods, identity)))


def _print_progress(test: TestDefinition, result: TestResult | None) -> None:
    if result is None:
        return
    colour = COLOURS[result.outcome]
    waived = " [yellow](waived)[/yellow]" if result.waiver and result.outcome is not Outcome.PASS else ""
    detail = f" [dim]{result.message}[/dim]" if result.message else ""
    console.print(
        f"[{colour}]{result.outcome.value:>5}[/{colour}] {test.id:<12} {test.title}{waived}{detail}"
    )


def _summary(run: RunResult) -> None:
    table = Table("ID", "result", "title", title=f"{run.role.value} role against {run.target}")
    for result in run.results:
        colour = COLOURS[result.outcome]
        label = result.outcome.value + (
            " (waived)" if result.waiver and result.outcome is not Outcome.PASS else ""
        )
        label += " (optional)" if result.definition.optional and result.outcome is not Outcome.PASS else ""
        table.add_row(result.definition.id, f"[{colour}]{label}[/{colour}]", result.definition.title)
    console.print(table)
    counts = ", ".join(f"{run.count(o)} {o.value}" for o in Outcome)
    verdict = "[red]FAILED[/red]" if run.blocking else "[green]PASSED[/green]"
    console.print(f"{verdict}: {len(run.results)} tests, {counts}; {len(run.blocking)} blocking")


@app.command("run")
def run(
    target: Annotated[
        str,
        typer.Option(help="gateway/provider: its base URL. trust: the URL the suite serves as the gateway."),
    ],
    role: Annotated[Role, typer.Option(help="Which system is under test.")],
    config: Annotated[Path | None, typer.Option(help="The suite's configuration file (TOML).")] = None,
    client_id: Annotated[
        str | None, typer.Option("--client-id", help="gateway role: trust A's client id.")
    ] = None,
    key: Annotated[
        Path | None, typer.Option(help="gateway role: trust A's private key (PEM or JWK).")
    ] = None,
    only: Annotated[list[str] | None, typer.Option(help="Run only this test ID (repeatable).")] = None,
    report_dir: Annotated[Path, typer.Option(help="Where the JUnit, JSON and HTML reports go.")] = Path(
        "conformance-reports"
    ),
    waivers: Annotated[Path | None, typer.Option(help='TOML: [waivers] TEST-ID = "reason".')] = None,
    listen: Annotated[
        str | None, typer.Option(help="provider role: HOST:PORT where the provider reports status.")
    ] = None,
) -> None:
    """Run a role's tests against a system and write the three reports."""
    try:
        tests = select_tests(role, only or ())
    except KeyError as exc:
        raise CommandLineError(str(exc.args[0])) from exc
    try:
        suite_config = _config_with_overrides(load_config(config), client_id, key)
        waiver_reasons = load_waivers(waivers)
        unknown = set(waiver_reasons) - set(REGISTRY)
        if unknown:
            raise CannotRunError(f"waivers name an unknown test ID {sorted(unknown)[0]}")
        with ExitStack() as stack:
            state: Any = stack.enter_context(
                open_role(
                    role,
                    target,
                    suite_config,
                    listen=parse_listen(listen) if listen else None,
                    say=console.print,
                )
            )
            with console.status(f"running {len(tests)} {role.value} tests against {target}"):
                result = run_tests(
                    tests, state, role=role, target=target, waivers=waiver_reasons, progress=_print_progress
                )
    except (ConfigError, CannotRunError) as exc:
        raise _cannot_run(str(exc)) from None
    except TargetUnreachableError as exc:
        raise _cannot_run(f"the target does not answer: {exc}") from None
    except OSError as exc:
        raise _cannot_run(f"{type(exc).__name__}: {exc}") from None
    _summary(result)
    for path in write_reports(result, report_dir):
        console.print(f"report: {path}")
    raise typer.Exit(EXIT_FAILED if result.blocking else EXIT_PASSED)


@app.command("init-gateway")
def init_gateway(
    folder: Annotated[Path, typer.Option("--dir", help="Where keys and conformance.toml go.")] = Path(
        "var/conformance"
    ),
    provider_listen: Annotated[
        str, typer.Option(help="HOST:PORT where the suite plays the provider's system.")
    ] = "127.0.0.1:8301",
    register: Annotated[
        bool, typer.Option("--register", help="Register them at a local gateway with homecare-gateway.")
    ] = False,
    gateway_command: Annotated[
        str, typer.Option(help="The gateway's operator command.")
    ] = "homecare-gateway",
) -> None:
    """Make keys for two trusts and two providers, the configuration naming them, and the commands
    that register them (run with --register for this project's gateway on this machine)."""
    try:
        parse_listen(provider_listen)
    except ConfigError as exc:
        raise CommandLineError(str(exc)) from exc
    path = write_gateway_config(folder, provider_listen)
    console.print(f"configuration: {path}")
    commands = registration_commands(folder, provider_listen)
    if not register:
        console.print("Register these at the gateway (an operator's commands):")
        for command in commands:
            console.print("  " + " ".join(f"'{a}'" if " " in a else a for a in command), soft_wrap=True)
        return
    try:
        for line in run_registration(commands, gateway_command):
            console.print(line)
    except (RuntimeError, OSError) as exc:
        raise _cannot_run(str(exc)) from None


def _is_usage_error(exc: BaseException) -> bool:
    # Typer bundles its own copy of click in some versions: recognise click's UsageError by name.
    return any(cls.__name__ == "UsageError" for cls in type(exc).__mro__) and hasattr(exc, "show")


def main(argv: Sequence[str] | None = None) -> None:
    load_all_tests()
    command = typer.main.get_command(app)
    args = list(argv) if argv is not None else sys.argv[1:]
    try:
        code = command.main(args=args, prog_name="homecare-conformance", standalone_mode=False)
    except CommandLineError as exc:
        errors.print(f"homecare-conformance: usage: {exc}")
        raise SystemExit(EXIT_USAGE) from None
    except typer.Abort:
        errors.print("aborted")
        raise SystemExit(EXIT_CANNOT_RUN) from None
    except Exception as exc:
        if not _is_usage_error(exc):
            raise
        exc.show()  # type: ignore[attr-defined]
        raise SystemExit(EXIT_USAGE) from None
    raise SystemExit(code if isinstance(code, int) else EXIT_PASSED)
