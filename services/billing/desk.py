"""The billing desk's commands: checkout, coverage, payments, refunds, voids, drawer counts,
and the reads that answer from the ledger projection (accounts, receipts, reconciliation).

Each command on a visit first checks the visit exists at the clinic (it checked in there,
read from the floor, or it has entries on the clinic's ledger; a visit not known yet is
looked for again once billing has read the clinic's floor as of now), then waits until
the Redis projection holds the clinic's ledger partition up to its current end (after a
restart it catches up first), takes a per-visit lock (and waits once more holding it, for
what the lock's last holder posted), reads the visit's account, lets the
pure domain decide which ledger entries to post, publishes them on the ledger topic
(``acks=all``, keyed by clinic, ``event_id`` = ``entry_id``) and waits until the
projection has applied them, so the next command on the visit sees them.

Entry ids are deterministic, so a command retried (even after a crash) posts the same
ids and the projection applies an id once: a payment's and a refund's derive from their
``Idempotency-Key`` (required: two identical payments are two payments), the others'
from what makes them the same command (the natural key): a checkout's from the visit,
a void's from the entry voided, a coverage's and a re-pricing's from the standing
coverage, a drawer count's from the day's standing count and the amounts.

Times on receipts and days in reports are the clinic's own (its IANA zone from
``CLINICFLOW_CLINICS``, ``shared/clinics.py``); entries are stamped in UTC.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from services.billing import metrics as m
from services.billing.domain.accounts import Account, Posted
from services.billing.domain.accounts import account as account_of
from services.billing.domain.fee_schedule import FeeSchedule, UnknownServices
from services.billing.domain.money import stable_id
from services.billing.domain.payments import (
    finish_void,
    plan_payment,
    plan_refund,
    plan_void,
)
from services.billing.domain.pricing import (
    checkout_key,
    plan_reprice,
    price_checkout,
    undo_checkout,
)
from services.billing.domain.receipts import Receipt, ReceiptHeading
from services.billing.domain.receipts import receipt as receipt_of
from services.billing.domain.reconciliation import (
    Reconciliation,
    business_day,
    drawer_count_entry,
    reconcile,
)
from services.billing.domain.visits import (
    FloorVisit,
    publishes_checkout,
    require_checkout_allowed,
    require_known,
    require_on_floor,
    require_same_patient,
)
from services.billing.fees import FeeScheduleFile
from services.billing.store import BillingStore
from shared import events as ev
from shared.clinics import Clinic, ClinicDirectory
from shared.clock import Clock, SystemClock
from shared.errors import Conflict, NotFound, PreconditionRequired, Rejected
from shared.events_billing import (
    SYSTEM,
    ChargePosted,
    CoverageRecorded,
    DrawerCounted,
    LedgerEntry,
    PatientSharePosted,
    PaymentMethod,
    PaymentRefunded,
)
from shared.logging import get_logger
from shared.visit_end import VisitEnds

log = get_logger("clinicflow.billing.desk")
Publish = Callable[[bytes, str, bytes], Awaitable[None]]  # (value, topic, key)
Barrier = Callable[[str], Awaitable[None]]  # clinic_id: a consumer holds its partition

# how far back a drawer count may be declared (a year of the clinic's days: a recount for
# an audit, not 0001-01-01)
DRAWER_COUNT_DAYS = 366


# where an entry posted and not projected yet sits in an account read by the command that
# posted it: after every entry the projection holds (ledger offsets are far smaller)
UNPROJECTED = 2**62


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
    published: bool = False  # patient.checked_out published on the floor by this checkout
    # ... by this checkout or, for a replay, by the one it repeats (the answer says so)
    ended_on_floor: bool = False


@dataclass(frozen=True)
class DrawerCountResult:
    entry_id: str
    replayed: bool


class Desk:
    """Commands and reads over one clinic group's ledger (wiring-free: publish is given).

    Entries are stamped with ``clock.now()``; ``clinics`` gives each clinic's zone (its
    business day, the time on its receipts) and names. ``barrier`` waits for the ledger
    projection, ``floor_barrier`` for the floor consumer (``barrier.py``). The waits (for
    a busy visit's lock, for posted entries to be projected) poll Redis every
    ``lock_poll_seconds`` / ``projection_poll_seconds``, for ``wait_seconds`` of
    ``monotonic`` at most: another task's or instance's progress cannot be awaited
    otherwise. Tests give their own."""

    lock_poll_seconds = 0.02
    projection_poll_seconds = 0.01

    def __init__(self, store: BillingStore, fees: FeeScheduleFile, publish: Publish, *,
                 ledger_topic: str, floor_topic: str, clinics: ClinicDirectory | None = None,
                 wait_seconds: float = 5.0, barrier: Barrier = _no_barrier,
                 floor_barrier: Barrier = _no_barrier, clock: Clock | None = None,
                 monotonic: Callable[[], float] = time.monotonic,
                 visit_ends: VisitEnds | None = None) -> None:
        self.store = store
        self.fees = fees
        self.publish = publish
        self.ledger_topic = ledger_topic
        self.floor_topic = floor_topic
        self.clinics = clinics or ClinicDirectory.parse(None)
        self.wait_seconds = wait_seconds
        self.barrier = barrier
        self.floor_barrier = floor_barrier
        self.clock: Clock = clock or SystemClock()
        self.monotonic = monotonic
        # the visit-end claim a desk checkout takes before it charges (shared/visit_end.py):
        # check-in's cancel takes the same one, so a visit is either cancelled or charged
        self.visit_ends = visit_ends

    # ------------------------------------------------------------ plumbing

    def clinic(self, clinic_id: str) -> Clinic:
        """The clinic's zone and names (its ids when CLINICFLOW_CLINICS has none)."""
        return self.clinics[clinic_id]

    def today(self, clinic_id: str) -> date:
        """The clinic's calendar day now, on its own clock."""
        return self.clinic(clinic_id).day_of(self.clock.now())

    async def account(self, clinic_id: str, visit_id: str) -> Account:
        return account_of(visit_id, await self.store.visit_entries(clinic_id, visit_id))

    async def known_visit(self, clinic_id: str, visit_id: str, *, floor_read: bool = False,
                          takes_money: bool = False) -> FloorVisit:
        """What the floor said of a visit of the clinic; ``NotFound`` naming the visit and
        the clinic when it neither checked in there nor has entries on its ledger. A visit
        not known at first is looked for again once billing has read the clinic's floor as
        of now (an arrival published a moment ago), unless ``floor_read`` says it has.
        ``takes_money``: the command adds money to the visit (coverage, payment,
        re-pricing), which a visit whose arrival was undone refuses (``Conflict``)."""
        floor, on_ledger = await self.store.visit_known(clinic_id, visit_id)
        if not (floor.arrived or on_ledger) and not floor_read:
            await self.floor_barrier(clinic_id)
            floor, on_ledger = await self.store.visit_known(clinic_id, visit_id)
        require_known(clinic_id, visit_id, floor, on_ledger)
        if takes_money:
            require_on_floor(clinic_id, visit_id, floor)
        return floor

    async def _locked(self, clinic_id: str, visit_id: str) -> str:
        """Wait for the projection to hold the clinic's ledger as of now (a restart,
        another instance's writes), take the visit's lock, and wait once more holding it
        (at once, unless the lock's last holder stopped waiting for its own entries:
        read without them, two refunds of one payment could both pass), the lock still
        ours after that wait: what the command reads next is the whole account."""
        await self.barrier(clinic_id)
        token = await self._lock(clinic_id, visit_id)
        try:
            await self.barrier(clinic_id)
            if not await self.store.keep_lock(clinic_id, visit_id, token):
                raise Conflict(f"visit {visit_id} is busy with another money command: "
                               "try again")  # the wait outlived the lock
        except BaseException:
            await self.store.unlock_visit(clinic_id, visit_id, token)
            raise
        return token

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
                    visit_id: str | None) -> list[Posted]:
        """Publish ``entries`` in order and wait until the projection holds them all (for
        ``wait_seconds`` at most: they are on the ledger either way). Returns them as
        posted, for ``_account_with``. One command's entries are of one instant: a charge
        and its share, or a void of both, never fall on two business days either side of
        the clinic's midnight."""
        now = self.clock.now()
        posted: list[Posted] = []
        for entry in entries:
            event = ev.make_event(entry, clinic_id=clinic_id, source="billing",
                                  occurred_at=now, correlation_id=visit_id,
                                  event_id=entry.entry_id)
            await self.publish(ev.encode(event), self.ledger_topic, clinic_id.encode())
            posted.append(Posted(entry, event.event_type, now, UNPROJECTED + len(posted)))
        await self._projected(clinic_id, [e.entry_id for e in entries])
        return posted

    async def _account_with(self, clinic_id: str, visit_id: str,
                            posted: Sequence[Posted]) -> Account:
        """The visit's account with what this command just posted, projected yet or not:
        a payment on the ledger is answered with its receipt, never a 404 that invites
        the clerk to take it again."""
        entries = await self.store.visit_entries(clinic_id, visit_id)
        known = {p.entry_id for p in entries}
        return account_of(visit_id, [*entries, *(p for p in posted if p.entry_id not in known)])

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
        publish ``patient.checked_out`` on the floor while the floor has the visit open.
        Unknown CPT codes: ``UnknownServices`` (a ``Rejected``), nothing published; a visit
        the clinic does not know: ``NotFound``; a visit cancelled or left: ``Conflict``.

        ``floor_event_id``: the checkout was read from the floor (published by another
        client): nothing is published there, and an event that already priced a charge
        (even one voided since) prices nothing again."""
        schedule = self.fees.current()
        unknown = schedule.unknown_codes(clinic_id, cpt_codes)
        if unknown:
            raise UnknownServices(clinic_id, unknown)
        desk = floor_event_id is None
        if desk:
            # read the clinic's floor as of now: an arrival or a cancellation just made
            await self.floor_barrier(clinic_id)
            await self.known_visit(clinic_id, visit_id, floor_read=True)
        token = await self._locked(clinic_id, visit_id)
        try:
            floor = await self.store.floor_visit(clinic_id, visit_id)
            account = await self.account(clinic_id, visit_id)
            if desk:
                require_checkout_allowed(clinic_id, visit_id, floor)
                require_same_patient(clinic_id, visit_id, floor, patient_ref,
                                     account.patient_ref)
            elif floor.arrived or floor.arrival_undone:
                # another client's checkout of a visit the floor keeps cancelled, left or
                # undone charges nothing (one billing does not know is priced: README)
                require_checkout_allowed(clinic_id, visit_id, floor)
            claimed = desk and await self._claim_end(clinic_id, visit_id, account)
            try:
                return await self._checkout(
                    clinic_id, visit_id, floor, account, schedule, desk=desk,
                    cpt_codes=cpt_codes, icd10_codes=icd10_codes, patient_ref=patient_ref,
                    made_by=made_by, floor_event_id=floor_event_id)
            except BaseException:
                # nothing charged by this call: the visit may still be cancelled (or the
                # checkout retried); a charge posted keeps its claim (the retry publishes)
                if claimed and not (await self.account(clinic_id, visit_id)).active(
                        ChargePosted):
                    await self.visit_ends.release(  # type: ignore[union-attr]
                        clinic_id, visit_id, "checked_out")
                raise
        finally:
            await self.store.unlock_visit(clinic_id, visit_id, token)

    async def visit_end_undone(self, clinic_id: str, visit_id: str) -> None:
        """The floor undid the visit's end (its cancel or checkout): the visit-end claim
        its end took is given back, so the visit can be checked out (or cancelled) again,
        and roomed or seen by flow."""
        if self.visit_ends is not None:
            for kind in ("cancelled", "checked_out"):
                await self.visit_ends.release(clinic_id, visit_id, kind)  # type: ignore[arg-type]

    async def _claim_end(self, clinic_id: str, visit_id: str, account: Account) -> bool:
        """Take the visit-end claim for a desk checkout (``Conflict`` ``visit_ended`` when
        a cancel holds it). True: taken now by a visit not charged yet (given back if this
        checkout charges nothing)."""
        if self.visit_ends is None:
            return False
        held = await self.visit_ends.claim(clinic_id, visit_id, "checked_out")
        if held in ("roomed", "seen"):  # flow is publishing a rooming or provider in of it
            raise Conflict(f"visit {visit_id} of clinic {clinic_id} is being {held} right "
                           "now: try the checkout again in a moment", code="visit_busy")
        if held is not None:
            raise Conflict(f"visit {visit_id} of clinic {clinic_id} was cancelled at "
                           f"check-in ({held.replace('_', ' ')}) as it was being checked "
                           "out: it cannot be checked out", code="visit_ended")
        return not account.active(ChargePosted)

    async def _checkout(self, clinic_id: str, visit_id: str, floor: FloorVisit,
                        account: Account, schedule: FeeSchedule, *, desk: bool,
                        cpt_codes: Sequence[str], icd10_codes: Sequence[str],
                        patient_ref: str | None, made_by: str,
                        floor_event_id: str | None) -> CheckoutResult:
        """The checkout priced, posted and published, the visit locked (``checkout``)."""
        patient_ref = patient_ref or floor.patient_ref
        key = checkout_key(account)
        checkout_event_id = floor_event_id or stable_id("out", key)
        if desk and floor.checkout_published == checkout_event_id and not account.active(
                ChargePosted):
            # a no-charge checkout (no codes) ended the visit with this id: a charge after
            # it is a checkout of its own, so its replay does not answer for that end
            checkout_event_id = stable_id("out", f"{key}:after-end")
        priced = next((p for p in account.entries if isinstance(p.entry, ChargePosted)
                       and p.entry.checkout_event_id == floor_event_id), None)
        if floor_event_id and priced is not None and any(
                isinstance(p.entry, PatientSharePosted)
                and p.entry.charge_entry_id == priced.entry_id for p in account.entries):
            # its charge and its share are on the ledger; a charge alone (an instance that
            # died between the two) is priced again below, which posts the missing share
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
            if cpt_codes and sorted(codes) != sorted(cpt_codes) and desk:
                raise Conflict(
                    f"visit {visit_id} is already charged for {', '.join(codes)}: "
                    "a manager voids that charge before it is charged again")
        if decision.entries:
            await self._post(clinic_id, decision.entries, visit_id)
            account = await self.account(clinic_id, visit_id)
        posted = tuple(e.entry_id for e in decision.entries)
        published = desk and publishes_checkout(floor)
        if decision.outcome == "duplicate":
            # a replay answers as the checkout it repeats did: the entries it posted,
            # and whether it ended the visit on the floor (its event published)
            posted = tuple(p.entry_id for p in account.active(ChargePosted,
                                                               PatientSharePosted))
            ended_before = desk and floor.checkout_published == checkout_event_id
        else:
            ended_before = False
        if published:
            # the floor event follows the ledger: a crash in between is healed by a
            # retry, which finds the charge and publishes this same event (same id)
            event = ev.make_event(
                ev.PatientCheckedOut(visit_id=visit_id, cpt_codes=list(cpt_codes),
                                     icd10_codes=list(icd10_codes)),
                clinic_id=clinic_id, source="billing", occurred_at=self.clock.now(),
                correlation_id=visit_id, event_id=checkout_event_id)
            await self.publish(ev.encode(event), self.floor_topic, clinic_id.encode())
            await self.store.checkout_published(clinic_id, visit_id, checkout_event_id)
        return CheckoutResult(decision.outcome, visit_id, checkout_event_id, posted,
                              account, decision.reason, published,
                              published or ended_before)

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

    async def record_coverage(self, clinic_id: str, visit_id: str, *,
                              patient_ref: str | None, copay_cents: int,
                              coinsurance_basis_points: int, deductible_remaining_cents: int,
                              self_pay: bool, made_by: str) -> tuple[Account, bool]:
        """The patient's cost-sharing for the visit (the latest recorded is the one used).
        The natural key is the coverage itself: the same terms as the standing coverage
        post nothing. Returns the account and whether nothing was posted (a replay)."""
        floor = await self.known_visit(clinic_id, visit_id, takes_money=True)
        token = await self._locked(clinic_id, visit_id)
        try:
            account = await self.account(clinic_id, visit_id)
            require_same_patient(clinic_id, visit_id, floor, patient_ref, account.patient_ref)
            standing = account.coverage
            entry = CoverageRecorded(  # left out, the patient is the arrival's (the ledger's)
                entry_id="cov-planned", visit_id=visit_id,
                patient_ref=patient_ref or floor.patient_ref or account.patient_ref,
                copay_cents=copay_cents, coinsurance_basis_points=coinsurance_basis_points,
                deductible_remaining_cents=deductible_remaining_cents, self_pay=self_pay,
                reason="coverage captured", made_by=made_by)
            if standing is not None and _same_terms(standing.entry, entry):
                return account, True
            entry = entry.model_copy(update={"entry_id": stable_id(
                "cov", clinic_id, visit_id, standing.entry_id if standing else "-",
                _terms_digest(entry))})
            await self._post(clinic_id, [entry], visit_id)
            return await self.account(clinic_id, visit_id), False
        finally:
            await self.store.unlock_visit(clinic_id, visit_id, token)

    async def pay(self, clinic_id: str, visit_id: str, *, entry_id: str,
                  method: PaymentMethod, amount_cents: int, reference: str | None,
                  reason: str, made_by: str) -> tuple[Receipt, bool]:
        """A payment; returns its receipt and whether ``entry_id`` (from the request's
        Idempotency-Key) was taken already (a replay: nothing posted; a different payment
        under the same id is refused)."""
        floor = await self.known_visit(clinic_id, visit_id, takes_money=True)
        token = await self._locked(clinic_id, visit_id)
        try:
            account = await self.account(clinic_id, visit_id)
            payment = plan_payment(account, entry_id=entry_id, method=method,
                                   amount_cents=amount_cents, reference=reference,
                                   reason=reason, made_by=made_by,
                                   patient_ref=floor.patient_ref)
            existing = account.find(entry_id)
            if existing is not None:
                _same_request(existing.entry, payment, "payment")
                return await self._receipt_of(clinic_id, account, entry_id), True
            posted = await self._post(clinic_id, [payment], visit_id)
            account = await self._account_with(clinic_id, visit_id, posted)
            return await self._receipt_of(clinic_id, account, entry_id), False
        finally:
            await self.store.unlock_visit(clinic_id, visit_id, token)

    async def refund(self, clinic_id: str, visit_id: str, *, entry_id: str,
                     payment_entry_id: str, amount_cents: int, reason: str,
                     made_by: str) -> tuple[Receipt, bool]:
        """A refund of (part of) a payment; returns its receipt and whether it is a replay
        (``entry_id`` from the request's Idempotency-Key)."""
        await self.known_visit(clinic_id, visit_id)
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
                return await self._receipt_of(clinic_id, account, entry_id), True
            refund = plan_refund(account, entry_id=entry_id,
                                 payment_entry_id=payment_entry_id,
                                 amount_cents=amount_cents, reason=reason, made_by=made_by)
            posted = await self._post(clinic_id, [refund], visit_id)
            account = await self._account_with(clinic_id, visit_id, posted)
            return await self._receipt_of(clinic_id, account, entry_id), False
        finally:
            await self.store.unlock_visit(clinic_id, visit_id, token)

    async def void(self, clinic_id: str, visit_id: str, *, target_entry_id: str,
                   reason: str, made_by: str) -> tuple[Account, bool]:
        """Void an entry. The natural key is the entry voided (an entry is voided once):
        a void of an entry already voided posts nothing (but the void of a charge's share
        that a cut void left standing). Returns the account and whether
        nothing was posted (a replay)."""
        await self.known_visit(clinic_id, visit_id)
        token = await self._locked(clinic_id, visit_id)
        try:
            account = await self.account(clinic_id, visit_id)
            void_id = stable_id("void", clinic_id, visit_id, target_entry_id)
            target = account.find(target_entry_id)
            if target is not None and not account.is_active(target):
                # voided already; a void cut between a charge's and its share's (the
                # process stopped, Kafka refused) leaves the share standing: posted now
                rest = finish_void(account, target_entry_id=target_entry_id,
                                   void_id=void_id, reason=reason, made_by=made_by)
                if not rest:
                    return account, True
                await self._post(clinic_id, rest, visit_id)
                return await self.account(clinic_id, visit_id), False
            voids = plan_void(account, target_entry_id=target_entry_id, void_id=void_id,
                              reason=reason, made_by=made_by)
            await self._post(clinic_id, voids, visit_id)
            return await self.account(clinic_id, visit_id), False
        finally:
            await self.store.unlock_visit(clinic_id, visit_id, token)

    async def reprice(self, clinic_id: str, visit_id: str, *, reason: str,
                      made_by: str) -> tuple[Account, bool]:
        """Post the visit's patient share again under its latest coverage (the standing
        share is voided). The natural key is that coverage: a visit whose standing shares
        were priced under it already posts nothing (and answers ``True``, a replay)."""
        await self.known_visit(clinic_id, visit_id, takes_money=True)
        token = await self._locked(clinic_id, visit_id)
        try:
            account = await self.account(clinic_id, visit_id)
            coverage = account.current_coverage()
            under = coverage.entry_id if coverage is not None and not coverage.self_pay \
                else None
            shares = account.active(PatientSharePosted)
            charges = account.active(ChargePosted)
            if charges and shares and len(shares) == len(charges) and all(
                    s.entry.coverage_entry_id == under  # type: ignore[attr-defined]
                    for s in shares):
                return account, True
            command_id = stable_id("rep", clinic_id, visit_id, under or "-",
                                   *sorted(s.entry_id for s in shares))
            entries = plan_reprice(account, command_id=command_id, reason=reason,
                                   made_by=made_by)
            entries = [e for e in entries if account.find(e.entry_id) is None]
            if entries:
                await self._post(clinic_id, entries, visit_id)
                account = await self.account(clinic_id, visit_id)
            return account, False
        finally:
            await self.store.unlock_visit(clinic_id, visit_id, token)

    async def count_drawer(self, clinic_id: str, *, business_date: date,
                           counted: dict[str, int | None], made_by: str) -> DrawerCountResult:
        """Declare a business day's count (a day of the clinic that has begun: ``Rejected``
        otherwise). The natural key is the day and the amounts: the same amounts as the
        day's standing count post nothing (a replay); a different count is a recount."""
        self.require_business_day(clinic_id, business_date, "business_date",
                                  "a drawer count")
        await self.barrier(clinic_id)
        counts = await self.store.drawer_counts(clinic_id, business_date)
        standing = max(counts, key=lambda p: p.position) if counts else None
        entry = drawer_count_entry(
            entry_id=stable_id("cnt", clinic_id, business_date.isoformat(),
                               standing.entry_id if standing else "-",
                               *(str(counted.get(k)) for k in ("cash", "check", "card"))),
            business_date=business_date, counted=counted, reason="end-of-day count",
            made_by=made_by)
        if standing is not None and isinstance(standing.entry, DrawerCounted) and (
                _same_terms(standing.entry, entry)):
            return DrawerCountResult(standing.entry_id, True)
        await self._post(clinic_id, [entry], None)
        return DrawerCountResult(entry.entry_id, False)

    # --------------------------------------------------------------- reads

    async def visit_account(self, clinic_id: str, visit_id: str) -> Account:
        """The account of a visit of the clinic (``NotFound`` when it does not know it)."""
        await self.known_visit(clinic_id, visit_id)
        return await self.account(clinic_id, visit_id)

    async def receipt(self, clinic_id: str, visit_id: str, entry_id: str) -> Receipt:
        return await self._receipt_of(clinic_id, await self.account(clinic_id, visit_id),
                                      entry_id)

    async def _receipt_of(self, clinic_id: str, account: Account, entry_id: str) -> Receipt:
        clinic = self.clinic(clinic_id)
        floor = await self.store.floor_visit(clinic_id, account.visit_id)
        provider = floor.provider_id
        heading = ReceiptHeading(clinic.display_name, clinic.zone.key, provider,
                                 clinic.provider_name(provider) if provider else None)
        return receipt_of(clinic_id, account, entry_id, heading)

    async def patient_accounts(self, clinic_id: str, patient_ref: str) -> list[Account]:
        """The patient's visits on the clinic's ledger (``NotFound`` when there is none)."""
        visits = await self.store.patient_visits(clinic_id, patient_ref)
        if not visits:
            raise NotFound(f"patient {patient_ref} has no visit on the ledger of clinic "
                           f"{clinic_id}", code="unknown_patient")
        histories = await self.store.visits_entries(clinic_id, visits)
        return [account_of(v, histories.get(v, [])) for v in visits]

    def day_bounds(self, clinic_id: str, business_date: date) -> tuple[datetime, datetime]:
        """[start, end) of the clinic's business day, in UTC."""
        return business_day(self.clinic(clinic_id).zone.key, business_date)

    def require_business_day(self, clinic_id: str, business_date: date, field: str,
                             what: str, *, future_out_of_range: bool = False) -> None:
        """A day of the clinic that has begun, at most ``DRAWER_COUNT_DAYS`` before its
        today (its own clock): ``Rejected`` (422 ``day_not_begun`` / ``date_out_of_range``)
        otherwise (``future_out_of_range``: a day to come is ``date_out_of_range`` too).
        The window of drawer counts and reconciliations alike."""
        today = self.today(clinic_id)
        if business_date > today and not future_out_of_range:
            raise Rejected(f"{field} {business_date.isoformat()} has not begun at "
                           f"clinic {clinic_id} (its day is {today.isoformat()} in "
                           f"{self.clinic(clinic_id).zone.key})", code="day_not_begun")
        earliest = today - timedelta(days=DRAWER_COUNT_DAYS)
        if not earliest <= business_date <= today:
            raise Rejected(f"{field} {business_date.isoformat()} is out of range: {what} "
                           f"is for a day from {earliest.isoformat()} to "
                           f"{today.isoformat()} (clinic {clinic_id}'s today, "
                           f"{self.clinic(clinic_id).zone.key})", code="date_out_of_range")

    async def reconciliation(self, clinic_id: str, business_date: date | None = None,
                             counted: dict[str, int] | None = None) -> Reconciliation:
        """The clinic's day (default: its today) from the Redis projection. Open balances
        carried from earlier days are the visits owing now, at what they owed at the end of
        the day (a visit settled since is not listed for a past day)."""
        if business_date is not None:
            self.require_business_day(clinic_id, business_date, "date", "a reconciliation",
                                      future_out_of_range=True)
        business_date = business_date or self.today(clinic_id)
        starts, ends = self.day_bounds(clinic_id, business_date)
        today = await self.store.entries_between(clinic_id, starts, ends)
        carried = await self.store.open_visits(clinic_id)
        visits = {p.visit_id for p in today if p.visit_id} | set(carried)
        histories = await self.store.visits_entries(clinic_id, visits)
        counts = await self.store.drawer_counts(clinic_id, business_date)
        entries = [*today, *counts, *(p for h in histories.values() for p in h)]
        return reconcile(clinic_id=clinic_id, business_date=business_date,
                         timezone=self.clinic(clinic_id).zone.key, starts_at=starts,
                         ends_at=ends, entries=entries, source="projection",
                         counted=counted, carried=carried)


def _reused(what: str) -> Rejected:
    return Rejected(f"Idempotency-Key was already used for a different {what}")


_IGNORED = {"entry_id", "reason", "made_by"}


def _same_request(existing: LedgerEntry, planned: LedgerEntry, what: str) -> None:
    """Refuse a command whose entry id (from its Idempotency-Key) is on the ledger with
    other contents: the same key for a different request."""
    # the patient is the visit's (the ledger's, else the arrival's), not the request's:
    # a copay taken before the checkout and retried after it is the same payment
    ignore = {"reason", "made_by", "patient_ref"}
    if (type(existing) is not type(planned)
            or existing.model_dump(exclude=ignore) != planned.model_dump(exclude=ignore)):
        raise _reused(what)


def _same_terms(existing: LedgerEntry, planned: LedgerEntry) -> bool:
    """Whether two entries say the same thing (ids, reasons and who made them aside)."""
    return (type(existing) is type(planned)
            and existing.model_dump(exclude=_IGNORED) == planned.model_dump(exclude=_IGNORED))


def _terms_digest(entry: LedgerEntry) -> str:
    return hashlib.sha256(entry.model_dump_json(exclude=_IGNORED).encode()).hexdigest()[:16]


def required_key(idempotency_key: str | None, what: str) -> str:
    """The request's Idempotency-Key, or ``PreconditionRequired`` (428) naming the header:
    without it a retried payment could not be told from a second one."""
    if not idempotency_key:
        raise PreconditionRequired(
            f"the Idempotency-Key header is required for a {what}: send a new unique key "
            f"(a UUID) with each {what}, and the same key again when retrying it",
            code="idempotency_key_required")
    return idempotency_key


def keyed_entry_id(prefix: str, clinic_id: str, visit_id: str, idempotency_key: str) -> str:
    """A command's entry id derived from its Idempotency-Key (a retry posts the same id)."""
    return stable_id(prefix, clinic_id, visit_id, idempotency_key)
