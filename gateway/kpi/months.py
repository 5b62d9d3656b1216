"""Reporting months: calendar months in UK time (Europe/London), as NHS figures are published.

A month is written `YYYY-MM`. It closes `close_days` days after it ends: events recorded after
that restate it.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, timedelta, timezone
from functools import lru_cache
from zoneinfo import ZoneInfo

REPORTING_ZONE = ZoneInfo("Europe/London")
_MONTH = re.compile(r"^(?P<year>\d{4})-(?P<month>0[1-9]|1[0-2])$")


class MonthError(ValueError):
    """Not a month written YYYY-MM."""


def parse_month(text: str) -> str:
    """`text` if it is a month written YYYY-MM (year 2000-2999), else MonthError."""
    match = _MONTH.match(text)
    if match is None or not 2000 <= int(match["year"]) <= 2999:
        raise MonthError(f"'{text[:20]}' is not a month written YYYY-MM")
    return text


def local_date(moment: datetime) -> date:
    """The UK calendar date of an instant."""
    offset = moment.utcoffset()
    if offset is None or offset.total_seconds() % 3600:
        return moment.astimezone(REPORTING_ZONE).date()
    # UK time is a whole number of hours from UTC, so the date depends on the hour only: a cache
    # of hours spares the time zone arithmetic for the millions of events a recompute reads.
    return _local_date_of_hour(moment.year, moment.month, moment.day, moment.hour, offset)


@lru_cache(maxsize=65_536)
def _local_date_of_hour(year: int, month: int, day: int, hour: int, offset: timedelta) -> date:
    return datetime(year, month, day, hour, tzinfo=timezone(offset)).astimezone(REPORTING_ZONE).date()


def month_of_date(day: date) -> str:
    return f"{day.year:04d}-{day.month:02d}"


def month_of(moment: datetime) -> str:
    """The reporting month an instant falls in."""
    return month_of_date(local_date(moment))


def first_day(month: str) -> date:
    year, number = (int(part) for part in parse_month(month).split("-"))
    return date(year, number, 1)


def next_month(month: str) -> str:
    day = first_day(month)
    return month_of_date(date(day.year + day.month // 12, day.month % 12 + 1, 1))


def last_day(month: str) -> date:
    return first_day(next_month(month)) - timedelta(days=1)


def start_of(day: date) -> datetime:
    """The first instant (UTC) of a UK calendar day."""
    return datetime.combine(day, time(0), tzinfo=REPORTING_ZONE).astimezone(UTC)


def month_bounds(month: str) -> tuple[datetime, datetime]:
    """The month as a half-open interval of UTC instants [start, end)."""
    return start_of(first_day(month)), start_of(first_day(next_month(month)))


def month_closes_at(month: str, close_days: int) -> datetime:
    """When a month's figures become final: `close_days` days after it ends."""
    return start_of(first_day(next_month(month)) + timedelta(days=close_days))


def months_between(first: str, last: str) -> list[str]:
    """Every month from `first` to `last`, both included (empty when last is before first)."""
    months: list[str] = []
    month = parse_month(first)
    parse_month(last)
    while month <= last:
        months.append(month)
        month = next_month(month)
    return months
