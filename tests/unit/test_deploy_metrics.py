"""Every metric the alert rules and the Grafana dashboard ask Prometheus for is one the
services really export, with labels it really has.

The exported names come from the services' own metric modules, as prometheus_client
registers them: a counter ``x`` is scraped as ``x_total``, a histogram ``h`` as
``h_bucket``/``h_sum``/``h_count``, a gauge under its own name; nothing else is accepted
(``clinicflow_rooms_total`` for a gauge, or a counter without ``_total``, is an error).
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "rules" / "clinicflow.rules.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "clinicflow.json"

METRIC_MODULES = (
    "shared.metrics",
    "services.checkin.metrics",
    "services.flow.metrics",
    "services.notifications.metrics",
    "services.billing.metrics",
)

# series Prometheus itself adds for every target (the labels are the scrape config's)
SCRAPE_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped",
                 "scrape_samples_post_metric_relabeling", "scrape_series_added"}
# labels Prometheus puts on every scraped series (one job per service: prometheus.yml)
TARGET_LABELS = {"job", "instance"}

_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "unknown": ("",),
}


def exported_series() -> dict[str, set[str]]:
    """Sample name -> its label names, for every series the four services can export."""
    for module in METRIC_MODULES:
        importlib.import_module(module)
    series: dict[str, set[str]] = {}
    for family in REGISTRY.collect():
        labels = _family_labels(family.name)
        for suffix in _SUFFIXES[family.type]:
            name = family.name + suffix
            series[name] = labels | ({"le"} if suffix == "_bucket" else set())
        for sample in family.samples:  # the samples already there agree with the types
            assert sample.name in series, f"{sample.name} not derived from {family.type}"
            series[sample.name] |= set(sample.labels)
    for name in SCRAPE_SERIES:
        series[name] = set()
    return {name: labels | TARGET_LABELS for name, labels in series.items()}


def _family_labels(name: str) -> set[str]:
    collectors = REGISTRY._names_to_collectors  # the registry's own index of its metrics
    for candidate in (name, name + "_total", name + "_bucket"):
        collector = collectors.get(candidate)
        if collector is not None:
            return set(getattr(collector, "_labelnames", ()))
    return set()


# --------------------------------------------------------------- PromQL identifiers

_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_COMMENT = re.compile(r"#[^\n]*")
_SELECTOR = re.compile(r"(?<![\w:])([A-Za-z_:][\w:]*)?\s*\{([^{}]*)\}")
_MATCHER = re.compile(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(
    r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE)
_IDENTIFIER = re.compile(r"(?<![\w:.$])([A-Za-z_:][\w:]*)(\s*\()?")
_KEYWORDS = {
    # aggregation operators (they may be followed by `by (...)` rather than `(`)
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile", "limitk", "limit_ratio",
    # binary and modifier keywords, literals
    "and", "or", "unless", "atan2", "bool", "by", "without", "on", "ignoring",
    "group_left", "group_right", "offset", "inf", "nan",
}


def selectors(expr: str) -> Iterator[tuple[str | None, set[str]]]:
    """(metric name or None, label names in its matchers) for each selector in ``expr``.

    Function and aggregation names, keywords, label names in ``by``/``on`` lists, numbers,
    durations, strings and Grafana variables are not metric names."""
    text = _COMMENT.sub(" ", _STRING.sub('""', expr))
    found: list[tuple[str | None, set[str]]] = []

    def take(match: re.Match[str]) -> str:
        name = match.group(1)
        labels = set(_MATCHER.findall(match.group(2)))
        if name is not None and name.lower() in _KEYWORDS:  # `... or {x="y"}`
            found.append((None, labels))
            return f" {name} "
        found.append((name, labels))
        return " __selector__ "

    text = _SELECTOR.sub(take, text)
    while _RANGE.search(text):
        text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(r" \1 ", text)
    for match in _IDENTIFIER.finditer(text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in _KEYWORDS or name == "__selector__":
            continue
        found.append((name, set()))
    yield from found


def problems(exprs: list[str], known: dict[str, set[str]]) -> list[str]:
    errors = []
    for expr in exprs:
        for name, labels in selectors(expr):
            if name is None:
                errors.append(f"a selector without a metric name in {expr!r}")
            elif name not in known:
                errors.append(f"{name} is not exported (in {expr!r})")
            elif labels - known[name]:
                errors.append(f"{name} has no label {sorted(labels - known[name])} "
                              f"(in {expr!r})")
    return errors


# --------------------------------------------------------------- the assets' expressions

def rule_exprs() -> tuple[list[str], dict[str, set[str]]]:
    """The rules' expressions, and the recording rules' series (name -> labels) they add."""
    exprs, recorded = [], {}
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            exprs.append(rule["expr"])
            if "record" in rule:  # keeps the labels of its aggregation (`le` is consumed)
                kept = re.search(r"\bby\s*\(([^()]*)\)", rule["expr"])
                names = {n.strip() for n in kept.group(1).split(",")} if kept else set()
                recorded[rule["record"]] = (names | set(rule.get("labels", {}))) - {"le", ""}
    return exprs, recorded


def _walk(node: object) -> Iterator[dict[str, object]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


_LABEL_VALUES = re.compile(r"^\s*label_values\((?:(.*),)?\s*(\w+)\s*\)\s*$")


def dashboard_exprs() -> list[str]:
    """Every PromQL expression in the dashboard: panel targets and template variables
    (``label_values(selector, label)`` is checked as ``selector{label=""}``)."""
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [str(node["expr"]) for node in _walk(dashboard.get("panels", []))
             if isinstance(node.get("expr"), str)]
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable["query"]
        query = query.get("query", "") if isinstance(query, dict) else query
        match = _LABEL_VALUES.match(query)
        if match:
            selector, label = match.group(1) or "up", match.group(2)
            exprs.append(f'{selector.strip()}{{{label}=""}}' if "{" not in selector
                         else selector.replace("}", f',{label}=""}}', 1))
        else:
            exprs.append(query)
    return exprs


# --------------------------------------------------------------- tests

def test_the_exported_names_follow_prometheus_client_suffix_rules() -> None:
    known = exported_series()
    assert "clinicflow_dead_letters_total" in known  # a counter: _total only
    assert "clinicflow_dead_letters" not in known
    assert "clinicflow_rooms" in known and "clinicflow_rooms_total" not in known  # a gauge
    for suffix in ("_bucket", "_sum", "_count"):  # a histogram
        assert f"clinicflow_stage_duration_minutes{suffix}" in known
    assert "clinicflow_stage_duration_minutes" not in known
    assert known["clinicflow_stage_duration_minutes_bucket"] >= {"clinic", "provider",
                                                                  "stage", "le"}
    assert known["clinicflow_rooms"] == {"clinic", "state", "job", "instance"}
    # one module per service, and each adds its own metrics
    for prefix in ("clinicflow_checkin_", "clinicflow_notification_", "clinicflow_billing_",
                   "clinicflow_queue_length"):
        assert any(name.startswith(prefix) for name in known), prefix


def test_the_parser_finds_metric_names_and_nothing_else() -> None:
    expr = '''
      histogram_quantile(0.9, sum by (clinic, le) (
        rate(clinicflow_stage_duration_minutes_bucket{stage="arrival_to_roomed",
                                                      clinic=~"$clinic"}[$__rate_interval])))
      > 1e3 and on (clinic) group_left ()
        (sum without (provider) (clinicflow_queue_length_patients) offset 5m)
      or   # a comment naming not_a_metric
      clinicflow_rooms unless bool up{job='flow'} @ start() or vector(0)
      or count_values("value", clinicflow_rooms) or sum(clinicflow_rooms)by(clinic)
    '''
    assert sorted(selectors(expr), key=lambda s: s[0] or "") == [
        ("clinicflow_queue_length_patients", set()),
        ("clinicflow_rooms", set()),
        ("clinicflow_rooms", set()),
        ("clinicflow_rooms", set()),
        ("clinicflow_stage_duration_minutes_bucket", {"stage", "clinic"}),
        ("up", {"job"}),
    ]


@pytest.mark.parametrize("bad, why", [
    ("rate(clinicflow_fake_events_total[5m])", "clinicflow_fake_events_total is not exported"),
    ("clinicflow_rooms_total", "clinicflow_rooms_total is not exported"),
    ("rate(clinicflow_dead_letters[5m])", "clinicflow_dead_letters is not exported"),
    ("clinicflow_stage_duration_minutes", "clinicflow_stage_duration_minutes is not exported"),
    ('sum by (clinic) (clinicflow_rooms{status="ready"})', "has no label ['status']"),
    ('{__name__="clinicflow_rooms"}', "without a metric name"),
])
def test_a_name_or_label_the_services_do_not_export_is_reported(bad: str, why: str) -> None:
    errors = problems([bad], exported_series())
    assert len(errors) == 1 and why in errors[0], errors


def test_the_alert_rules_use_only_exported_metrics_and_labels() -> None:
    exprs, recorded = rule_exprs()
    known = exported_series() | recorded
    assert len(exprs) >= 6
    assert problems(exprs, known) == []


def test_the_dashboard_uses_only_exported_metrics_and_labels() -> None:
    exprs = dashboard_exprs()
    assert len(exprs) >= 10
    assert problems(exprs, exported_series()) == []
