"""The public performance page: no sign-in, no patient data. One row per provider with the headline
measures and their trend, and a page per provider with a chart per measure over the last twelve
months and the definitions. Read from the KPI aggregate (gateway.kpi.performance)."""

from __future__ import annotations

import re

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from gateway.api.deps import ServicesDep
from gateway.kpi.definitions import COMMON_RULES
from gateway.kpi.performance import HEADLINE, performance
from gateway.web.charts import bar_chart, month_words, sparkline
from gateway.web.errors import PageError
from gateway.web.rendering import render

router = APIRouter(include_in_schema=False)
_ODS = re.compile(r"^[A-Z0-9]{3,12}$")
PUBLIC = {"public": True}


@router.get("/performance")
async def performance_page(request: Request, services: ServicesDep) -> Response:
    figures = await run_in_threadpool(
        performance,
        services.db,
        now=services.clock(),
        threshold=services.settings.kpi_small_number_threshold,
    )
    context = {
        **PUBLIC,
        "figures": figures,
        "headline": HEADLINE,
        "sparkline": sparkline,
        "month_words": month_words,
    }
    return render(request, "performance.html", context)


@router.get("/performance/{ods_code}")
async def provider_performance_page(request: Request, ods_code: str, services: ServicesDep) -> Response:
    if not _ODS.match(ods_code):
        raise PageError(404, "There is no provider with this code.")
    figures = await run_in_threadpool(
        performance,
        services.db,
        now=services.clock(),
        threshold=services.settings.kpi_small_number_threshold,
        provider_ods=ods_code,
    )
    if not figures.providers:
        raise PageError(404, "There are no figures for a provider with this code.")
    context = {
        **PUBLIC,
        "figures": figures,
        "provider": figures.providers[0],
        "bar_chart": bar_chart,
        "month_words": month_words,
        "common_rules": COMMON_RULES,
    }
    return render(request, "performance_provider.html", context)
