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
