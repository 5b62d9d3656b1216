"""`homecare-gateway kpi ...`: recompute the KPI figures from the event log, export them as CSV."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from gateway.clock import system_clock
from gateway.kpi import service
from gateway.kpi.months import MonthError, parse_month
from gateway.kpi.reports import csv_rows, to_csv
from gateway.settings import Settings
from gateway.store.db import Database

kpi_app = typer.Typer(no_args_is_help=True, help="Performance figures (KPIs) from the event log.")
console = Console(stderr=True)


def _month(value: str) -> str:
    try:
        return parse_month(value)
    except MonthError as exc:
        raise typer.BadParameter(str(exc)) from exc


def _database(settings: Settings) -> Database:
    database = Database(settings.resolved_database_url, pool_size=2)
    database.migrate()
    return database


@kpi_app.command("recompute")
def recompute(
    month: Annotated[
        str | None, typer.Option(help="The month to build again, YYYY-MM (UK time).", parser=_month)
    ] = None,
    every_month: Annotated[
        bool, typer.Option("--all", help="Build every month again from the whole log.")
    ] = False,
) -> None:
    """Build a month's figures (or all of them) again from the event log, then catch up with new events."""
    if (month is None) == (not every_month):
        raise typer.BadParameter("give --month YYYY-MM or --all")
    settings = Settings()
    database = _database(settings)
    started = time.perf_counter()
    if month is not None:
        count = service.recompute_month(
            database, month, now=system_clock(), close_days=settings.kpi_month_close_days
        )
        what = f"month {month}"
    else:
        count = service.recompute_all(database, now=system_clock(), close_days=settings.kpi_month_close_days)
        what = "every month"
    folded = service.fold_new_events(database, now=system_clock(), close_days=settings.kpi_month_close_days)
    database.dispose()
    console.print(
        f"Recomputed {what} from {count} prescription(s) in {time.perf_counter() - started:.1f} s; "
        f"{folded.events} newer event(s) folded in."
    )


@kpi_app.command("export")
def export(
    month: Annotated[str, typer.Option(help="The month, YYYY-MM (UK time).", parser=_month)],
    output: Annotated[
        Path | None, typer.Option(help="Write the CSV here (default: standard output).")
    ] = None,
    by_trust: Annotated[
        bool,
        typer.Option(help="One row per provider and trust, small numbers shown (not for publication)."),
    ] = False,
) -> None:
    """The month's figures as CSV: per provider for all trusts, small numbers hidden, as published."""
    settings = Settings()
    database = _database(settings)
    now = system_clock()
    figures = (
        service.read_figures_by_trust(database, months=[month])
        if by_trust
        else service.read_figures(database, view=service.PUBLIC, months=[month])
    )
    database.dispose()
    text = to_csv(
        csv_rows(
            figures,
            threshold=settings.kpi_small_number_threshold,
            now=now,
            close_days=settings.kpi_month_close_days,
        )
    )
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")
        console.print(f"Wrote {output}")
