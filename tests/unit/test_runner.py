"""``clinicflow run``: a refused configuration is a short message and exit code 2."""

from __future__ import annotations

import argparse

import pytest

from shared import runner


def test_production_without_secrets_is_refused_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CLINICFLOW_ENV", "production")
    monkeypatch.delenv("CLINICFLOW_CREDENTIALS", raising=False)
    assert runner.run(argparse.Namespace(service="flow", port=None)) == 2
    err = capsys.readouterr().err
    assert "refusing to start in production" in err and "CLINICFLOW_CREDENTIALS" in err
    assert "Traceback" not in err


def test_a_bad_setting_is_named_without_echoing_its_value(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CLINICFLOW_CREDENTIALS", "not-json-but-a-secret-token")
    assert runner.run(argparse.Namespace(service="billing", port=None)) == 2
    err = capsys.readouterr().err
    assert "CLINICFLOW_CREDENTIALS" in err
    assert "not-json-but-a-secret-token" not in err
