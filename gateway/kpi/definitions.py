"""The measures: what each one counts, in words, and its FHIR `Measure` resource.

The words here are the rule: `gateway.kpi.measures` computes exactly what they say, and the tests
pin each sentence on a hand-built history.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

MEASURE_BASE_URL = "https://homecare-gateway.nhs.uk/Measure"
SCORING_SYSTEM = "http://terminology.hl7.org/CodeSystem/measure-scoring"
POPULATION_SYSTEM = "http://terminology.hl7.org/CodeSystem/measure-population"
IMPROVEMENT_SYSTEM = "http://terminology.hl7.org/CodeSystem/measure-improvement-notation"
MEASURE_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/measure-type"
STRATIFIER_SYSTEM = "https://homecare-gateway.nhs.uk/CodeSystem/kpi-breakdown"
PUBLISHER = "Homecare e-prescribing gateway"


class MeasureId(StrEnum):
    ON_TIME_DELIVERY = "on-time-delivery"
    FAILED_DELIVERIES = "failed-deliveries"
    TIME_TO_ACCEPTANCE = "time-to-acceptance"
    REJECTION_RATE = "rejection-rate"
    QUERY_RATE = "query-rate"
    QUERY_TIME_TO_ANSWER = "query-time-to-answer"
    CANCELLATION_SUCCESS = "cancellation-success"
    UNDELIVERABLE_ORDERS = "undeliverable-orders"
    EXPIRED_UNFILLED = "expired-unfilled"


class Scoring(StrEnum):
    PROPORTION = "proportion"
    RATIO = "ratio"
    CONTINUOUS = "continuous-variable"
    COHORT = "cohort"


# Breakdowns (stratifiers) and the extra counts some measures keep beside their rate.
CAUSE = "cause"
RESPONSIBLE_PARTY = "responsible-party"
REASON = "reason"
SUPPLEMENT = "supplement"
DELIVERED_WITHOUT_AGREED_DATE = "delivered-without-agreed-date"
CANCELLED_BEFORE_SENDING = "cancelled-before-sending"
UNSPECIFIED = "unspecified"
REFUSED_AT_SEND = "refused-at-send"

COMMON_RULES = (
    "Months are calendar months in UK time (Europe/London); an event belongs to the month it "
    "happened in (its time as reported, `lastModified`), whenever it was recorded. The unit is the "
    "line item (one MedicationRequest, tracked as one Task) unless the rule says prescriptions. Each "
    "item's history is the one the gateway derives for its status: every report kept for the item, "
    "replayed in the order things happened; a repeated (duplicate) report counts once, and a stale "
    "(superseded) report counts only where it fits in time, exactly as it does for the item's status. "
    "Computed only from the gateway's event log: the same log always gives the same figures. Events "
    "recorded after a month closed (some days after it ended) restate it, and its reports say so."
)


@dataclass(frozen=True, slots=True)
class MeasureDefinition:
    id: MeasureId
    name: str
    title: str
    scoring: Scoring
    # `increase`: higher is better; `decrease`: lower is better.
    improvement: str
    kind: str
    rule: str
    populations: tuple[tuple[str, str], ...]
    stratifiers: tuple[tuple[str, str], ...] = ()
    supplements: tuple[tuple[str, str], ...] = ()
    # How the score is shown: proportions as a percentage, ratios per `per` units of the denominator.
    per: int = 100
    score_unit: str = "%"

    @property
    def url(self) -> str:
        return f"{MEASURE_BASE_URL}/{self.id.value}"


DEFINITIONS: tuple[MeasureDefinition, ...] = (
    MeasureDefinition(
        id=MeasureId.ON_TIME_DELIVERY,
        name="OnTimeDelivery",
        title="On-time delivery",
        scoring=Scoring.PROPORTION,
        improvement="increase",
        kind="outcome",
        rule=(
            "Line items delivered on or before the date agreed with the patient, out of all line items "
            "whose agreed delivery date falls in the month. The agreed date is the UK date of the end of "
            "the delivery window the provider reported with `delivery-scheduled` (its start when it has "
            "no end); a date earlier than the day it was reported counts as that day. A new window "
            "replaces the agreed date only when it is reported on or before the date then agreed "
            "(rescheduled in time); one reported after that date has passed leaves the item due on the "
            "date it missed. A failed attempt does not move the date."
        ),
        populations=(
            ("numerator", "The item's `delivered` report happened on or before its agreed date."),
            (
                "denominator",
                "Every line item whose agreed date is in the month. An item cancelled, rejected or expired "
                "before its delivery was arranged has no agreed date and is not due.",
            ),
        ),
        supplements=(
            (
                DELIVERED_WITHOUT_AGREED_DATE,
                "Line items delivered in the month with no agreed date ever reported: not in the rate.",
            ),
        ),
    ),
    MeasureDefinition(
        id=MeasureId.FAILED_DELIVERIES,
        name="FailedDeliveries",
        title="Failed deliveries per 1,000 delivery attempts",
        scoring=Scoring.RATIO,
        improvement="decrease",
        kind="outcome",
        rule=(
            "Failed delivery attempts per 1,000 delivery attempts in the month. An attempt is a "
            "`delivered` or `delivery-failed` report in an item's history: each failed attempt counts, "
            "and so does the delivery that follows it. Broken down by cause (the `statusReason` code "
            "the provider gave) and by who caused it (the responsible-party extension: patient, trust, "
            "provider or courier); `unspecified` when the provider did not say."
        ),
        populations=(
            ("numerator", "`delivery-failed` reports that happened in the month."),
            ("denominator", "`delivered` and `delivery-failed` reports that happened in the month."),
        ),
        stratifiers=(
            (CAUSE, "The reason code of the failed attempt (Task.statusReason)."),
            (RESPONSIBLE_PARTY, "Who caused the failure: patient, trust, provider or courier."),
        ),
        per=1000,
        score_unit="per 1,000 delivery attempts",
    ),
    MeasureDefinition(
        id=MeasureId.TIME_TO_ACCEPTANCE,
        name="TimeToAcceptance",
        title="Time from intake to provider acceptance",
        scoring=Scoring.CONTINUOUS,
        improvement="decrease",
        kind="process",
        rule=(
            "Time from intake (the gateway's `received` event for the prescription) to the provider's "
            "first `accepted` report for the line item, in whole minutes (rounded down; a report timed "
            "before intake counts as 0), in the month of the acceptance. An acceptance implied by a "
            "dispense notification counts. Median and 90th percentile by the nearest-rank method: the "
            "smallest time such that at least half (nine tenths) of the items took no longer."
        ),
        populations=(
            ("measure-population", "Line items first accepted in the month, with a known intake time."),
            ("measure-observation", "Minutes from intake to the first acceptance."),
        ),
        score_unit="min",
    ),
    MeasureDefinition(
        id=MeasureId.REJECTION_RATE,
        name="RejectionRate",
        title="Rejection rate",
        scoring=Scoring.PROPORTION,
        improvement="decrease",
        kind="process",
        rule=(
            "Provider rejections out of provider decisions in the month. A decision is a line item's "
            "first `accepted` report, a `rejected` report (the provider declining the order, at any "
            "point), or the provider's system refusing the order for good when the gateway sent it "
            "(every line item still waiting then counts). Broken down by reason: the `statusReason` "
            "code, or for a refusal at sending the code the provider's system gave (else "
            "`refused-at-send`); `unspecified` when none was given."
        ),
        populations=(
            ("numerator", "Rejections (reports and refusals at sending) in the month."),
            ("denominator", "First acceptances and rejections in the month."),
        ),
        stratifiers=((REASON, "The reason code of the rejection."),),
    ),
    MeasureDefinition(
        id=MeasureId.QUERY_RATE,
        name="QueryRate",
        title="Queries per 100 line items sent",
        scoring=Scoring.RATIO,
        improvement="decrease",
        kind="process",
        rule=(
            "Queries the provider raised per 100 line items sent to it in the month. A query is a "
            "`query` report in an item's history, in the month it was raised; a line item is sent when "
            "the provider's system took its order (`sent`), counted once, in that month."
        ),
        populations=(
            ("numerator", "`query` reports that happened in the month."),
            ("denominator", "Line items first sent to the provider in the month."),
        ),
        per=100,
        score_unit="per 100 line items sent",
    ),
    MeasureDefinition(
        id=MeasureId.QUERY_TIME_TO_ANSWER,
        name="QueryTimeToAnswer",
        title="Time to answer a provider's query",
        scoring=Scoring.CONTINUOUS,
        improvement="decrease",
        kind="process",
        rule=(
            "Time from a query being raised to the item leaving `query` (the trust's answer, or the "
            "provider moving on or declining the order), in whole minutes, in the month the query "
            "ended. Open queries count when they end. Median and 90th percentile by the nearest-rank "
            "method."
        ),
        populations=(
            ("measure-population", "Queries that ended in the month."),
            ("measure-observation", "Minutes from the query to the item's next status."),
        ),
        score_unit="min",
    ),
    MeasureDefinition(
        id=MeasureId.CANCELLATION_SUCCESS,
        name="CancellationSuccess",
        title="Cancellation success rate",
        scoring=Scoring.PROPORTION,
        improvement="increase",
        kind="process",
        rule=(
            "Cancellations the provider carried out, out of the trust's cancellation requests it "
            "answered in the month. A request is a line item's `cancel-requested`; it succeeded when the "
            "item's next status is `cancelled`, and failed when the item went back where it was (or on). "
            "In the month of the answer; requests still waiting are not counted."
        ),
        populations=(
            ("numerator", "Requests answered in the month by cancelling the item."),
            ("denominator", "Requests answered in the month."),
        ),
        supplements=(
            (
                CANCELLED_BEFORE_SENDING,
                "Line items cancelled at once in the month because the provider had not yet received the "
                "order: not in the rate.",
            ),
        ),
    ),
    MeasureDefinition(
        id=MeasureId.UNDELIVERABLE_ORDERS,
        name="UndeliverableOrders",
        title="Orders the provider's system could not be reached for",
        scoring=Scoring.COHORT,
        improvement="decrease",
        kind="process",
        rule=(
            "Prescriptions whose order the gateway could not deliver to the provider's system after all "
            "its retries (the prescription became `undeliverable`), in the month it happened. An order "
            "re-driven and given up again counts again."
        ),
        populations=(("initial-population", "Orders given up in the month."),),
    ),
    MeasureDefinition(
        id=MeasureId.EXPIRED_UNFILLED,
        name="ExpiredUnfilled",
        title="Prescriptions expired unfilled",
        scoring=Scoring.COHORT,
        improvement="decrease",
        kind="outcome",
        rule=(
            "Prescriptions whose validity period ended with a line item not yet dispensed (the item "
            "became `expired`), counted once, in the month the first of its items expired."
        ),
        populations=(("initial-population", "Prescriptions with a line item expired in the month."),),
    ),
)

BY_ID: dict[str, MeasureDefinition] = {definition.id.value: definition for definition in DEFINITIONS}


def definition_for(reference: str) -> MeasureDefinition | None:
    """The measure named by its id, its canonical URL or `Measure/<id>`."""
    key = reference.removeprefix(f"{MEASURE_BASE_URL}/").removeprefix("Measure/").split("|")[0]
    return BY_ID.get(key)


def _coding(system: str, code: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code}]}


def _criteria(text: str) -> dict[str, Any]:
    return {"language": "text/plain", "expression": text}


def measure_resource(definition: MeasureDefinition) -> dict[str, Any]:
    """The FHIR R4 `Measure` of a definition: its rule in words, scoring and populations."""
    group: dict[str, Any] = {
        "code": {"text": definition.title},
        "description": definition.rule,
        "population": [
            {"code": _coding(POPULATION_SYSTEM, code), "description": text, "criteria": _criteria(text)}
            for code, text in definition.populations
        ],
    }
    if definition.stratifiers:
        group["stratifier"] = [
            {"code": _coding(STRATIFIER_SYSTEM, code), "description": text, "criteria": _criteria(text)}
            for code, text in definition.stratifiers
        ]
    groups = [group]
    groups.extend(
        {
            "code": _coding(STRATIFIER_SYSTEM, code),
            "description": text,
            "population": [
                {
                    "code": _coding(POPULATION_SYSTEM, "initial-population"),
                    "description": text,
                    "criteria": _criteria(text),
                }
            ],
        }
        for code, text in definition.supplements
    )
    resource: dict[str, Any] = {
        "resourceType": "Measure",
        "id": definition.id.value,
        "url": definition.url,
        "name": definition.name,
        "title": definition.title,
        "status": "active",
        "experimental": False,
        "publisher": PUBLISHER,
        "description": f"{definition.rule}\n\n{COMMON_RULES}",
        "scoring": _coding(SCORING_SYSTEM, definition.scoring.value),
        "type": [_coding(MEASURE_TYPE_SYSTEM, definition.kind)],
        "improvementNotation": _coding(IMPROVEMENT_SYSTEM, definition.improvement),
        "group": groups,
    }
    if definition.scoring is Scoring.CONTINUOUS:
        resource["guidance"] = (
            "Reports give the median (group `median`) and the 90th percentile (group `p90`) in minutes."
        )
    elif definition.scoring is not Scoring.COHORT:
        resource["guidance"] = f"Reports give the score as {definition.score_unit}."
    return resource
