"""Billing on each clinic's own clock: its business day is cut at its own midnights
(Hawaii at UTC-10, Tonga and New Zealand's summer at UTC+13), its receipts print the
time as the clinic reads it, its reports say whose day they are; the clinic's zone comes
from CLINICFLOW_CLINICS, the older billing zone settings only fill in and are refused
when they disagree. No broker, no Redis, no wall clock."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta

import pytest
from pydantic import ValidationError

from services.billing import views
from services.billing.domain.accounts import Posted
from services.billing.domain.accounts import account as account_of
from services.billing.domain.receipts import ReceiptHeading, clock_text, receipt
from services.billing.domain.reconciliation import business_day, reconcile
from shared.errors import Rejected, status_of
from shared.events_billing import PaymentRecorded
from shared.settings import BillingSettings
from tools.cli import main as cli_main

CLINICS = json.dumps({
    "hilo": {"name": "Hilo Family Clinic", "timezone": "Pacific/Honolulu"},
    "nuku": {"name": "Nuku'alofa Health", "timezone": "Pacific/Tongatapu"},
    "akl": {"name": "Ponsonby Medical", "timezone": "Pacific/Auckland"},
    "east": {"name": "Eastgate Health Center"},  # no zone of its own
})


def paid(at: datetime, cents: int = 4000, visit: str = "v1", n: int = 1) -> Posted:
    entry = PaymentRecorded(entry_id=f"pay-{n}", visit_id=visit, method="cash",
                            amount_cents=cents, reason="copay", made_by="dev billing")
    return Posted(entry, "payment.recorded", at, n)


def day_of(zone: str, day: date, *entries: Posted) -> int:
    """Cash taken on the clinic's business day ``day``."""
    starts, ends = business_day(zone, day)
    report = reconcile(clinic_id="c", business_date=day, timezone=zone, starts_at=starts,
                       ends_at=ends, entries=entries, source="test", counted={"cash": 0})
    return next(m for m in report.methods if m.method == "cash").payments_cents


def test_hawaiis_day_runs_from_10_utc_to_10_utc_and_takes_a_payment_at_half_past_eleven(
) -> None:
    assert business_day("Pacific/Honolulu", date(2026, 3, 2)) == (
        datetime(2026, 3, 2, 10, tzinfo=UTC), datetime(2026, 3, 3, 10, tzinfo=UTC))
    late = paid(datetime(2026, 3, 3, 9, 30, tzinfo=UTC))  # 23:30 HST on 2 March
    assert day_of("Pacific/Honolulu", date(2026, 3, 2), late) == 4000
    assert day_of("Pacific/Honolulu", date(2026, 3, 3), late) == 0
    assert day_of("UTC", date(2026, 3, 2), late) == 0  # the old mistake: UTC's day


def test_tongas_day_starts_the_evening_before_in_utc() -> None:
    assert business_day("Pacific/Tongatapu", date(2026, 12, 15)) == (
        datetime(2026, 12, 14, 11, tzinfo=UTC), datetime(2026, 12, 15, 11, tzinfo=UTC))
    early = paid(datetime(2026, 12, 14, 11, 30, tzinfo=UTC))  # 00:30 on 15 December
    late = paid(datetime(2026, 12, 15, 10, 30, tzinfo=UTC), 1500, n=2)  # 23:30 on the 15th
    assert day_of("Pacific/Tongatapu", date(2026, 12, 15), early, late) == 5500
    assert day_of("Pacific/Tongatapu", date(2026, 12, 14), early, late) == 0


def test_auckland_is_utc_plus_13_in_december_and_plus_12_in_june() -> None:
    starts, _ = business_day("Pacific/Auckland", date(2026, 12, 15))
    assert starts == datetime(2026, 12, 14, 11, tzinfo=UTC)
    starts, _ = business_day("Pacific/Auckland", date(2026, 6, 15))
    assert starts == datetime(2026, 6, 14, 12, tzinfo=UTC)
    # the day summer time starts (27 September 2026) is 23 hours long
    starts, ends = business_day("Pacific/Auckland", date(2026, 9, 27))
    assert ends - starts == timedelta(hours=23)


def test_a_receipt_prints_the_time_on_the_clinics_clock_with_its_zone() -> None:
    at = datetime(2026, 12, 15, 10, 30, tzinfo=UTC)
    account = account_of("v1", [paid(at)])
    tonga = receipt("nuku", account, "pay-1", ReceiptHeading("Nuku'alofa Health",
                                                              "Pacific/Tongatapu"))
    assert clock_text(tonga.made_at) == "2026-12-15 23:30 UTC+13:00"  # Tonga has no letters
    auckland = receipt("akl", account, "pay-1", ReceiptHeading(
        "Ponsonby Medical", "Pacific/Auckland", "dr-ngata", "Dr. Ngata"))
    shown = views.receipt_json(auckland)
    assert (shown["made_at"], shown["made_at_display"], shown["business_date"]) == (
        "2026-12-15T23:30:00+13:00", "2026-12-15 23:30 NZDT", "2026-12-15")
    page = views.receipt_html(auckland)
    assert "Ponsonby Medical" in page and "Seen by Dr. Ngata" in page
    assert "2026-12-15 23:30 NZDT" in page and "10:30" not in page
    assert "dr-ngata" not in page  # ids stay in events and metrics


def test_the_days_report_says_whose_day_it_is_in_json_csv_and_html() -> None:
    zone, day = "Pacific/Honolulu", date(2026, 3, 2)
    starts, ends = business_day(zone, day)
    report = reconcile(clinic_id="hilo", business_date=day, timezone=zone, starts_at=starts,
                       ends_at=ends, entries=[paid(datetime(2026, 3, 3, 9, 30, tzinfo=UTC))],
                       source="test", counted={"cash": 4000})
    shown = views.reconciliation_json(report, "Hilo Family Clinic")
    assert (shown["clinic_name"], shown["starts_at"], shown["ends_at"]) == (
        "Hilo Family Clinic", "2026-03-02T00:00:00-10:00", "2026-03-03T00:00:00-10:00")
    assert shown["collected_cents"] == 4000  # the payment at 23:30 HST is on the day
    assert ("day,hilo,2026-03-02,Pacific/Honolulu,,2026-03-02T00:00:00-10:00 to "
            "2026-03-03T00:00:00-10:00") in views.reconciliation_csv(report)
    page = views.reconciliation_html(report, "Hilo Family Clinic")
    assert "End of day: Hilo Family Clinic, 2026-03-02" in page
    assert "2026-03-02 00:00 HST to 2026-03-03 00:00 HST" in page


def test_billing_takes_each_clinics_zone_from_clinicflow_clinics() -> None:
    settings = BillingSettings(clinics=CLINICS)
    assert [settings.timezone_of(c) for c in ("hilo", "nuku", "akl", "east", "other")] == [
        "Pacific/Honolulu", "Pacific/Tongatapu", "Pacific/Auckland", "UTC", "UTC"]
    assert settings.clinic_directory()["hilo"].display_name == "Hilo Family Clinic"


def test_the_older_billing_zones_fill_in_only_what_clinicflow_clinics_leaves_unsaid() -> None:
    settings = BillingSettings(clinics=CLINICS, billing_timezone="America/Chicago",
                               billing_clinic_timezones={"east": "America/Denver",
                                                         "hilo": "Pacific/Honolulu"})
    assert [settings.timezone_of(c) for c in ("hilo", "east", "other")] == [
        "Pacific/Honolulu", "America/Denver", "America/Chicago"]
    assert settings.clinic_directory()["east"].display_name == "Eastgate Health Center"
    assert BillingSettings().timezone_of("north") == "UTC"


def test_billing_refuses_to_start_when_its_zones_disagree_with_the_clinics() -> None:
    with pytest.raises(ValidationError) as disagree:
        BillingSettings(clinics=CLINICS, billing_clinic_timezones={"hilo": "America/Chicago"})
    assert ("CLINICFLOW_BILLING_CLINIC_TIMEZONES['hilo'] is America/Chicago but "
            "CLINICFLOW_CLINICS['hilo'].timezone is Pacific/Honolulu") in str(disagree.value)
    with pytest.raises(ValidationError, match="CLINICFLOW_BILLING_TIMEZONE is UTC but "
                       "CLINICFLOW_DEFAULT_TIMEZONE is America/New_York"):
        BillingSettings(billing_timezone="UTC", default_timezone="America/New_York")
    with pytest.raises(ValidationError, match="unknown time zone 'Mars/Olympus'"):
        BillingSettings(billing_clinic_timezones={"east": "Mars/Olympus"})


@pytest.mark.parametrize(("zone", "day"), [("America/Chicago", date(9999, 12, 31)),
                                           ("Pacific/Tongatapu", date(1, 1, 1))])
def test_a_date_whose_day_cannot_be_computed_is_refused_with_a_message(zone: str,
                                                                       day: date) -> None:
    with pytest.raises(Rejected, match=f"date {day.isoformat()} is out of range") as bad:
        business_day(zone, day)
    assert status_of(bad.value) == 422 and bad.value.code == "date_out_of_range"
    assert business_day(zone, date(9999, 12, 30))[0].year == 9999  # the last day that has one


def test_the_cli_answers_a_date_without_a_business_day_as_a_usage_error(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["billing", "reconcile", "--clinic", "north", "--date",
                     "9999-12-31"]) == 2  # before any broker is asked
    assert "--date: date 9999-12-31 is out of range" in capsys.readouterr().err
