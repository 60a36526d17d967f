"""The billing desk's commands: checkout, coverage, payments, refunds, voids, drawer counts,
and the reads that answer from the ledger projection (accounts, receipts, reconciliation).

Each command waits until the Redis projection holds the clinic's ledger partition up
to its current end (after a restart it catches up first), takes a per-visit lock, reads
the visit's account, lets the pure domain decide which ledger entries to post, publishes them
on the ledger topic (``acks=all``, keyed by clinic, ``event_id`` = ``entry_id``) and
waits until the projection has applied them, so the next command on the visit sees
them. Entry ids are deterministic (the checkout's from the visit, a payment's from its
``Idempotency-Key``): a command retried after a crash posts the same ids, and the
projection applies an id once.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime

from services.billing import metrics as m
from services.billing.domain.accounts import Account
from services.billing.domain.accounts import account as account_of
from services.billing.domain.fee_schedule import UnknownServices
from services.billing.domain.money import stable_id
from services.billing.domain.payments import plan_payment, plan_refund, plan_void
from services.billing.domain.pricing import (
    checkout_key,
    plan_reprice,
    price_checkout,
    undo_checkout,
)
from services.billing.domain.receipts import Receipt
from services.billing.domain.receipts import receipt as receipt_of
from services.billing.domain.reconciliation import (
    Reconciliation,
    business_day,
    drawer_count_entry,
    reconcile,
)
from services.billing.fees import FeeScheduleFile
from services.billing.store import BillingStore
from shared import events as ev
from shared.clock import Clock, SystemClock
from shared.errors import Conflict, Rejected
from shared.events_billing import (
    SYSTEM,
    ChargePosted,
    CoverageRecorded,
    LedgerEntry,
    PaymentMethod,
    PaymentRefunded,
)
from shared.logging import get_logger

log = get_logger("clinicflow.billing.desk")
Publish = Callable[[bytes, str, bytes], Awaitable[None]]  # (value, topic, key)
Barrier = Callable[[str], Awaitable[None]]  # clinic_id: the projection holds its ledger


async def _no_barrier(_clinic_id: str) -> None:
    return None


@dataclass(frozen=True)
class CheckoutResult:
    outcome: str
    visit_id: str
    checkout_event_id: str
    entries: tuple[str, ...]
    account: Account
    reason: str = ""


class Desk:
    """Commands and reads over one clinic group's ledger (wiring-free: publish is given).

    Entries are stamped with ``clock.now()``. The waits (for a busy visit's lock, for
    posted entries to be projected) poll Redis every ``lock_poll_seconds`` /
    ``projection_poll_seconds``, for ``wait_seconds`` of ``monotonic`` at most: another
    task's or instance's progress cannot be awaited otherwise. Tests give their own."""

    lock_poll_seconds = 0.02
    projection_poll_seconds = 0.01

    def __init__(self, store: BillingStore, fees: FeeScheduleFile, publish: Publish, *,
                 ledger_topic: str, floor_topic: str, timezone_of: Callable[[str], str],
                 wait_seconds: float = 5.0, barrier: Barrier = _no_barrier,
                 clock: Clock | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.fees = fees
        self.publish = publish
        self.ledger_topic = ledger_topic
        self.floor_topic = floor_topic
        self.timezone_of = timezone_of
        self.wait_seconds = wait_seconds
        self.barrier = barrier
        self.clock: Clock = clock or SystemClock()
        self.monotonic = monotonic

    # ------------------------------------------------------------ plumbing

    async def account(self, clinic_id: str, visit_id: str) -> Account:
        return account_of(visit_id, await self.store.visit_entries(clinic_id, visit_id))

    async def _locked(self, clinic_id: str, visit_id: str) -> str:
        """Wait for the projection to hold the clinic's ledger as of now (a restart, another
        instance's writes), then take the visit's lock (whose last holder waited for its
        own entries to be projected): what the command reads next is the whole account."""
        await self.barrier(clinic_id)
        return await self._lock(clinic_id, visit_id)

    async def _lock(self, clinic_id: str, visit_id: str) -> str:
        token = uuid.uuid4().hex
        deadline = self.monotonic() + max(self.wait_seconds, 1.0)
        while not await self.store.lock_visit(clinic_id, visit_id, token):
            if self.monotonic() > deadline:
                raise Conflict(f"visit {visit_id} is busy with another money command: "
                               "try again")
            await asyncio.sleep(self.lock_poll_seconds)
        return token

    async def _post(self, clinic_id: str, entries: Sequence[LedgerEntry],
                    visit_id: str | None) -> bool:
        """Publish ``entries`` in order and wait until the projection holds them all.
        Returns whether it does (False: on the ledger, not projected yet)."""
        for entry in entries:
            event = ev.make_event(entry, clinic_id=clinic_id, source="billing",
                                  occurred_at=self.clock.now(), correlation_id=visit_id,
                                  event_id=entry.entry_id)
            await self.publish(ev.encode(event), self.ledger_topic, clinic_id.encode())
        return await self._projected(clinic_id, [e.entry_id for e in entries])

    async def _projected(self, clinic_id: str, entry_ids: Sequence[str]) -> bool:
        deadline = self.monotonic() + self.wait_seconds
        while True:
            found = await self.store.entries(clinic_id, entry_ids)
            if len(found) == len(set(entry_ids)):
                return True
            if self.monotonic() > deadline:
                log.warning("ledger entries posted but not projected yet", clinic=clinic_id,
                            entries=len(entry_ids))
                return False
            await asyncio.sleep(self.projection_poll_seconds)

    # ------------------------------------------------------------ commands

    async def checkout(self, clinic_id: str, visit_id: str, *, cpt_codes: Sequence[str],
                       icd10_codes: Sequence[str] = (), patient_ref: str | None = None,
                       made_by: str = SYSTEM,
                       floor_event_id: str | None = None) -> CheckoutResult:
        """Price the visit and post its charge and patient share (once per visit), then
        publish ``patient.checked_out`` on the floor. Unknown CPT codes: ``UnknownServices``
        (a ``Rejected``), nothing published.

        ``floor_event_id``: the checkout was read from the floor (published by another
        client): nothing is published there, and an event that already priced a charge
        (even one voided since) prices nothing again."""
        schedule = self.fees.current()
        unknown = schedule.unknown_codes(clinic_id, cpt_codes)
        if unknown:
            raise UnknownServices(clinic_id, unknown)
        patient_ref = patient_ref or await self.store.arrival_ref(clinic_id, visit_id)
        token = await self._locked(clinic_id, visit_id)
        try:
            account = await self.account(clinic_id, visit_id)
            key = checkout_key(account)
            checkout_event_id = floor_event_id or stable_id("out", key)
            if floor_event_id and any(
                    isinstance(p.entry, ChargePosted)
                    and p.entry.checkout_event_id == floor_event_id for p in account.entries):
                m.CHECKOUTS.labels("duplicate").inc()
                return CheckoutResult("duplicate", visit_id, floor_event_id, (), account,
                                      "this checkout was priced already")
            decision = price_checkout(schedule, account, clinic_id=clinic_id,
                                      checkout_event_id=checkout_event_id,
                                      cpt_codes=cpt_codes, patient_ref=patient_ref,
                                      made_by=made_by, key=key)
            m.CHECKOUTS.labels(decision.outcome).inc()
            if decision.outcome == "duplicate":
                standing = account.active(ChargePosted)
                checkout_event_id = (standing[0].entry.checkout_event_id  # type: ignore[attr-defined]
                                     if standing else checkout_event_id)
                codes = [line.cpt_code for line in account.lines]
                if cpt_codes and sorted(codes) != sorted(cpt_codes) and not floor_event_id:
                    raise Conflict(
                        f"visit {visit_id} is already charged for {', '.join(codes)}: "
                        "a manager voids that charge before it is charged again")
            if decision.entries:
                await self._post(clinic_id, decision.entries, visit_id)
                account = await self.account(clinic_id, visit_id)
            if floor_event_id is None:
                # the floor event follows the ledger: a crash in between is healed by a
                # retry, which finds the charge and publishes this same event (same id)
                floor = ev.make_event(
                    ev.PatientCheckedOut(visit_id=visit_id, cpt_codes=list(cpt_codes),
                                         icd10_codes=list(icd10_codes)),
                    clinic_id=clinic_id, source="billing", occurred_at=self.clock.now(),
                    correlation_id=visit_id, event_id=checkout_event_id)
                await self.publish(ev.encode(floor), self.floor_topic, clinic_id.encode())
            return CheckoutResult(decision.outcome, visit_id, checkout_event_id,
                                  tuple(e.entry_id for e in decision.entries), account,
                                  decision.reason)
        finally:
            await self.store.unlock_visit(clinic_id, visit_id, token)

    async def undo_checkout(self, clinic_id: str, *, undone_event_id: str,
                            undo_event_id: str) -> tuple[str, ...]:
        """A checkout undone on the floor: void its charge and share (ids from the undo's
        event id: a redelivered undo voids nothing twice). Returns the voids posted."""
        visit_id = await self.store.visit_of_checkout(clinic_id, undone_event_id)
        if visit_id is None:
            await self.barrier(clinic_id)  # maybe not projected yet: look once more
            visit_id = await self.store.visit_of_checkout(clinic_id, undone_event_id)
            if visit_id is None:
                return ()
        token = await self._locked(clinic_id, visit_id)
        try:
            account = await self.account(clinic_id, visit_id)
            voids = undo_checkout(account, undone_event_id=undone_event_id,
                                    undo_event_id=undo_event_id)
            voids = [v for v in voids if account.find(v.entry_id) is None]
            if voids:
                await self._post(clinic_id, voids, visit_id)
            return tuple(v.entry_id for v in voids)
        finally:
            await self.store.unlock_visit(clinic_id, visit_id, token)

    async def record_coverage(self, clinic_id: str, visit_id: str, *, entry_id: str,
                              patient_ref: str | None, copay_cents: int,
                              coinsurance_basis_points: int, deductible_remaining_cents: int,
                              self_pay: bool, made_by: str) -> tuple[Account, bool]:
        """The patient's cost-sharing for the visit (the latest recorded is the one used).
        Returns the account and whether ``entry_id`` was recorded already (a replay)."""
        entry = CoverageRecorded(
            entry_id=entry_id, visit_id=visit_id, patient_ref=patient_ref,
            copay_cents=copay_cents, coinsurance_basis_points=coinsurance_basis_points,
            deductible_remaining_cents=deductible_remaining_cents, self_pay=self_pay,
            reason="coverage captured", made_by=made_by)
        token = await self._locked(clinic_id, visit_id)
        try:
            account = await self.account(clinic_id, visit_id)
            existing = account.find(entry_id)
            if existing is None:
                await self._post(clinic_id, [entry], visit_id)
                return await self.account(clinic_id, visit_id), False
            _same_request(existing.entry, entry, "coverage")
            return account, True
        finally:
            await self.store.unlock_visit(clinic_id, visit_id, token)

    async def pay(self, clinic_id: str, visit_id: str, *, entry_id: str,
                  method: PaymentMethod, amount_cents: int, reference: str | None,
                  reason: str, made_by: str) -> tuple[Receipt, bool]:
        """A payment; returns its receipt and whether ``entry_id`` was taken already (a
        replay: nothing posted; a different payment under the same id is refused)."""
        token = await self._locked(clinic_id, visit_id)
        try:
            account = await self.account(clinic_id, visit_id)
            payment = plan_payment(account, entry_id=entry_id, method=method,
                                     amount_cents=amount_cents, reference=reference,
                                     reason=reason, made_by=made_by)
            existing = account.find(entry_id)
            if existing is not None:
                _same_request(existing.entry, payment, "payment")
                return receipt_of(clinic_id, account, entry_id), True
            await self._post(clinic_id, [payment], visit_id)
            account = await self.account(clinic_id, visit_id)
            return receipt_of(clinic_id, account, entry_id), False
        finally:
            await self.store.unlock_visit(clinic_id, visit_id, token)

    async def refund(self, clinic_id: str, visit_id: str, *, entry_id: str,
                     payment_entry_id: str, amount_cents: int, reason: str,
                     made_by: str) -> tuple[Receipt, bool]:
        """A refund of (part of) a payment; returns its receipt and whether it is a replay."""
        token = await self._locked(clinic_id, visit_id)
        try:
            account = await self.account(clinic_id, visit_id)
            existing = account.find(entry_id)
            if existing is not None:
                entry = existing.entry
                if not (isinstance(entry, PaymentRefunded)
                        and entry.payment_entry_id == payment_entry_id
                        and entry.amount_cents == amount_cents):
                    raise _reused("refund")
                return receipt_of(clinic_id, account, entry_id), True
            refund = plan_refund(account, entry_id=entry_id,
                                   payment_entry_id=payment_entry_id,
                                   amount_cents=amount_cents, reason=reason, made_by=made_by)
            await self._post(clinic_id, [refund], visit_id)
            account = await self.account(clinic_id, visit_id)
            return receipt_of(clinic_id, account, entry_id), False
        finally:
            await self.store.unlock_visit(clinic_id, visit_id, token)

    async def void(self, clinic_id: str, visit_id: str, *, target_entry_id: str,
                   void_id: str, reason: str, made_by: str) -> tuple[Account, bool]:
        """Void an entry; returns the account and whether ``void_id`` was posted already."""
        token = await self._locked(clinic_id, visit_id)
        try:
            account = await self.account(clinic_id, visit_id)
            existing = account.find(void_id)
            if existing is not None:
                if getattr(existing.entry, "voided_entry_id", None) != target_entry_id:
                    raise _reused("void")
                return account, True
            voids = plan_void(account, target_entry_id=target_entry_id,
                                void_id=void_id, reason=reason, made_by=made_by)
            await self._post(clinic_id, voids, visit_id)
            return await self.account(clinic_id, visit_id), False
        finally:
            await self.store.unlock_visit(clinic_id, visit_id, token)

    async def reprice(self, clinic_id: str, visit_id: str, *, command_id: str, reason: str,
                      made_by: str) -> tuple[Account, bool]:
        """Post the visit's patient share again under its latest coverage (the standing
        share is voided). Ids derive from ``command_id``: a retry re-prices once (and
        answers ``True``, a replay)."""
        token = await self._locked(clinic_id, visit_id)
        try:
            account = await self.account(clinic_id, visit_id)
            if any(account.find(stable_id("shr", command_id, p.entry_id)) is not None
                   for p in account.entries if isinstance(p.entry, ChargePosted)):
                return account, True
            entries = plan_reprice(account, command_id=command_id, reason=reason,
                                     made_by=made_by)
            entries = [e for e in entries if account.find(e.entry_id) is None]
            if entries:
                await self._post(clinic_id, entries, visit_id)
                account = await self.account(clinic_id, visit_id)
            return account, False
        finally:
            await self.store.unlock_visit(clinic_id, visit_id, token)

    async def count_drawer(self, clinic_id: str, *, entry_id: str, business_date: date,
                           counted: dict[str, int | None], made_by: str) -> bool:
        """Declare a day's count; returns whether ``entry_id`` was declared already."""
        entry = drawer_count_entry(entry_id=entry_id, business_date=business_date,
                                     counted=counted, reason="end-of-day count",
                                     made_by=made_by)
        await self.barrier(clinic_id)
        existing = await self.store.entry(clinic_id, entry_id)
        if existing is not None:
            _same_request(existing.entry, entry, "drawer count")
            return True
        await self._post(clinic_id, [entry], None)
        return False

    # --------------------------------------------------------------- reads

    async def receipt(self, clinic_id: str, visit_id: str, entry_id: str) -> Receipt:
        return receipt_of(clinic_id, await self.account(clinic_id, visit_id), entry_id)

    async def patient_accounts(self, clinic_id: str, patient_ref: str) -> list[Account]:
        visits = await self.store.patient_visits(clinic_id, patient_ref)
        histories = await self.store.visits_entries(clinic_id, visits)
        return [account_of(v, histories.get(v, [])) for v in visits]

    def day_bounds(self, clinic_id: str, business_date: date) -> tuple[datetime, datetime]:
        """[start, end) of the clinic's business day, in UTC."""
        return business_day(self.timezone_of(clinic_id), business_date)

    async def reconciliation(self, clinic_id: str, business_date: date,
                             counted: dict[str, int] | None = None) -> Reconciliation:
        """The clinic's day from the Redis projection. Open balances carried from earlier
        days are the visits owing now, at what they owed at the end of the day (a visit
        settled since is not listed for a past day)."""
        starts, ends = self.day_bounds(clinic_id, business_date)
        today = await self.store.entries_between(clinic_id, starts, ends)
        carried = await self.store.open_visits(clinic_id)
        visits = {p.visit_id for p in today if p.visit_id} | set(carried)
        histories = await self.store.visits_entries(clinic_id, visits)
        counts = await self.store.drawer_counts(clinic_id, business_date)
        entries = [*today, *counts, *(p for h in histories.values() for p in h)]
        return reconcile(clinic_id=clinic_id, business_date=business_date,
                         timezone=self.timezone_of(clinic_id), starts_at=starts,
                         ends_at=ends, entries=entries, source="projection",
                         counted=counted, carried=carried)


def _reused(what: str) -> Rejected:
    return Rejected(f"Idempotency-Key was already used for a different {what}")


def _same_request(existing: LedgerEntry, planned: LedgerEntry, what: str) -> None:
    """Refuse a command whose entry id (from its Idempotency-Key) is on the ledger with
    other contents: the same key for a different request."""
    ignore = {"reason", "made_by"}
    if (type(existing) is not type(planned)
            or existing.model_dump(exclude=ignore) != planned.model_dump(exclude=ignore)):
        raise _reused(what)


def new_entry_id(prefix: str, clinic_id: str, visit_id: str, idempotency_key: str | None) -> str:
    """A command's entry id: derived from its Idempotency-Key (a retry posts the same id),
    or fresh."""
    if idempotency_key:
        return stable_id(prefix, clinic_id, visit_id, idempotency_key)
    return f"{prefix}-{uuid.uuid4().hex}"
