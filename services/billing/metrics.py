"""Billing's own metrics (``clinicflow_<noun>_<unit>``; labels bounded: never a visit,
patient or entry id). Batch failures, dead letters, lag and consumed events are the
shared ones (``shared/metrics.py``, ``service="billing"``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from services.billing.projection import LedgerChanges
from shared.events_billing import ChargePosted, PaymentRecorded, PaymentRefunded
from shared.logging import get_logger

log = get_logger("clinicflow.billing.projection")

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
FEE_SCHEDULE_LOADS = Counter(
    "clinicflow_billing_fee_schedule_loads_total",
    "Fee schedule (re)loads, by outcome (ok, invalid: the last good one stays).",
    ["outcome"],
)
FEE_SCHEDULE_CODES = Gauge(
    "clinicflow_billing_fee_schedule_codes",
    "CPT codes in the fee schedule in use (all clinics' lines).",
)


async def observe_ledger_batch(changes: LedgerChanges) -> None:
    """Count what a ledger batch did, once it is stored (a rebuild counts the ledger
    again), and log the copies of an entry that disagree about money."""
    for record in changes.added:
        entry = record.posted.entry
        LEDGER_ENTRIES.labels(record.posted.event_type, "applied").inc()
        if isinstance(entry, ChargePosted):
            CHARGED.labels(record.clinic_id).inc(entry.amount_cents)
        elif isinstance(entry, PaymentRecorded):
            COLLECTED.labels(record.clinic_id, entry.method, "in").inc(entry.amount_cents)
        elif isinstance(entry, PaymentRefunded):
            COLLECTED.labels(record.clinic_id, entry.method, "out").inc(entry.amount_cents)
    for record in changes.duplicates:
        LEDGER_ENTRIES.labels(record.posted.event_type, "duplicate").inc()
    for _first, later in changes.conflicts:
        ENTRY_CONFLICTS.inc()
        log.warning("two copies of one ledger entry disagree: the first counts",
                    entry_id=later.posted.entry_id, clinic=later.clinic_id)
