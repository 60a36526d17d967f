"""Billing's domain: fee schedules, prices, the patient's share, accounts, receipts and
end-of-day reconciliation. Pure: no I/O, no clock (time comes in as an argument).

Money is integer cents everywhere. The ledger is a list of immutable entries
(``shared.events_billing``); an account, a receipt or a day's reconciliation is a
fold over entries, so the same code answers from the Redis projection and from
a replay of the ledger topic, and both give the same cents.

Rules, in the clinic's words:

* **Price.** Each CPT code at checkout is one line at the clinic's fee (a code
  listed twice is two lines). A checkout with a code the clinic's schedule does
  not list is not priced at all (never a partial charge).
* **Patient share** (integer cents, no floats): copay first (capped at the
  charge), then the remaining deductible on what is left, then coinsurance on
  what is left after that, ``rest * basis_points / 10_000`` rounded half up to
  the cent (a half cent goes to the patient). The share never exceeds the
  charge. No coverage recorded, or ``self_pay``: the patient's share is the
  whole charge. The payer is expected to pay the charge minus the share.
* **Balance** of a visit = its patient shares - payments + refunds, counting only
  entries not voided. Negative is a credit owed to the patient.
* **Voids** take an entry out of every total; a void of a void means nothing. A
  payment with refunds standing cannot be voided (void the refunds first); voiding
  a charge voids its patient share with it.
* **Days.** An entry counts on the business day (clinic time zone) it was made:
  a refund or a void made on Tuesday changes Tuesday's totals.
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Literal

from shared.events_billing import (
    CPT_PATTERN,
    PAYMENT_METHODS,
    SYSTEM,
    VOIDABLE,
    ChargeLine,
    ChargePosted,
    CoverageRecorded,
    DrawerCounted,
    EntryVoided,
    LedgerEntry,
    PatientSharePosted,
    PaymentMethod,
    PaymentRecorded,
    PaymentRefunded,
)

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
_CPT = re.compile(CPT_PATTERN)
ICD10_PATTERN = r"^[A-TV-Z][0-9][0-9A-Z](\.[0-9A-Z]{1,4})?$"
_AMOUNT = re.compile(r"^(?P<units>[0-9]{1,7})(\.(?P<cents>[0-9]{1,2}))?$")
_CARD_NUMBER = re.compile(r"[0-9][0-9 -]{10,}[0-9]")
_REFERENCE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 #./_-]{0,39}$")
ALL_CLINICS = "*"


class Refused(ValueError):
    """A command the ledger cannot take; ``status`` is the HTTP status that says why."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


# ------------------------------------------------------------------- money


def parse_amount(text: str) -> int:
    """``"125"``, ``"125.5"`` or ``"125.50"`` (dollars) -> 12550 cents. No floats involved."""
    match = _AMOUNT.match(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not an amount like 125.00")
    cents = (match.group("cents") or "0").ljust(2, "0")
    return int(match.group("units")) * 100 + int(cents)


def format_cents(cents: int) -> str:
    """12345 -> ``"123.45"``; -500 -> ``"-5.00"``; thousands separated: ``"1,234.00"``."""
    sign = "-" if cents < 0 else ""
    units, rest = divmod(abs(cents), 100)
    return f"{sign}{units:,}.{rest:02d}"


def stable_id(prefix: str, *parts: str) -> str:
    """A deterministic entry id made from the ids it derives from (same input, same id)."""
    if len(parts) == 1 and len(parts[0]) <= 56 and _ID.match(parts[0]):
        return f"{prefix}-{parts[0]}"
    digest = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:40]
    return f"{prefix}-h{digest}"


# ------------------------------------------------------------ fee schedule


class FeeScheduleError(ValueError):
    """A fee schedule that cannot be used; the message names the file and the bad lines."""


@dataclass(frozen=True, slots=True)
class Fee:
    cpt_code: str
    description: str
    fee_cents: int


class UnknownServices(Refused):
    """CPT codes the clinic's fee schedule does not list."""

    def __init__(self, clinic_id: str, codes: Sequence[str]) -> None:
        listed = ", ".join(codes)
        super().__init__(
            f"CPT code(s) {listed} not in clinic {clinic_id!r}'s fee schedule", status=422
        )
        self.codes = tuple(codes)


@dataclass(frozen=True)
class FeeSchedule:
    """Fees per clinic (``*`` applies to every clinic; a clinic's own line wins)."""

    fees: Mapping[str, Mapping[str, Fee]]
    source: str = "(memory)"

    def for_clinic(self, clinic_id: str) -> dict[str, Fee]:
        return {**self.fees.get(ALL_CLINICS, {}), **self.fees.get(clinic_id, {})}

    def unknown_codes(self, clinic_id: str, codes: Iterable[str]) -> list[str]:
        known = self.for_clinic(clinic_id)
        return list(dict.fromkeys(c for c in codes if c not in known))

    def lines(self, clinic_id: str, codes: Sequence[str]) -> list[ChargeLine]:
        """One charge line per code, in the order given. Raises ``UnknownServices``."""
        unknown = self.unknown_codes(clinic_id, codes)
        if unknown:
            raise UnknownServices(clinic_id, unknown)
        known = self.for_clinic(clinic_id)
        return [
            ChargeLine(cpt_code=c, description=known[c].description, fee_cents=known[c].fee_cents)
            for c in codes
        ]


FEE_COLUMNS = ("clinic", "cpt_code", "description", "fee")


def parse_fee_schedule(text: str, source: str = "fee schedule") -> FeeSchedule:
    """Read a fee schedule CSV (``clinic,cpt_code,description,fee``; fee in dollars such
    as ``125.00``; ``#`` starts a comment line). Raises ``FeeScheduleError`` naming
    every bad line (up to 20)."""
    problems: list[str] = []
    fees: dict[str, dict[str, Fee]] = {}
    first_seen: dict[tuple[str, str], int] = {}
    header: list[str] | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            cells = [c.strip() for c in next(csv.reader([line]))]
        except csv.Error as exc:
            problems.append(f"line {number}: not CSV ({exc})")
            continue
        if header is None:
            header = [c.lower() for c in cells]
            missing = [c for c in FEE_COLUMNS if c not in header]
            if missing:
                raise FeeScheduleError(
                    f"{source} line {number}: header must name the columns "
                    f"{','.join(FEE_COLUMNS)} (missing: {', '.join(missing)})"
                )
            continue
        if len(cells) != len(header):
            problems.append(f"line {number}: {len(cells)} cells, expected {len(header)}")
            continue
        row = dict(zip(header, cells, strict=True))
        clinic, code, description = row["clinic"], row["cpt_code"].upper(), row["description"]
        if clinic != ALL_CLINICS and not _ID.match(clinic):
            problems.append(f"line {number}: clinic {clinic!r} is not a clinic id (or *)")
            continue
        if not _CPT.match(code):
            problems.append(f"line {number}: CPT code {row['cpt_code']!r} is not 5 characters "
                            "like 99213 (four digits, then a digit or letter)")
            continue
        if len(description) > 120:
            problems.append(f"line {number}: description longer than 120 characters")
            continue
        try:
            cents = parse_amount(row["fee"])
        except ValueError:
            problems.append(f"line {number}: fee {row['fee']!r} is not an amount like 125.00")
            continue
        seen = first_seen.get((clinic, code))
        if seen is not None:
            problems.append(f"line {number}: {code} for clinic {clinic} is already on line {seen}")
            continue
        first_seen[(clinic, code)] = number
        fees.setdefault(clinic, {})[code] = Fee(code, description, cents)
    if header is None:
        raise FeeScheduleError(f"{source}: empty (expected a header {','.join(FEE_COLUMNS)})")
    if problems:
        shown = problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20
                                 else [])
        raise FeeScheduleError(f"{source}: " + "; ".join(shown))
    if not fees:
        raise FeeScheduleError(f"{source}: no fees listed")
    return FeeSchedule(fees=fees, source=source)


# -------------------------------------------------------- coverage, share


@dataclass(frozen=True, slots=True)
class Coverage:
    copay_cents: int = 0
    coinsurance_basis_points: int = 0
    deductible_remaining_cents: int = 0
    self_pay: bool = False
    entry_id: str | None = None

    @classmethod
    def of(cls, entry: CoverageRecorded) -> Coverage:
        return cls(entry.copay_cents, entry.coinsurance_basis_points,
                   entry.deductible_remaining_cents, entry.self_pay, entry.entry_id)


@dataclass(frozen=True, slots=True)
class Share:
    """A charge split between the patient and the payer."""

    charges_cents: int
    copay_cents: int = 0
    deductible_cents: int = 0
    coinsurance_cents: int = 0
    self_pay: bool = False

    @property
    def amount_cents(self) -> int:
        """What the patient owes."""
        if self.self_pay:
            return self.charges_cents
        return self.copay_cents + self.deductible_cents + self.coinsurance_cents

    @property
    def insurance_cents(self) -> int:
        return self.charges_cents - self.amount_cents


def patient_share(charges_cents: int, coverage: Coverage | None) -> Share:
    """Split ``charges_cents`` (module docstring: copay, then deductible, then coinsurance
    rounded half up to the cent). No coverage, or self-pay: the patient owes it all."""
    if charges_cents < 0:
        raise ValueError("charges cannot be negative")
    if coverage is None or coverage.self_pay:
        return Share(charges_cents, self_pay=True)
    copay = min(coverage.copay_cents, charges_cents)
    rest = charges_cents - copay
    deductible = min(coverage.deductible_remaining_cents, rest)
    rest -= deductible
    coinsurance = (rest * coverage.coinsurance_basis_points + 5_000) // 10_000
    return Share(charges_cents, copay, deductible, coinsurance)


# --------------------------------------------------------------- entries


@dataclass(frozen=True, slots=True)
class Posted:
    """One ledger entry as the ledger holds it: when it was made and where it sits."""

    entry: LedgerEntry
    event_type: str
    occurred_at: datetime
    position: int  # offset on the clinic's ledger partition: the ledger's order

    @property
    def entry_id(self) -> str:
        return self.entry.entry_id

    @property
    def visit_id(self) -> str | None:
        return getattr(self.entry, "visit_id", None)

    @property
    def amount_cents(self) -> int:
        return int(getattr(self.entry, "amount_cents", 0))


def same_amounts(a: Posted, b: Posted) -> bool:
    """Whether two copies of one entry id say the same thing about money."""
    return (a.event_type == b.event_type and a.amount_cents == b.amount_cents
            and a.visit_id == b.visit_id)


@dataclass(frozen=True)
class PaymentView:
    posted: Posted
    refunded_cents: int
    voided: bool

    @property
    def payment(self) -> PaymentRecorded:
        assert isinstance(self.posted.entry, PaymentRecorded)
        return self.posted.entry

    @property
    def refundable_cents(self) -> int:
        return 0 if self.voided else self.payment.amount_cents - self.refunded_cents


@dataclass(frozen=True)
class Account:
    """A visit's money, folded from its entries."""

    visit_id: str
    patient_ref: str | None
    entries: tuple[Posted, ...]
    voided: frozenset[str]
    coverage: Posted | None
    charges_cents: int
    patient_share_cents: int
    paid_cents: int
    refunded_cents: int

    @property
    def balance_cents(self) -> int:
        """What the patient still owes (negative: a credit)."""
        return self.patient_share_cents - self.paid_cents + self.refunded_cents

    @property
    def insurance_cents(self) -> int:
        return self.charges_cents - self.patient_share_cents

    def find(self, entry_id: str) -> Posted | None:
        return next((p for p in self.entries if p.entry_id == entry_id), None)

    def is_active(self, posted: Posted) -> bool:
        return posted.entry_id not in self.voided

    def active(self, *types: type[LedgerEntry]) -> list[Posted]:
        return [p for p in self.entries if isinstance(p.entry, types) and self.is_active(p)]

    @property
    def lines(self) -> list[ChargeLine]:
        return [line for p in self.active(ChargePosted)
                for line in p.entry.lines]  # type: ignore[attr-defined]

    def payments(self) -> list[PaymentView]:
        refunded: dict[str, int] = {}
        for p in self.active(PaymentRefunded):
            assert isinstance(p.entry, PaymentRefunded)
            refunded[p.entry.payment_entry_id] = (
                refunded.get(p.entry.payment_entry_id, 0) + p.entry.amount_cents)
        return [PaymentView(p, refunded.get(p.entry_id, 0), not self.is_active(p))
                for p in self.entries if isinstance(p.entry, PaymentRecorded)]

    @property
    def priced(self) -> bool:
        return bool(self.active(ChargePosted))

    def current_coverage(self) -> Coverage | None:
        if self.coverage is None:
            return None
        assert isinstance(self.coverage.entry, CoverageRecorded)
        return Coverage.of(self.coverage.entry)


def voided_ids(entries: Iterable[Posted]) -> frozenset[str]:
    """Ids taken out by a void (a void of a void is ignored: it cannot revive anything)."""
    entries = list(entries)
    voids = {p.entry_id for p in entries if isinstance(p.entry, EntryVoided)}
    return frozenset(
        p.entry.voided_entry_id for p in entries
        if isinstance(p.entry, EntryVoided) and p.entry.voided_entry_id not in voids
    )


def account(visit_id: str, entries: Iterable[Posted]) -> Account:
    """Fold a visit's entries (any order; duplicates of an id count once) into its account."""
    unique: dict[str, Posted] = {}
    for posted in sorted(entries, key=lambda p: p.position):
        unique.setdefault(posted.entry_id, posted)
    ordered = tuple(unique.values())
    voided = voided_ids(ordered)
    live = [p for p in ordered if p.entry_id not in voided]
    patient_ref = next((getattr(p.entry, "patient_ref", None) for p in ordered
                        if getattr(p.entry, "patient_ref", None)), None)
    coverage = next((p for p in reversed(ordered) if isinstance(p.entry, CoverageRecorded)),
                    None)

    def total(kind: type[LedgerEntry]) -> int:
        return sum(p.amount_cents for p in live if isinstance(p.entry, kind))

    return Account(
        visit_id=visit_id,
        patient_ref=patient_ref,
        entries=ordered,
        voided=voided,
        coverage=coverage,
        charges_cents=total(ChargePosted),
        patient_share_cents=total(PatientSharePosted),
        paid_cents=total(PaymentRecorded),
        refunded_cents=total(PaymentRefunded),
    )


# -------------------------------------------------------------- commands


def check_reference(method: PaymentMethod, reference: str | None) -> str | None:
    """The reference to keep for a payment; refuses a card number (never stored)."""
    reference = (reference or "").strip() or None
    if reference is not None:
        if _CARD_NUMBER.search(reference):
            raise Refused("reference looks like a card number: keep only the terminal's "
                          "authorization reference or the last 4 digits", 422)
        if not _REFERENCE.match(reference):
            raise Refused("reference: 1-40 letters, digits, spaces or # . / _ -", 422)
    if method in ("check", "card") and reference is None:
        what = "the check number" if method == "check" else "the card authorization reference"
        raise Refused(f"a {method} payment needs a reference ({what})", 422)
    return reference


def plan_payment(account: Account, *, entry_id: str, method: PaymentMethod, amount_cents: int,
                 reference: str | None, reason: str, made_by: str) -> PaymentRecorded:
    """A payment for the visit. Paying before the visit is priced (a copay at check-in) or
    more than the balance is allowed: the excess shows as a credit to refund."""
    if method not in PAYMENT_METHODS:
        raise Refused(f"unknown payment method {method!r}", 422)
    if amount_cents <= 0:
        raise Refused("amount_cents must be more than 0", 422)
    return PaymentRecorded(entry_id=entry_id, visit_id=account.visit_id,
                           patient_ref=account.patient_ref, method=method,
                           amount_cents=amount_cents,
                           reference=check_reference(method, reference),
                           reason=reason, made_by=made_by)


def plan_refund(account: Account, *, entry_id: str, payment_entry_id: str, amount_cents: int,
                reason: str, made_by: str) -> PaymentRefunded:
    """A refund of (part of) one payment, by that payment's method."""
    posted = account.find(payment_entry_id)
    if posted is None or not isinstance(posted.entry, PaymentRecorded):
        raise Refused(f"no payment {payment_entry_id} on visit {account.visit_id}", 404)
    view = next(v for v in account.payments() if v.posted.entry_id == payment_entry_id)
    if view.voided:
        raise Refused(f"payment {payment_entry_id} was voided: there is nothing to refund")
    if amount_cents <= 0:
        raise Refused("amount_cents must be more than 0", 422)
    if amount_cents > view.refundable_cents:
        raise Refused(f"refund of {format_cents(amount_cents)} is more than the "
                      f"{format_cents(view.refundable_cents)} left to refund on payment "
                      f"{payment_entry_id}")
    return PaymentRefunded(entry_id=entry_id, visit_id=account.visit_id,
                           patient_ref=account.patient_ref, payment_entry_id=payment_entry_id,
                           method=view.payment.method, amount_cents=amount_cents,
                           reason=reason, made_by=made_by)


def plan_void(account: Account, *, target_entry_id: str, void_id: str, reason: str,
              made_by: str) -> list[EntryVoided]:
    """The voids that take ``target_entry_id`` out (a charge takes its share with it)."""
    target = account.find(target_entry_id)
    if target is None:
        raise Refused(f"no entry {target_entry_id} on visit {account.visit_id}", 404)
    if target.event_type not in VOIDABLE:
        raise Refused(f"{target.event_type} entries cannot be voided "
                      "(record coverage again, or count the drawer again)", 422)
    if not account.is_active(target):
        raise Refused(f"entry {target_entry_id} is already voided")
    if isinstance(target.entry, PaymentRecorded):
        view = next(v for v in account.payments() if v.posted.entry_id == target_entry_id)
        if view.refunded_cents:
            raise Refused(f"payment {target_entry_id} has refunds standing: void them first")
    targets = [target]
    if isinstance(target.entry, ChargePosted):
        targets += [p for p in account.active(PatientSharePosted)
                    if p.entry.charge_entry_id == target_entry_id]  # type: ignore[attr-defined]
    return [
        EntryVoided(entry_id=void_id if i == 0 else stable_id("void", void_id, p.entry_id),
                    voided_entry_id=p.entry_id, voided_event_type=p.event_type,
                    visit_id=account.visit_id, patient_ref=account.patient_ref,
                    reason=reason, made_by=made_by)
        for i, p in enumerate(targets)
    ]


def share_entry(account: Account, charge: Posted, *, entry_id: str, reason: str,
                made_by: str) -> PatientSharePosted:
    """The patient's share of ``charge`` under the visit's latest coverage."""
    coverage = account.current_coverage()
    split = patient_share(charge.amount_cents, coverage)
    return PatientSharePosted(
        entry_id=entry_id, visit_id=account.visit_id, patient_ref=account.patient_ref,
        charge_entry_id=charge.entry_id,
        coverage_entry_id=coverage.entry_id if coverage and not coverage.self_pay else None,
        amount_cents=split.amount_cents, copay_cents=split.copay_cents,
        deductible_cents=split.deductible_cents, coinsurance_cents=split.coinsurance_cents,
        reason=reason, made_by=made_by)


def plan_reprice(account: Account, *, command_id: str, reason: str,
                 made_by: str) -> list[LedgerEntry]:
    """Void the visit's standing shares and post them again under its latest coverage."""
    charges = account.active(ChargePosted)
    if not charges:
        raise Refused(f"visit {account.visit_id} has no charge standing: nothing to re-price")
    out: list[LedgerEntry] = []
    for share in account.active(PatientSharePosted):
        out.append(EntryVoided(
            entry_id=stable_id("void", command_id, share.entry_id),
            voided_entry_id=share.entry_id, voided_event_type=share.event_type,
            visit_id=account.visit_id, patient_ref=account.patient_ref,
            reason=reason, made_by=made_by))
    for charge in charges:
        out.append(share_entry(account, charge, entry_id=stable_id("shr", command_id,
                                                                   charge.entry_id),
                               reason=reason, made_by=made_by))
    return out


# ---------------------------------------------------------------- pricer


@dataclass(frozen=True)
class CheckoutDecision:
    """What a checkout does to the ledger: ``entries`` to post, or why nothing."""

    outcome: Literal["priced", "completed", "duplicate", "nothing_to_charge", "unpriceable"]
    entries: tuple[LedgerEntry, ...] = ()
    reason: str = ""


def charge_id_of(checkout_event_id: str) -> str:
    return stable_id("chg", checkout_event_id)


def share_id_of(checkout_event_id: str) -> str:
    return stable_id("shr", checkout_event_id)


def checkout_key(account: Account) -> str:
    """What a visit's next checkout derives its entry ids from: the visit itself, plus how
    many of its charges were voided (a visit re-checked-out after a void is charged anew).
    The same ledger state gives the same key, so a retried checkout posts the same ids."""
    voided_charges = sum(1 for p in account.entries
                         if isinstance(p.entry, ChargePosted) and not account.is_active(p))
    return account.visit_id if voided_charges == 0 else f"{account.visit_id}:{voided_charges}"


def price_checkout(schedule: FeeSchedule, account: Account, *, clinic_id: str,
                   checkout_event_id: str, cpt_codes: Sequence[str],
                   patient_ref: str | None, made_by: str = SYSTEM,
                   key: str | None = None) -> CheckoutDecision:
    """The charge and patient share a checkout posts, with ids derived from ``key``
    (default: the checkout's event id): posting them again (a duplicate request, a
    redelivery, a restart after a crash) posts the same ids, which the ledger applies once.

    ``account`` is the visit as the ledger stands. A checkout already on the ledger
    posts only what is missing of its pair; a visit already charged by another
    checkout is not charged again (undo that checkout first)."""
    charge_id = charge_id_of(key or checkout_event_id)
    share_id = share_id_of(key or checkout_event_id)
    mine = account.find(charge_id)
    if mine is not None:
        if account.find(share_id) is not None or not account.is_active(mine):
            return CheckoutDecision("duplicate", reason=f"checkout already priced ({charge_id})")
        share = share_entry(account, mine, entry_id=share_id, reason="checkout",
                            made_by=made_by)
        return CheckoutDecision("completed", (share,), "patient share was missing")
    standing = account.active(ChargePosted)
    if standing:
        return CheckoutDecision("duplicate", reason=(
            f"visit {account.visit_id} is already charged ({standing[0].entry_id}); "
            "undo that checkout or void its charge first"))
    if not cpt_codes:
        return CheckoutDecision("nothing_to_charge", reason="no services on the checkout")
    try:
        lines = schedule.lines(clinic_id, cpt_codes)
    except UnknownServices as exc:
        return CheckoutDecision("unpriceable", reason=exc.message)
    charge = ChargePosted(entry_id=charge_id, visit_id=account.visit_id,
                          patient_ref=patient_ref or account.patient_ref,
                          checkout_event_id=checkout_event_id, lines=lines,
                          amount_cents=sum(line.fee_cents for line in lines),
                          reason="checkout", made_by=made_by)
    posted = Posted(charge, "charge.posted", datetime.min, 1 << 62)
    with_charge = account_with(account, posted)
    share = share_entry(with_charge, posted, entry_id=share_id, reason="checkout",
                        made_by=made_by)
    return CheckoutDecision("priced", (charge, share))


def undo_checkout(account: Account, *, undone_event_id: str, undo_event_id: str,
                  made_by: str = SYSTEM) -> list[EntryVoided]:
    """Voids for a checkout that was undone on the floor: its charge and standing shares.
    Ids derive from the undo's event id, so a replayed undo voids nothing twice."""
    charge = next((p for p in account.active(ChargePosted)
                   if p.entry.checkout_event_id == undone_event_id),  # type: ignore[attr-defined]
                  None)
    if charge is None:
        return []
    targets = [charge] + [p for p in account.active(PatientSharePosted)
                          if p.entry.charge_entry_id == charge.entry_id]  # type: ignore[attr-defined]
    return [EntryVoided(entry_id=stable_id("void", undo_event_id, p.entry_id),
                        voided_entry_id=p.entry_id, voided_event_type=p.event_type,
                        visit_id=account.visit_id, patient_ref=account.patient_ref,
                        reason="checkout undone on the floor", made_by=made_by)
            for p in targets]


def account_with(account_: Account, *more: Posted) -> Account:
    """The account with entries not yet on the ledger added (as if posted last)."""
    return account(account_.visit_id, [*account_.entries, *more])


# --------------------------------------------------------------- receipts


@dataclass(frozen=True)
class Receipt:
    """A payment or refund, with the visit's account after it."""

    receipt_number: str
    kind: Literal["payment", "refund"]
    clinic_id: str
    visit_id: str
    patient_ref: str | None
    method: PaymentMethod
    amount_cents: int
    reference: str | None
    made_at: datetime
    made_by: str
    reason: str
    voided: bool
    refunds_payment: str | None
    lines: tuple[ChargeLine, ...]
    charges_cents: int
    patient_share_cents: int
    insurance_cents: int
    paid_cents: int
    refunded_cents: int
    balance_cents: int


def mask_reference(reference: str | None) -> str | None:
    """Show only the last four characters of a payment reference on paper."""
    if reference is None:
        return None
    return reference if len(reference) <= 4 else "•" * (len(reference) - 4) + reference[-4:]


def receipt(clinic_id: str, account_: Account, entry_id: str) -> Receipt:
    """The receipt for a payment or refund entry of ``account_``."""
    posted = account_.find(entry_id)
    if posted is None or not isinstance(posted.entry, PaymentRecorded | PaymentRefunded):
        raise Refused(f"no payment or refund {entry_id} on visit {account_.visit_id}", 404)
    entry = posted.entry
    return Receipt(
        receipt_number=entry_id,
        kind="payment" if isinstance(entry, PaymentRecorded) else "refund",
        clinic_id=clinic_id, visit_id=account_.visit_id, patient_ref=account_.patient_ref,
        method=entry.method, amount_cents=entry.amount_cents,
        reference=mask_reference(entry.reference) if isinstance(entry, PaymentRecorded)
        else None,
        made_at=posted.occurred_at, made_by=entry.made_by, reason=entry.reason,
        voided=not account_.is_active(posted),
        refunds_payment=entry.payment_entry_id if isinstance(entry, PaymentRefunded) else None,
        lines=tuple(account_.lines), charges_cents=account_.charges_cents,
        patient_share_cents=account_.patient_share_cents,
        insurance_cents=account_.insurance_cents, paid_cents=account_.paid_cents,
        refunded_cents=account_.refunded_cents, balance_cents=account_.balance_cents)


# ---------------------------------------------------------- reconciliation


@dataclass
class MethodTotals:
    method: PaymentMethod
    payments_cents: int = 0
    payment_count: int = 0
    refunds_cents: int = 0
    refund_count: int = 0
    voided_cents: int = 0  # net effect of voids made that day (payments out, refunds back)
    counted_cents: int | None = None

    @property
    def net_cents(self) -> int:
        """What should be in hand for this method at the end of the day."""
        return self.payments_cents - self.refunds_cents - self.voided_cents

    @property
    def difference_cents(self) -> int | None:
        """Counted minus ledger (negative: short)."""
        return None if self.counted_cents is None else self.counted_cents - self.net_cents

    @property
    def active(self) -> bool:
        return bool(self.payment_count or self.refund_count or self.voided_cents)


@dataclass(frozen=True)
class Discrepancy:
    kind: Literal["drawer_mismatch", "not_counted", "credit_balance", "payment_without_charge",
                  "charge_without_share", "void_target_missing", "entry_conflict"]
    message: str
    amount_cents: int | None = None
    method: str | None = None
    visit_id: str | None = None
    entry_id: str | None = None


@dataclass(frozen=True)
class OpenBalance:
    visit_id: str
    patient_ref: str | None
    charges_cents: int
    patient_share_cents: int
    paid_cents: int
    refunded_cents: int
    balance_cents: int
    carried_over: bool = False  # from an earlier day, untouched on this one


@dataclass(frozen=True)
class DrawerCount:
    entry_id: str
    counted_at: datetime
    made_by: str
    cents: dict[str, int | None]


@dataclass
class Reconciliation:
    """One clinic's day: charges, money in hand by method, open balances, what is off."""

    clinic_id: str
    business_date: date
    timezone: str
    starts_at: datetime
    ends_at: datetime
    source: str
    entries: int = 0
    visits_charged: int = 0
    charges_cents: int = 0
    charges_voided_cents: int = 0
    patient_share_cents: int = 0
    methods: list[MethodTotals] = field(default_factory=list)
    drawer_count: DrawerCount | None = None
    open_balances: list[OpenBalance] = field(default_factory=list)
    discrepancies: list[Discrepancy] = field(default_factory=list)

    @property
    def net_charges_cents(self) -> int:
        return self.charges_cents - self.charges_voided_cents

    @property
    def insurance_expected_cents(self) -> int:
        return self.net_charges_cents - self.patient_share_cents

    @property
    def collected_cents(self) -> int:
        return sum(m.net_cents for m in self.methods)

    @property
    def open_balance_cents(self) -> int:
        return sum(b.balance_cents for b in self.open_balances if b.balance_cents > 0)

    @property
    def credit_balance_cents(self) -> int:
        return -sum(b.balance_cents for b in self.open_balances if b.balance_cents < 0)

    @property
    def reconciled(self) -> bool:
        return not self.discrepancies


def reconcile(*, clinic_id: str, business_date: date, timezone: str, starts_at: datetime,
              ends_at: datetime, entries: Iterable[Posted], source: str,
              conflicts: Sequence[tuple[Posted, Posted]] = (),
              counted: Mapping[str, int] | None = None,
              carried: Iterable[str] = ()) -> Reconciliation:
    """Reconcile a clinic's day [``starts_at``, ``ends_at``).

    ``entries`` must hold the day's entries, the whole history (to the end of the
    day) of every visit touched that day or ``carried``, and the drawer counts for the
    day; more is fine. ``carried``: visits from earlier days whose balance at the end
    of this day is listed too (untouched visits still owing). ``counted`` (cents per
    method) overrides the counted totals on the ledger. ``conflicts`` are pairs of
    copies of one entry id that disagree."""
    unique: dict[str, Posted] = {}
    for posted in sorted(entries, key=lambda p: p.position):
        unique.setdefault(posted.entry_id, posted)
    everything = list(unique.values())
    by_id = {p.entry_id: p for p in everything}
    before_end = [p for p in everything if p.occurred_at < ends_at]
    today = [p for p in before_end if p.occurred_at >= starts_at]
    report = Reconciliation(clinic_id=clinic_id, business_date=business_date,
                            timezone=timezone, starts_at=starts_at, ends_at=ends_at,
                            source=source, entries=len(today))
    methods: dict[str, MethodTotals] = {m: MethodTotals(m) for m in PAYMENT_METHODS}
    voids_today = {p.entry.voided_entry_id for p in today  # type: ignore[attr-defined]
                   if isinstance(p.entry, EntryVoided)}
    charged: set[str] = set()
    for posted in today:
        entry = posted.entry
        if isinstance(entry, ChargePosted):
            report.charges_cents += entry.amount_cents
            charged.add(entry.visit_id)
        elif isinstance(entry, PatientSharePosted):
            report.patient_share_cents += entry.amount_cents
        elif isinstance(entry, PaymentRecorded):
            methods[entry.method].payments_cents += entry.amount_cents
            methods[entry.method].payment_count += 1
        elif isinstance(entry, PaymentRefunded):
            methods[entry.method].refunds_cents += entry.amount_cents
            methods[entry.method].refund_count += 1
    all_voids = {p.entry_id for p in before_end if isinstance(p.entry, EntryVoided)}
    for target_id in sorted(voids_today):
        if target_id in all_voids:
            continue
        target = by_id.get(target_id)
        void = next(p for p in today if isinstance(p.entry, EntryVoided)
                    and p.entry.voided_entry_id == target_id)
        if target is None:
            report.discrepancies.append(Discrepancy(
                "void_target_missing", f"void {void.entry_id} names entry {target_id}, "
                "which is not on the ledger", entry_id=void.entry_id, visit_id=void.visit_id))
            continue
        first_void = min((p for p in before_end if isinstance(p.entry, EntryVoided)
                          and p.entry.voided_entry_id == target_id), key=lambda p: p.position)
        if first_void.occurred_at < starts_at:  # voided already on an earlier day
            continue
        entry = target.entry
        if isinstance(entry, ChargePosted):
            report.charges_voided_cents += entry.amount_cents
        elif isinstance(entry, PatientSharePosted):
            report.patient_share_cents -= entry.amount_cents
        elif isinstance(entry, PaymentRecorded):
            methods[entry.method].voided_cents += entry.amount_cents
        elif isinstance(entry, PaymentRefunded):
            methods[entry.method].voided_cents -= entry.amount_cents
    report.visits_charged = len(charged)
    report.drawer_count = _drawer_count(everything, business_date)
    for method, totals in methods.items():
        if counted is not None and method in counted:
            totals.counted_cents = counted[method]
        elif report.drawer_count is not None:
            totals.counted_cents = report.drawer_count.cents.get(method)
    report.methods = list(methods.values())
    for totals in report.methods:
        if totals.counted_cents is None:
            if totals.active:
                report.discrepancies.append(Discrepancy(
                    "not_counted", f"{totals.method}: {format_cents(totals.net_cents)} on the "
                    "ledger but no count was declared", totals.net_cents, totals.method))
        elif totals.difference_cents:
            short = totals.difference_cents < 0
            report.discrepancies.append(Discrepancy(
                "drawer_mismatch",
                f"{totals.method}: counted {format_cents(totals.counted_cents)} but the ledger "
                f"says {format_cents(totals.net_cents)} "
                f"({'short' if short else 'over'} by {format_cents(abs(totals.difference_cents))})",
                totals.difference_cents, totals.method))
    touched = {p.visit_id for p in today if p.visit_id}
    listed = touched | set(carried)
    histories: dict[str, list[Posted]] = {}
    for posted in before_end:
        if posted.visit_id in listed:
            histories.setdefault(posted.visit_id, []).append(posted)
    for visit_id in sorted(listed):
        visit = account(visit_id, histories.get(visit_id, []))
        if visit_id in touched:
            _visit_discrepancies(report, visit)
        if visit.balance_cents:
            report.open_balances.append(OpenBalance(
                visit_id, visit.patient_ref, visit.charges_cents, visit.patient_share_cents,
                visit.paid_cents, visit.refunded_cents, visit.balance_cents,
                carried_over=visit_id not in touched))
    for first, second in conflicts:
        report.discrepancies.append(Discrepancy(
            "entry_conflict", f"entry {first.entry_id} is on the ledger twice with different "
            f"amounts ({first.event_type} {format_cents(first.amount_cents)} at "
            f"{first.position}, {second.event_type} {format_cents(second.amount_cents)} at "
            f"{second.position}); the first counts", entry_id=first.entry_id,
            visit_id=first.visit_id))
    return report


def _visit_discrepancies(report: Reconciliation, visit: Account) -> None:
    if visit.balance_cents < 0:
        report.discrepancies.append(Discrepancy(
            "credit_balance", f"visit {visit.visit_id} paid "
            f"{format_cents(-visit.balance_cents)} more than its share: refund it",
            visit.balance_cents, visit_id=visit.visit_id))
    if visit.paid_cents - visit.refunded_cents > 0 and not visit.priced:
        report.discrepancies.append(Discrepancy(
            "payment_without_charge", f"visit {visit.visit_id} has payments but no charge "
            "(checkout missing or its charge voided)",
            visit.paid_cents - visit.refunded_cents, visit_id=visit.visit_id))
    shared_charges = {p.entry.charge_entry_id  # type: ignore[attr-defined]
                      for p in visit.active(PatientSharePosted)}
    for charge in visit.active(ChargePosted):
        if charge.entry_id not in shared_charges:
            report.discrepancies.append(Discrepancy(
                "charge_without_share", f"charge {charge.entry_id} of visit {visit.visit_id} "
                "has no patient share", charge.amount_cents, visit_id=visit.visit_id,
                entry_id=charge.entry_id))


def _drawer_count(entries: Sequence[Posted], business_date: date) -> DrawerCount | None:
    counts = [p for p in entries if isinstance(p.entry, DrawerCounted)
              and p.entry.business_date == business_date]
    if not counts:
        return None
    latest = max(counts, key=lambda p: p.position)
    entry = latest.entry
    assert isinstance(entry, DrawerCounted)
    return DrawerCount(entry.entry_id, latest.occurred_at, entry.made_by,
                       {"cash": entry.cash_cents, "check": entry.check_cents,
                        "card": entry.card_cents})


def drawer_count_entry(*, entry_id: str, business_date: date, counted: Mapping[str, int | None],
                       reason: str, made_by: str) -> DrawerCounted:
    """A declared count for a day (cents per method; missing methods were not counted)."""
    return DrawerCounted(entry_id=entry_id, business_date=business_date,
                         cash_cents=counted.get("cash"), check_cents=counted.get("check"),
                         card_cents=counted.get("card"), reason=reason, made_by=made_by)
