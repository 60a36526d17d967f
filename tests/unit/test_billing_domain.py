"""Billing's pure domain: fee schedules, the patient's share, accounts, checkouts and a
day's reconciliation. No broker, no Redis."""

from __future__ import annotations

import os
import re
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from services.billing import views
from services.billing.app import create_app
from services.billing.domain.accounts import Account, Posted
from services.billing.domain.accounts import account as account_of
from services.billing.domain.coverage import Coverage, patient_share
from services.billing.domain.fee_schedule import (
    FeeScheduleError,
    UnknownServices,
    parse_fee_schedule,
)
from services.billing.domain.payments import plan_payment, plan_refund, plan_void
from services.billing.domain.pricing import (
    CheckoutDecision,
    checkout_key,
    price_checkout,
    undo_checkout,
)
from services.billing.domain.reconciliation import Reconciliation, business_day, reconcile
from services.billing.fees import EXAMPLE, FeeScheduleFile, load_fee_schedule
from shared.errors import Conflict, Rejected, status_of
from shared.events_billing import (
    ChargePosted,
    CoverageRecorded,
    EntryVoided,
    LedgerEntry,
    PatientSharePosted,
    PaymentRecorded,
    PaymentRefunded,
)
from shared.settings import BillingSettings

DAY = date(2026, 3, 2)
START = datetime(2026, 3, 2, tzinfo=UTC)
END = START + timedelta(days=1)
SCHEDULE = load_fee_schedule(EXAMPLE)


class Ledger:
    """Entries posted in order, each a minute after the last (from 09:00 on DAY)."""

    def __init__(self, at: datetime = START + timedelta(hours=9)) -> None:
        self.posted: list[Posted] = []
        self.at = at

    def post(self, *entries: LedgerEntry, at: datetime | None = None) -> None:
        for entry in entries:
            self.at = at or self.at + timedelta(minutes=1)
            event_type = {ChargePosted: "charge.posted", PatientSharePosted:
                          "patient_share.posted", CoverageRecorded: "coverage.recorded",
                          PaymentRecorded: "payment.recorded", PaymentRefunded:
                          "payment.refunded", EntryVoided: "entry.voided"}[type(entry)]
            self.posted.append(Posted(entry, event_type, self.at, len(self.posted)))

    def account(self, visit: str) -> Account:
        return account_of(visit, [p for p in self.posted if p.visit_id == visit])

    def checkout(self, visit: str, codes: list[str]) -> CheckoutDecision:
        account = self.account(visit)
        decision = price_checkout(SCHEDULE, account, clinic_id="north",
                                    checkout_event_id="e1", cpt_codes=codes, patient_ref=None,
                                    key=checkout_key(account))
        self.post(*decision.entries)
        return decision

    def pay(self, visit: str, entry_id: str, method: str, cents: int) -> None:
        self.post(plan_payment(self.account(visit), entry_id=entry_id, method=method,  # type: ignore[arg-type]
                                 amount_cents=cents, reference=None if method == "cash"
                                 else "ref1", reason="desk", made_by="dev billing"))

    def reconcile(self, day: date = DAY, carried: tuple[str, ...] | list[str] = (),
                  **counted: int) -> Reconciliation:
        starts = datetime(day.year, day.month, day.day, tzinfo=UTC)
        return reconcile(clinic_id="north", business_date=day, timezone="UTC",
                           starts_at=starts, ends_at=starts + timedelta(days=1),
                           entries=self.posted, source="test", counted=counted,
                           carried=carried)


def coverage(visit: str, **terms: int | bool) -> CoverageRecorded:
    return CoverageRecorded(entry_id=f"cov-{visit}", visit_id=visit, reason="check-in",
                            made_by="dev front desk", **terms)  # type: ignore[arg-type]


# ------------------------------------------------------------------ pricing


def test_a_clinics_own_fee_wins_over_the_fee_for_every_clinic() -> None:
    assert [line.fee_cents for line in SCHEDULE.lines("north", ["99213", "36415"])] == [
        13000, 1200]
    assert SCHEDULE.lines("south", ["99213"])[0].fee_cents == 12500


def test_a_checkout_with_an_unknown_code_is_not_priced_at_all() -> None:
    with pytest.raises(UnknownServices, match="12345 not in clinic 'north'") as unknown:
        SCHEDULE.lines("north", ["99213", "12345"])
    assert isinstance(unknown.value, Rejected) and status_of(unknown.value) == 422


def test_copay_then_deductible_then_coinsurance_rounded_half_up_to_the_cent() -> None:
    share = patient_share(14200, Coverage(copay_cents=2500, coinsurance_basis_points=2000,
                                              deductible_remaining_cents=1000))
    assert (share.copay_cents, share.deductible_cents, share.coinsurance_cents) == (
        2500, 1000, 2140)
    assert share.amount_cents == 5640 and share.insurance_cents == 8560
    # 3333 bp of 1 cent is a third of a cent: rounds to 0; of 3 cents is 0.9999 -> 1
    assert patient_share(1, Coverage(coinsurance_basis_points=3333)).amount_cents == 0
    assert patient_share(3, Coverage(coinsurance_basis_points=3333)).amount_cents == 1
    assert patient_share(1, Coverage(coinsurance_basis_points=5000)).amount_cents == 1


def test_the_share_never_exceeds_the_charge_and_no_coverage_is_self_pay() -> None:
    assert patient_share(1000, Coverage(copay_cents=4000)).amount_cents == 1000
    assert patient_share(1000, Coverage(deductible_remaining_cents=9999)).amount_cents == (
        1000)
    assert patient_share(1000, None).amount_cents == 1000


def test_a_checkout_done_twice_posts_one_charge() -> None:
    ledger = Ledger()
    ledger.post(coverage("v1", copay_cents=2500))
    assert ledger.checkout("v1", ["99213"]).outcome == "priced"
    assert ledger.checkout("v1", ["99213"]).outcome == "duplicate"
    account = ledger.account("v1")
    assert (account.charges_cents, account.patient_share_cents) == (13000, 2500)
    assert [p.entry_id for p in account.entries[1:]] == ["chg-v1", "shr-v1"]


def test_the_same_ledger_state_derives_the_same_ids_and_a_voided_charge_is_charged_anew(
) -> None:
    ledger = Ledger()
    first = ledger.checkout("v1", ["99213"])
    same = price_checkout(SCHEDULE, account_of("v1", []), clinic_id="north",
                            checkout_event_id="other", cpt_codes=["99213"], patient_ref=None,
                            key="v1")
    assert [e.entry_id for e in same.entries] == [e.entry_id for e in first.entries]
    ledger.post(*plan_void(ledger.account("v1"), target_entry_id="chg-v1", void_id="void-1",
                             reason="wrong codes", made_by="dev manager"))
    assert ledger.account("v1").charges_cents == 0
    assert ledger.account("v1").patient_share_cents == 0  # the share went with its charge
    again = ledger.checkout("v1", ["99214"])
    assert again.outcome == "priced" and again.entries[0].entry_id == "chg-v1:1"
    assert ledger.account("v1").charges_cents == 18500


# ----------------------------------------------------------------- payments


def test_partial_payments_refunds_and_voids_make_the_balance() -> None:
    ledger = Ledger()
    ledger.checkout("v1", ["99214"])  # self-pay 185.00
    ledger.pay("v1", "pay-1", "cash", 10000)
    ledger.pay("v1", "pay-2", "card", 10000)
    assert ledger.account("v1").balance_cents == -1500  # a credit
    ledger.post(plan_refund(ledger.account("v1"), entry_id="rfd-1", payment_entry_id="pay-2",
                              amount_cents=1500, reason="overpaid", made_by="dev billing"))
    assert ledger.account("v1").balance_cents == 0
    with pytest.raises(Conflict, match=r"more than the 85\.00 left to refund") as over:
        plan_refund(ledger.account("v1"), entry_id="rfd-2", payment_entry_id="pay-2",
                      amount_cents=8501, reason="x", made_by="dev billing")
    assert status_of(over.value) == 409
    with pytest.raises(Conflict, match="refunds standing"):
        plan_void(ledger.account("v1"), target_entry_id="pay-2", void_id="void-x",
                    reason="x", made_by="dev manager")
    ledger.post(*plan_void(ledger.account("v1"), target_entry_id="pay-1", void_id="void-1",
                             reason="wrong visit", made_by="dev manager"))
    assert ledger.account("v1").balance_cents == 10000
    with pytest.raises(Conflict, match="already voided"):
        plan_void(ledger.account("v1"), target_entry_id="pay-1", void_id="void-2",
                    reason="x", made_by="dev manager")


def test_amounts_must_be_positive_and_card_numbers_are_never_kept() -> None:
    account = account_of("v1", [])
    with pytest.raises(Rejected, match="more than 0") as negative:
        plan_payment(account, entry_id="p", method="cash", amount_cents=-1, reference=None,
                       reason="x", made_by="y")
    assert status_of(negative.value) == 422
    with pytest.raises(Rejected, match="card number"):
        plan_payment(account, entry_id="p", method="card", amount_cents=100,
                       reference="4111-1111-1111-1111", reason="x", made_by="y")
    with pytest.raises(Rejected, match="needs a reference"):
        plan_payment(account, entry_id="p", method="check", amount_cents=100,
                       reference=None, reason="x", made_by="y")


# ----------------------------------------------------------- reconciliation


def test_a_day_reconciles_when_the_count_matches_the_ledger() -> None:
    ledger = Ledger()
    ledger.post(coverage("v1", copay_cents=2500))
    ledger.checkout("v1", ["99213"])
    ledger.pay("v1", "pay-1", "cash", 2500)
    ledger.checkout("v2", ["36415"])
    ledger.pay("v2", "pay-2", "check", 1000)
    report = ledger.reconcile(cash=2500, check=1000, card=0)
    assert report.reconciled, report.discrepancies
    assert (report.charges_cents, report.patient_share_cents) == (14200, 3700)
    assert report.insurance_expected_cents == 10500
    assert [(b.visit_id, b.balance_cents) for b in report.open_balances] == [("v2", 200)]
    short = ledger.reconcile(cash=2400, check=1000, card=0)
    assert [x.kind for x in short.discrepancies] == ["drawer_mismatch"]
    assert "short by 1.00" in short.discrepancies[0].message


def test_a_payment_voided_the_same_day_counts_once_out_not_twice() -> None:
    """Voided entries leave the totals through the void's own line (``voided_cents``),
    so they must not be filtered out of the day's entries as well: the unused set of
    voided ids in ``reconcile`` was dead code, not a missed filter."""
    ledger = Ledger()
    ledger.checkout("v1", ["99214"])
    ledger.pay("v1", "pay-1", "cash", 5000)
    ledger.post(*plan_void(ledger.account("v1"), target_entry_id="pay-1", void_id="void-1",
                             reason="keyed twice", made_by="dev manager"))
    ledger.pay("v1", "pay-2", "cash", 5000)
    report = ledger.reconcile(cash=5000)
    cash = next(m for m in report.methods if m.method == "cash")
    assert (cash.payments_cents, cash.voided_cents, cash.net_cents) == (10000, 5000, 5000)
    assert report.reconciled, report.discrepancies
    voided_charge = Ledger()
    voided_charge.checkout("v9", ["99213"])
    voided_charge.post(*plan_void(voided_charge.account("v9"), target_entry_id="chg-v9",
                                    void_id="void-9", reason="wrong patient",
                                    made_by="dev manager"))
    report = voided_charge.reconcile()
    assert (report.net_charges_cents, report.patient_share_cents) == (0, 0)
    assert report.open_balances == []


def test_a_void_made_the_next_day_changes_the_next_days_totals() -> None:
    ledger = Ledger()
    ledger.checkout("v1", ["99214"])
    ledger.pay("v1", "pay-1", "card", 5000)
    ledger.post(*plan_void(ledger.account("v1"), target_entry_id="pay-1", void_id="void-1",
                             reason="declined", made_by="dev manager"),
                at=END + timedelta(hours=9))
    monday = ledger.reconcile(card=5000)
    assert monday.reconciled
    tuesday = ledger.reconcile(DAY + timedelta(days=1))
    card = next(m for m in tuesday.methods if m.method == "card")
    assert card.net_cents == -5000 and card.payments_cents == 0
    assert [x.kind for x in tuesday.discrepancies] == ["not_counted"]


def test_the_csv_export_and_html_report_carry_the_cents() -> None:
    ledger = Ledger()
    ledger.checkout("v1", ["99213"])
    ledger.pay("v1", "pay-1", "cash", 13000)
    report = ledger.reconcile(cash=13000)
    assert "total,north,2026-03-02,charges,13000," in views.reconciliation_csv(report)
    assert "130.00" in views.reconciliation_html(report)
    assert views.reconciliation_json(report)["reconciled"] is True


# ---------------------------------------------------------------- start-up


def test_a_fee_over_what_one_charge_line_carries_is_refused_naming_its_line() -> None:
    # it loaded, and every checkout of that code then failed building its charge
    text = ("clinic,cpt_code,description,fee\n*,99213,Office visit,130.00\n"
            "*,99215,Office visit,1500000.00\n")
    over = re.escape("line 3: fee '1500000.00' is over 1,000,000.00")
    with pytest.raises(FeeScheduleError, match=over):
        parse_fee_schedule(text)
    assert parse_fee_schedule(text.replace("1500000.00", "1000000.00")).for_clinic("north")[
        "99215"].fee_cents == 100_000_000


def test_an_invalid_fee_schedule_stops_the_service_at_start_up(tmp_path: Path) -> None:
    bad = tmp_path / "fees.csv"
    bad.write_text("clinic,cpt_code,description,fee\n*,99213,Visit,12.5.0\n*,9921,Short,1.00\n")
    with pytest.raises(FeeScheduleError) as caught:
        create_app(BillingSettings(fee_schedule_path=str(bad)))
    message = str(caught.value)
    assert str(bad) in message and "line 2: fee '12.5.0'" in message and "line 3" in message
    with pytest.raises(FeeScheduleError, match="cannot read it"):
        create_app(BillingSettings(fee_schedule_path=str(tmp_path / "missing.csv")))


def test_an_invalid_edit_of_the_fee_file_is_refused_and_the_last_good_schedule_stays(
    tmp_path: Path,
) -> None:
    path = tmp_path / "fees.csv"
    path.write_text("clinic,cpt_code,description,fee\n*,99213,Visit,125.00\n")
    fees = FeeScheduleFile(path)
    assert fees.current().lines("north", ["99213"])[0].fee_cents == 12500
    path.write_text("clinic,cpt_code,description,fee\n*,99213,Visit,lots\n")
    os.utime(path, ns=(1, 1))  # a different modification time, whatever the clock
    assert fees.current().lines("north", ["99213"])[0].fee_cents == 12500
    assert fees.last_error is not None and "line 2" in fees.last_error
    path.write_text("clinic,cpt_code,description,fee\n*,99213,Visit,140.00\n")
    os.utime(path, ns=(2, 2))
    assert fees.current().lines("north", ["99213"])[0].fee_cents == 14000
    assert fees.last_error is None


def test_a_business_day_is_cut_at_the_clinics_own_midnight() -> None:
    starts, ends = business_day("America/Chicago", date(2026, 3, 2))
    assert starts == datetime(2026, 3, 2, 6, tzinfo=UTC)
    assert ends == datetime(2026, 3, 3, 6, tzinfo=UTC)
    # the spring-forward day is 23 hours long
    starts, ends = business_day("America/Chicago", date(2026, 3, 8))
    assert ends - starts == timedelta(hours=23)


def test_a_visit_still_owing_from_an_earlier_day_is_carried_into_the_days_open_balances(
) -> None:
    ledger = Ledger()
    ledger.checkout("v1", ["99213"])  # Monday, unpaid
    ledger.checkout("v2", ["36415"])
    ledger.pay("v2", "pay-1", "cash", 1200)
    ledger.at = END + timedelta(hours=9)
    ledger.checkout("v3", ["99211"])  # Tuesday
    tuesday = ledger.reconcile(DAY + timedelta(days=1), carried=["v1", "v2"])
    assert [(b.visit_id, b.balance_cents, b.carried_over) for b in tuesday.open_balances] == [
        ("v1", 13000, True), ("v3", 2800, False)]
    assert tuesday.reconciled  # an old debt is listed, not a discrepancy of the day


def test_an_undo_cut_after_its_charges_void_voids_the_share_when_read_again() -> None:
    ledger = Ledger()
    ledger.checkout("v9", ["99213"])  # checkout event "e1": charge and share
    voids = undo_checkout(ledger.account("v9"), undone_event_id="e1", undo_event_id="u1")
    assert [v.voided_event_type for v in voids] == ["charge.posted", "patient_share.posted"]
    ledger.post(voids[0])  # the instance died before the share's void was posted
    again = undo_checkout(ledger.account("v9"), undone_event_id="e1", undo_event_id="u1")
    assert [v.entry_id for v in again] == [voids[1].entry_id]  # the same id: once
    ledger.post(*again)
    assert ledger.account("v9").active(ChargePosted, PatientSharePosted) == []
    assert undo_checkout(ledger.account("v9"), undone_event_id="e1", undo_event_id="u1") == []
