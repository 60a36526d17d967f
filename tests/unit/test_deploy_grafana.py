"""The Grafana assets in deploy/grafana fit together and with docker-compose.yml: the data
source the dashboard names is the one provisioned, the dashboard provider reads the folder
compose mounts the dashboard into, and the dashboard has the panels operations asked for,
laid out without overlaps. (Which metrics the panels query: test_deploy_metrics.py.)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "clinicflow.json"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "clinicflow.yml"

# what the issue and the operations brief ask the dashboard to show (words in panel titles)
REQUIRED_PANELS = (
    "waiting to be roomed", "arrival to roomed", "rooms by state", "provider delays",
    "consumer lag", "events per second", "dead letters", "notifications sent / failed",
    "billing charges",
)


def _compose_service(name: str) -> dict[str, Any]:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    service: dict[str, Any] = compose["services"][name]
    return service


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> host path (relative to the repository) of a service's bind mounts."""
    mounts = {}
    for volume in service["volumes"]:
        source, target, *_ = str(volume).split(":")
        if source.startswith("./"):
            mounts[target] = source[2:]
    return mounts


def _panels() -> list[dict[str, Any]]:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # a collapsed row keeps its panels inside
    return panels


def test_the_dashboard_queries_the_provisioned_prometheus_data_source() -> None:
    datasources = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    prometheus = next(d for d in datasources if d["type"] == "prometheus")
    assert prometheus["url"] == "http://prometheus:9090"  # the compose service
    assert "prometheus" in yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    for panel in _panels():
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": prometheus["uid"]}, panel
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == prometheus["uid"]
            assert target["expr"].strip()
    variables = json.loads(DASHBOARD.read_text())["templating"]["list"]
    assert all(v["datasource"]["uid"] == prometheus["uid"] for v in variables
               if v["type"] == "query")


def test_compose_mounts_the_provisioning_and_the_dashboard_where_grafana_reads_them() -> None:
    grafana = _compose_service("grafana")
    mounts = _mounts(grafana)
    assert mounts["/etc/grafana/provisioning"] == "deploy/grafana/provisioning"
    provider = yaml.safe_load(PROVIDERS.read_text())["providers"][0]
    folder = provider["options"]["path"]
    assert provider["type"] == "file"
    assert mounts[folder] == "deploy/grafana/dashboards"
    assert (ROOT / mounts[folder] / DASHBOARD.name).is_file()
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{folder}/{DASHBOARD.name}"


def test_compose_mounts_the_prometheus_config_and_its_rules() -> None:
    prometheus = _compose_service("prometheus")
    mounts = _mounts(prometheus)
    assert mounts["/etc/prometheus"] == "deploy/prometheus"
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    for rule_file in config["rule_files"]:  # relative to the config file, inside the mount
        assert (ROOT / "deploy" / "prometheus" / rule_file).is_file()


def test_the_dashboard_has_the_panels_operations_asked_for() -> None:
    titles = [str(p["title"]).lower() for p in _panels()]
    for wanted in REQUIRED_PANELS:
        assert any(wanted in title for title in titles), wanted
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "clinicflow"
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["clinic"]


def test_the_panels_have_unique_ids_and_do_not_overlap() -> None:
    panels = _panels()
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]
