"""The notifications service's own metrics. Labels are bounded: kind, channel kind,
outcome, clinic, action; never a visit, a ticket or an address."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

DECISIONS = Counter(
    "clinicflow_notification_decisions_total",
    "What the rules decided for a patient message: queued, held (rate limit), or why not "
    "(opted_out, no_contact, declined, roomed, left, stale, recovered).",
    ["kind", "outcome"],
)
DELIVERIES = Counter(
    "clinicflow_notification_deliveries_total",
    "Delivery attempts by channel kind and outcome (sent, retrying, failed, unconfirmed, "
    "cancelled).",
    ["channel", "kind", "outcome"],
)
SEND_SECONDS = Histogram(
    "clinicflow_notification_send_seconds",
    "Time a channel took to take (or refuse) a message.",
    ["channel"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
NURSE_ALERTS = Counter(
    "clinicflow_nurse_alerts_total",
    "Room-ready alerts raised and withdrawn, by clinic.",
    ["clinic", "action"],
)
ALERT_STREAM_CLIENTS = Gauge(
    "clinicflow_alert_stream_clients",
    "Nurse stations connected to the live alert stream.",
)
DUE_NOTIFICATIONS = Gauge(
    "clinicflow_notifications_due",
    "Notifications waiting for their (next) attempt, as last seen by the sender.",
)
OUTBOX_EVENTS = Gauge(
    "clinicflow_notification_outbox_events",
    "Events written to Redis and not yet published to Kafka, as last seen by the sender's "
    "heartbeat (the relay reports the same as clinicflow_outbox_events{service}).",
)
