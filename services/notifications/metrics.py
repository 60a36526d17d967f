"""The notifications service's own metrics. Labels are bounded: kind, channel kind,
outcome, action, and clinic for the configured clinics only (any other clinic id an event
carries is counted as ``other``); never a visit, a ticket, a provider or an address.
Events waiting in the outbox are the shared ``clinicflow_outbox_events{service=
"notifications"}`` (shared/metrics.py)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import Counter, Gauge, Histogram

OTHER_CLINIC = "other"


def clinic_label(clinic_id: str, configured: Callable[[str], bool]) -> str:
    """A clinic's metric label: its id when it is configured, else ``other`` (clinic ids
    come from events: arbitrary ones must not grow the series without bound)."""
    return clinic_id if configured(clinic_id) else OTHER_CLINIC

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
    "Room-ready alerts raised and withdrawn, by clinic (configured clinics; others: "
    "'other').",
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
TOLD_ERROR = Histogram(
    "clinicflow_told_wait_abs_error_minutes",
    "How far the wait told to a patient was from the truth (|actual - point told|, "
    "minutes), once per told record when the visit is roomed, by clinic (configured; "
    "others: 'other') and channel (kiosk, status, tv, sms, email, next, log).",
    ["clinic", "channel"],
    buckets=(1, 2, 5, 10, 15, 20, 30, 45, 60, 90, 120),
)
TOLD_SHARE_INSIDE = Gauge(
    "clinicflow_told_share_inside_range",
    "Today's share (clinic's day) of told records whose actual wait fell inside the range "
    "told, by clinic.",
    ["clinic"],
)
TOLD_SCORED_TODAY = Gauge(
    "clinicflow_told_scored_today",
    "Told records scored today (clinic's day), by clinic: how much the share rests on.",
    ["clinic"],
)
FEEDBACK_GIVEN = Counter(
    "clinicflow_feedback_answers_total",
    "Feedback forms answered after a visit, by rating (1-5) and whether the wait was about "
    "what the patient was told (about_right, longer, shorter).",
    ["rating", "wait"],
)
FEEDBACK_REFUSED = Counter(
    "clinicflow_feedback_refused_total",
    "Feedback links refused: forged (altered or made up), expired, used (already answered).",
    ["problem"],
)

COMPLAINTS_LOGGED = Counter(
    "clinicflow_complaints_logged_total",
    "Complaints logged, by category (wait, billing, staff, facility, other) and source "
    "(in_person, phone, low_rating).",
    ["category", "source"],
)

COMPLAINTS_ESCALATED = Counter(
    "clinicflow_complaints_escalated_total",
    "Complaints escalated to the manager: not acknowledged within a business hour, by clinic "
    "(configured clinics; others: 'other').",
    ["clinic"],
)
