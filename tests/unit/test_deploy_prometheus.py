"""The Prometheus assets in deploy/prometheus are valid and their alerts behave: promtool
checks the config and the rules and runs the rules' unit tests
(deploy/prometheus/rules/clinicflow.rules.test.yml: series that fire each alert and series
that must not). promtool comes from Debian's prometheus package, installed by `make test`."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
CONFIG = PROMETHEUS / "prometheus.yml"
RULES = PROMETHEUS / "rules" / "clinicflow.rules.yml"
RULE_TESTS = PROMETHEUS / "rules" / "clinicflow.rules.test.yml"

SERVICES = {"checkin": 8001, "flow": 8002, "notifications": 8003, "billing": 8004}


def _promtool(*args: str) -> str:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: `make test` installs it (apt-get install prometheus)"
    done = subprocess.run([promtool, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"promtool {' '.join(args)} failed:\n{output}"
    return output


def test_promtool_accepts_the_config_and_the_rule_file_it_names() -> None:
    output = _promtool("check", "config", str(CONFIG))
    assert "1 rule files found" in output, output


def test_promtool_accepts_the_rules() -> None:
    _promtool("check", "rules", str(RULES))


def test_the_alerts_fire_and_stay_quiet_as_their_unit_tests_expect() -> None:
    output = _promtool("test", "rules", str(RULE_TESTS))
    assert "SUCCESS" in output, output


def test_every_alert_has_a_unit_test_and_a_runbook_section() -> None:
    alerts = [rule["alert"] for group in yaml.safe_load(RULES.read_text())["groups"]
              for rule in group["rules"] if "alert" in rule]
    assert len(alerts) >= 6
    tested = {case["alertname"] for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
              for case in test.get("alert_rule_test", [])
              if case.get("exp_alerts")}  # a test that sees the alert fire, not only quiet
    quiet = {case["alertname"] for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
             for case in test.get("alert_rule_test", []) if not case.get("exp_alerts")}
    assert set(alerts) <= tested, f"no firing test for {set(alerts) - tested}"
    assert set(alerts) <= quiet, f"no not-firing test for {set(alerts) - quiet}"
    operations = (ROOT / "docs" / "operations.md").read_text()
    for alert in alerts:
        assert f"## {alert}" in operations, f"docs/operations.md has no section for {alert}"


def test_each_service_is_scraped_on_its_port_as_its_own_job() -> None:
    config = yaml.safe_load(CONFIG.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    for service, port in SERVICES.items():
        job = jobs[service]
        assert job.get("metrics_path", "/metrics") == "/metrics"
        targets = [t for sc in job["static_configs"] for t in sc["targets"]]
        assert targets == [f"{service}:{port}"]
        # a target label `service` would rename the services' own `service` label
        assert all("service" not in sc.get("labels", {}) for sc in job["static_configs"])


def test_the_ports_are_the_services_defaults() -> None:
    from shared import settings

    classes: dict[str, type[settings.CommonSettings]] = {
        "checkin": settings.CheckinSettings, "flow": settings.FlowSettings,
        "notifications": settings.NotificationsSettings, "billing": settings.BillingSettings,
    }
    for service, port in SERVICES.items():
        assert classes[service].model_fields[f"{service}_port"].default == port
