"""A visit's account: its ledger entries folded into charges, share, payments, refunds
and the balance (voided entries left out)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from services.billing.domain.coverage import Coverage
from shared.events_billing import (
    ChargeLine,
    ChargePosted,
    CoverageRecorded,
    EntryVoided,
    LedgerEntry,
    PatientSharePosted,
    PaymentRecorded,
    PaymentRefunded,
)


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


def account_with(account_: Account, *more: Posted) -> Account:
    """The account with entries not yet on the ledger added (as if posted last)."""
    return account(account_.visit_id, [*account_.entries, *more])
