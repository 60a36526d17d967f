"""Prometheus helpers and the metrics every service exports.

Names follow ``clinicflow_<noun>_<unit>``; labels are few and bounded (service,
clinic, provider, stage, room state, outcome), never a patient or visit id.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from prometheus_client.registry import REGISTRY, CollectorRegistry

EVENTS_CONSUMED = Counter(
    "clinicflow_events_consumed_total",
    "Events a service read from Kafka and applied (or skipped as already applied).",
    ["service", "outcome"],
)
DEAD_LETTERS = Counter(
    "clinicflow_dead_letters_total",
    "Events sent to the dead-letter topic, by service and reason kind.",
    ["service", "reason"],
)
EVENTS_PUBLISHED = Counter(
    "clinicflow_events_published_total",
    "Events a service published to Kafka, by event type (what an outbox relays: by the "
    "role of its topic, e.g. deadletter, notifications, audit, told, directory).",
    ["service", "event_type"],
)
HTTP_REQUESTS = Counter(
    "clinicflow_http_requests_total",
    "HTTP requests by service, route and status class.",
    ["service", "route", "status"],
)
HTTP_LATENCY = Histogram(
    "clinicflow_http_request_seconds",
    "HTTP request latency.",
    ["service", "route"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
CONSUMER_LAG = Gauge(
    "clinicflow_consumer_lag_events",
    "Events on the topic not yet applied by this consumer (summed over its partitions).",
    ["service"],
)
BATCH_FAILURES = Counter(
    "clinicflow_batch_failures_total",
    "Batches a consumer could not apply (Redis or Kafka away): each is read again.",
    ["service", "consumer"],
)
BATCH_SECONDS = Histogram(
    "clinicflow_batch_seconds",
    "Time to apply one Kafka batch, from delivery to stored, by consumer.",
    ["service", "consumer"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
PERIODIC_FAILURES = Counter(
    "clinicflow_periodic_failures_total",
    "Runs of a periodic job (sweep, ticker, checkpoint, outbox relay) that failed.",
    ["service", "job"],
)
OUTBOX_EVENTS = Gauge(
    "clinicflow_outbox_events",
    "Events written to a service's Redis outbox and not yet published to Kafka.",
    ["service"],
)
OUTBOX_PARKED = Counter(
    "clinicflow_outbox_parked_total",
    "Outbox entries refused for good (too large for Kafka, unreadable) and moved aside to "
    "the service's parked list so the entries behind them go out: each waits for an "
    "operator (docs/operations.md).",
    ["service"],
)
DEPENDENCY_UP = Gauge(
    "clinicflow_dependency_up",
    "1 when the dependency (kafka, redis) answered the last readiness check.",
    ["service", "dependency"],
)


def render_metrics(registry: CollectorRegistry = REGISTRY) -> tuple[bytes, str]:
    """The exposition text and its content type, for a ``/metrics`` route."""
    return generate_latest(registry), CONTENT_TYPE_LATEST


def reason_kind(reason: str) -> str:
    """A bounded label for a dead-letter reason (the full reason goes in the record)."""
    for kind in ("not valid JSON", "bad envelope", "unknown event_type", "unknown schema_version",
                 "too large", "wrong partition"):
        if reason.startswith(kind):
            return kind.replace(" ", "_").lower()
    if reason.startswith("bad "):
        return "bad_data"
    return "not_applicable"
