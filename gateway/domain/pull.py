"""Orders held for providers that pull them (`pull` adapter): the lease, the acknowledgement and the
alert for an order nobody pulls.

- The dispatcher holds a `pull` provider's order (outbox state `held`): its items stay `queued`.
- The provider's `GET /fhir/Task?owner=<ODS>&business-status=queued` takes a lease on each
  prescription whose Tasks it returns (`lease_seconds`, a provider setting): the provider's other
  pollers are not offered them until the lease ends. Each Task names the message Bundle to read.
- The provider's first report about the order (its acknowledgement: `accepted`, or `rejected` with a
  reason) records `sent` (as the gateway) for the whole prescription, then the report; the outbox row
  is done and the lease released.
- An order held longer than `unpulled_alert_seconds` with no acknowledgement is dead and its items
  `undeliverable`, with the alert of a failed push; a re-drive holds it again, and a late
  acknowledgement takes it back (`undeliverable` -> `queued` -> `sent` -> the report).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from adapters.registry import AdapterRegistryError, validate_settings
from auth.identity import Caller, Role
from gateway.domain.context import Context
from gateway.domain.status import Status
from gateway.domain.status_authority import move_prescription
from gateway.store import items, outbox
from gateway.store.db import Tx
from gateway.store.items import ItemKey, ItemView
from gateway.store.providers import ProviderEntry

SCHEME = "pull"
_SWEEP_BATCH = 500


@dataclass(frozen=True, slots=True)
class PullRules:
    """A pull provider's settings as the gateway applies them."""

    lease_seconds: int
    unpulled_alert_seconds: int


def pull_rules(entry: ProviderEntry | None) -> PullRules | None:
    """The provider's pull settings, or None when it is not an enabled `pull` provider."""
    if entry is None or not entry.enabled or entry.adapter != SCHEME:
        return None
    try:
        config = validate_settings(SCHEME, dict(entry.settings))
    except AdapterRegistryError:
        return None  # `providers add/update` validates; a hand-edited registry row is left alone
    return PullRules(int(getattr(config, "lease_seconds")), int(getattr(config, "unpulled_alert_seconds")))  # noqa: B009


@dataclass(frozen=True, slots=True)
class OfferedItem:
    """A queued item offered to the provider's poller, and the message Bundle to read for it."""

    view: ItemView
    message_id: str


def takes_leases(ctx: Context, caller: Caller, wanted: dict[str, Any]) -> bool:
    """Whether a Task search is a pull provider's search for its queued orders (which takes leases):
    the caller is a `pull` provider, asking for `business-status=queued` of its own orders only."""
    return (
        caller.role is Role.PROVIDER
        and set(wanted) <= {"provider_ods", "statuses"}
        and wanted.get("statuses") == (Status.QUEUED.value,)
        and wanted.get("provider_ods", caller.ods_code) == caller.ods_code
        and pull_rules(ctx.provider_directory.get(caller.ods_code)) is not None
    )


def offer_queued_orders(ctx: Context, *, caller: Caller, count: int) -> list[OfferedItem]:
    """Queued items of orders no other poller holds, up to `count` (whole prescriptions, at least
    one), each prescription leased to `caller` for the provider's `lease_seconds`."""
    rules = pull_rules(ctx.provider_directory.get(caller.ods_code))
    assert rules is not None, "offered only to pull providers (takes_leases)"
    now = ctx.clock()
    with ctx.db.transaction() as tx:
        held = outbox.unleased_held_orders(tx, provider_ods=caller.ods_code, now=now, limit=count)
        queued: dict[str, list[ItemView]] = {}
        for view in items.of_prescriptions(
            tx, [order.prescription_id for order in held], statuses=[Status.QUEUED.value]
        ):
            queued.setdefault(view.prescription_id, []).append(view)
        offered: list[OfferedItem] = []
        leased: list[int] = []
        for order in held:
            views = queued.get(order.prescription_id, [])
            if not views or (offered and len(offered) + len(views) > count):
                continue
            offered += [OfferedItem(view, order.message_id) for view in views]
            leased.append(order.outbox_id)
        outbox.lease_held_orders(
            tx,
            leased,
            holder=f"pull:{caller.client_id}",
            until=now + timedelta(seconds=rules.lease_seconds),
            now=now,
        )
    return offered


def record_pulled(ctx: Context, tx: Tx, view: ItemView, *, now: datetime) -> ItemView:
    """Before a provider's report about an item it pulled: the order is `sent` (the gateway's move, for
    the whole prescription) and its outbox row done. The item as it then is (unchanged for an order
    that was pushed, or was acknowledged before)."""
    if Status(view.status) not in (Status.QUEUED, Status.UNDELIVERABLE):
        return view
    if not outbox.finish_pulled_order(tx, view.prescription_id, now=now):
        return view
    if Status(view.status) is Status.UNDELIVERABLE:
        move_prescription(
            tx,
            view.prescription_id,
            Status.QUEUED,
            detail={"provider": view.provider_ods, "pulled_late": True},
            now=now,
            listener=ctx.listener,
        )
    move_prescription(
        tx,
        view.prescription_id,
        Status.SENT,
        detail={"provider": view.provider_ods, "pulled": True},
        now=now,
        listener=ctx.listener,
    )
    found = items.find(tx, ItemKey.by_id(view.item_id), for_change=True)
    assert found is not None, "the item was read in this transaction"
    return found


def after_report(tx: Tx, view: ItemView, *, now: datetime) -> None:
    """Once no item of the prescription waits for an answer to a cancellation, the cancellations held
    for the provider to pull are done."""
    if Status.CANCEL_REQUESTED.value not in items.statuses_of(tx, view.prescription_id):
        outbox.finish_held_cancellations(tx, view.prescription_id, now=now)


@dataclass(frozen=True, slots=True)
class Unpulled:
    """An order nobody pulled in time: now dead, its items `undeliverable`."""

    prescription_id: str
    provider_ods: str
    held_at: datetime
    alert_seconds: int


def alert_unpulled(ctx: Context, *, now: datetime) -> list[Unpulled]:
    """Every pull provider's orders held longer than its `unpulled_alert_seconds`: dead and
    `undeliverable`, as if their sends had failed (the caller raises the alert)."""
    found: list[Unpulled] = []
    for entry in ctx.provider_directory.entries():
        rules = pull_rules(entry)
        if rules is None:
            continue
        with ctx.db.transaction() as tx:
            held = outbox.held_too_long(
                tx,
                provider_ods=entry.ods_code,
                held_before=now - timedelta(seconds=rules.unpulled_alert_seconds),
                limit=_SWEEP_BATCH,
            )
            for order in held:
                error = f"not acknowledged by the provider within {rules.unpulled_alert_seconds} s"
                if not outbox.mark_unpulled(tx, order.outbox_id, error=error, now=now):
                    continue
                move_prescription(
                    tx,
                    order.prescription_id,
                    Status.UNDELIVERABLE,
                    detail={"provider": entry.ods_code, "error": error, "unpulled": True},
                    now=now,
                    listener=ctx.listener,
                )
                found.append(
                    Unpulled(
                        order.prescription_id, entry.ods_code, order.held_at, rules.unpulled_alert_seconds
                    )
                )
    return found
