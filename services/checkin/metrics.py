"""Checkin's own metrics (the common ones are in shared/metrics.py).

Labels are bounded: clinic, channel, kind, outcome, reason. Never a patient, visit,
appointment or ticket.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

ARRIVALS = Counter(
    "clinicflow_checkin_arrivals_total",
    "Patients checked in, by clinic, channel (front_desk, kiosk), kind (scheduled, walk_in) "
    "and whether they were late.",
    ["clinic", "channel", "kind", "late"],
)
ARRIVALS_REFUSED = Counter(
    "clinicflow_checkin_arrivals_refused_total",
    "Check-ins refused, by channel and why (not_found, already_arrived, cancelled, ...).",
    ["channel", "reason"],
)
CANCELLATIONS = Counter(
    "clinicflow_checkin_cancellations_total",
    "Arrivals cancelled at the front desk, by clinic and reason.",
    ["clinic", "reason"],
)
NO_SHOWS = Counter(
    "clinicflow_checkin_no_shows_total",
    "No-shows published (no arrival in time after the appointment), by clinic.",
    ["clinic"],
)
SCHEDULE_ROWS = Counter(
    "clinicflow_checkin_schedule_rows_total",
    "Schedule rows read by imports, by format and outcome "
    "(created, updated, unchanged, restored, skipped, rejected).",
    ["format", "outcome"],
)
IMPORTS = Counter(
    "clinicflow_checkin_imports_total",
    "Schedule imports by format and outcome (imported, dry_run, rejected, failed).",
    ["format", "outcome"],
)
LOOKUPS = Counter(
    "clinicflow_checkin_lookups_total",
    "Wait lookups and kiosk identity checks, by kind and outcome (found, unknown, limited).",
    ["kind", "outcome"],
)
IMPORT_SECONDS = Histogram(
    "clinicflow_checkin_import_seconds",
    "Time to validate, publish and store one schedule import.",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
