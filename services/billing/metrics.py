"""Billing's own metrics (``clinicflow_<noun>_<unit>``; labels bounded: never a visit,
patient or entry id)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LEDGER_ENTRIES = Counter(
    "clinicflow_billing_ledger_entries_total",
    "Ledger entries the projection read, by type and outcome (applied, duplicate).",
    ["event_type", "outcome"],
)
ENTRY_CONFLICTS = Counter(
    "clinicflow_billing_entry_conflicts_total",
    "Copies of one entry id that disagree about money (the first copy counts).",
)
CHARGED = Counter(
    "clinicflow_billing_charged_cents_total",
    "Cents charged at checkout (gross), as applied by the projection.",
    ["clinic"],
)
COLLECTED = Counter(
    "clinicflow_billing_collected_cents_total",
    "Cents taken (payments, direction in) and given back (refunds, out), by method, as "
    "applied by the projection.",
    ["clinic", "method", "direction"],
)
CHECKOUTS = Counter(
    "clinicflow_billing_checkouts_total",
    "Checkouts the desk handled, by outcome (priced, completed, duplicate, "
    "nothing_to_charge, unpriceable, unknown_visit).",
    ["outcome"],
)
BARRIER_SECONDS = Histogram(
    "clinicflow_billing_ledger_barrier_seconds",
    "Time a money command waited for the ledger projection to catch up before deciding.",
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30),
)
BATCH_FAILURES = Counter(
    "clinicflow_billing_batch_failures_total",
    "Batches that failed and will be read again, by consumer.",
    ["consumer"],
)
FEE_SCHEDULE_LOADS = Counter(
    "clinicflow_billing_fee_schedule_loads_total",
    "Fee schedule (re)loads, by outcome (ok, invalid: the last good one stays).",
    ["outcome"],
)
FEE_SCHEDULE_CODES = Gauge(
    "clinicflow_billing_fee_schedule_codes",
    "CPT codes in the fee schedule in use (all clinics' lines).",
)
