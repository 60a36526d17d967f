"""``clinicflow billing reconcile`` refuses what it cannot do right, with exit code 2 and
a message saying why (1 is kept for a day that does not reconcile)."""

from __future__ import annotations

import argparse
import json

import pytest

from services.billing.cli import _reconcile

CLINICS = {"north": {"name": "Northside", "timezone": "America/New_York"}}


def reconcile(clinic: str) -> int:
    return _reconcile(argparse.Namespace(clinic=clinic, date="2026-03-02", format="json",
                                         timeout=5.0))


def test_a_clinic_the_clinics_setting_does_not_list_is_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    # it was reconciled on UTC days and said "reconciled" for a clinic that does not exist
    monkeypatch.setenv("CLINICFLOW_CLINICS", json.dumps(CLINICS))
    assert reconcile("west") == 2
    assert "no clinic 'west' in CLINICFLOW_CLINICS (it lists north)" in capsys.readouterr().err


def test_kafka_unreachable_is_a_run_that_could_not_be_made_not_a_discrepancy(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("CLINICFLOW_CLINICS", json.dumps(CLINICS))
    monkeypatch.setenv("CLINICFLOW_KAFKA_BOOTSTRAP", "127.0.0.1:1")  # nothing listens there
    assert reconcile("north") == 2  # was 1 (discrepancies), with a traceback
    assert "Kafka at 127.0.0.1:1 is unreachable" in capsys.readouterr().err


def test_without_the_clinics_setting_it_says_which_zone_cuts_the_day(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("CLINICFLOW_CLINICS", raising=False)
    monkeypatch.setenv("CLINICFLOW_KAFKA_BOOTSTRAP", "127.0.0.1:1")
    assert reconcile("north") == 2
    assert "clinic north's day is cut at UTC midnights" in capsys.readouterr().err


def test_without_a_date_the_day_is_the_clinics_today_on_the_services_clock(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    # after `clinicflow up --day --date 2026-03-02` the services' clock is a warped one:
    # reconcile's today is the played day (it was the wall clock's), in New York
    import time

    from services.billing import cli

    async def empty_ledger(*_args: object) -> list[object]:
        return []

    monkeypatch.setattr(cli, "read_ledger", empty_ledger)
    monkeypatch.setenv("CLINICFLOW_CLINICS", json.dumps(CLINICS))
    monkeypatch.setenv("CLINICFLOW_CLOCK_WARP", f"2026-03-03T03:00:00+00:00@{time.time()!r}x1.0")
    assert _reconcile(argparse.Namespace(clinic="north", date=None, format="json",
                                         timeout=5.0)) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["business_date"] == "2026-03-02"  # 22:00 in New York
