"""Flow's bottleneck metrics: where the day is stuck (stage, provider, room)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

STAGE_MINUTES = Histogram(
    "clinicflow_stage_duration_minutes",
    "Finished stage durations: arrival_to_roomed, roomed_to_provider, provider_to_checkout, "
    "room_turnover.",
    ["clinic", "provider", "stage"],
    buckets=(1, 2, 5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 240),
)
QUEUE_LENGTH = Gauge(
    "clinicflow_queue_length_patients",
    "Patients waiting to be roomed, per clinic and provider ('any' for first available).",
    ["clinic", "provider"],
)
ROOMS = Gauge("clinicflow_rooms", "Rooms by state.", ["clinic", "state"])
ESTIMATED_WAIT = Gauge(
    "clinicflow_estimated_wait_minutes",
    "Longest current estimated wait among waiting patients, per clinic and provider.",
    ["clinic", "provider"],
)
IN_ROOMS = Gauge(
    "clinicflow_patients_in_rooms_patients",
    "Patients roomed or with a provider, per clinic.",
    ["clinic"],
)
DELAY_MINUTES = Gauge(
    "clinicflow_provider_delay_minutes",
    "Announced delay per provider ('clinic' for a clinic-wide delay).",
    ["clinic", "provider"],
)
VISITS_ENDED = Counter(
    "clinicflow_visits_ended_total",
    "Visits ended, by outcome (checked_out, cancelled, left_without_being_seen).",
    ["clinic", "outcome"],
)
SSE_CLIENTS = Gauge("clinicflow_sse_clients", "Open Server-Sent-Events connections.")
