"""End-of-day reconciliation: a clinic's business day (its own midnight to the next)
folded from the ledger: charges, money in hand by method against the drawer count, open
balances, and what does not add up."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from datetime import time as day_time
from typing import Literal
from zoneinfo import ZoneInfo

from services.billing.domain.accounts import Account, Posted, account
from services.billing.domain.money import format_cents
from shared.errors import Rejected
from shared.events_billing import (
    PAYMENT_METHODS,
    ChargePosted,
    DrawerCounted,
    EntryVoided,
    PatientSharePosted,
    PaymentMethod,
    PaymentRecorded,
    PaymentRefunded,
)


def business_day(timezone: str, business_date: date) -> tuple[datetime, datetime]:
    """[start, end) of a business day in ``timezone`` (the clinic's midnights), in UTC.
    A date whose midnights cannot be told in UTC (the first or last days a date can name,
    such as 9999-12-31) is ``Rejected`` (422 ``date_out_of_range``), not a crash."""
    zone = ZoneInfo(timezone)
    try:
        starts = datetime.combine(business_date, day_time(0), zone)
        ends = datetime.combine(business_date + timedelta(days=1), day_time(0), zone)
        return starts.astimezone(UTC), ends.astimezone(UTC)
    except (OverflowError, ValueError):
        raise Rejected(f"date {business_date.isoformat()} is out of range: its business day "
                       f"in {timezone} cannot be computed (ask for a date between "
                       "0001-01-02 and 9999-12-30)", code="date_out_of_range") from None


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
