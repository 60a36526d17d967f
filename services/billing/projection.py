"""The ledger projection: what a batch of ledger records changes in billing's Redis
projection, decided without I/O.

The shared runner (``shared/projection.py``) does the Kafka and Redis side: it reads
each record with ``ledger_reader`` (a tombstone, a record that is not an event, one keyed
other than by its clinic or on another partition than its key's, an event that is not a
ledger entry: dead-lettered with the reason), skips what Redis holds as applied, reads
what the batch needs (``store.LedgerProjectionStore``), and stores the batch's changes,
its offsets and its dead letters in one transaction. ``plan_ledger`` decides:

* an entry whose envelope's ``event_id`` is not its ``entry_id`` is dead-lettered;
* the first copy of an entry id wins: a copy already stored, or earlier in the batch,
  makes a later one a duplicate (counted; one that disagrees about money is a conflict,
  logged and counted, and still changes nothing);
* each visit the new entries touch is marked open (a balance, owing or a credit) or
  settled.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from services.billing.domain.accounts import Posted, account, same_amounts
from shared import events as ev
from shared.events_billing import (
    ChargePosted,
    CoverageRecorded,
    DrawerCounted,
    EntryVoided,
    LedgerEntry,
    PatientSharePosted,
    PaymentRecorded,
    PaymentRefunded,
)
from shared.projection import DeadLetter, Inbound, Planned, RecordReader

LEDGER_CONSUMER = "billing.ledger"
LEDGER_ENTRIES: frozenset[type[ev.Payload]] = frozenset({
    ChargePosted, PatientSharePosted, CoverageRecorded, PaymentRecorded, PaymentRefunded,
    EntryVoided, DrawerCounted,
})
# (clinic, entry id) and (clinic, visit): entry ids and visits are a clinic's own
EntryRef = tuple[str, str]
VisitRef = tuple[str, str]


def ledger_reader(ledger_topic: str) -> RecordReader:
    """The ledger consumer's reader: only ledger entries belong on the ledger topic."""
    return RecordReader({ledger_topic: LEDGER_ENTRIES})


@dataclass(frozen=True, slots=True)
class LedgerRecord:
    """A ledger entry as read from Kafka, with where it sits (its offset is its place in
    the clinic's ledger)."""

    clinic_id: str
    partition: int
    offset: int
    raw: bytes
    posted: Posted

    @property
    def ref(self) -> EntryRef:
        return (self.clinic_id, self.posted.entry_id)


def posted_of(event: ev.Event, position: int) -> Posted | None:
    """The ``Posted`` form of a decoded ledger event (None: not a ledger entry)."""
    if not isinstance(event.payload, LedgerEntry):
        return None
    return Posted(event.payload, event.event_type, event.occurred_at, position)


def ledger_record_of(record: Inbound) -> LedgerRecord | str:
    """The ledger entry a readable record carries, or why it is not one."""
    event = record.event
    if event is None:
        return record.reason or "not an event"
    posted = posted_of(event, record.offset)
    if posted is None:
        return f"{event.event_type} is not a ledger entry"
    if posted.entry_id != event.envelope.event_id:
        return (f"event_id {event.envelope.event_id!r} is not the entry_id "
                f"{posted.entry_id!r}")
    assert record.value is not None  # an event was decoded from it
    return LedgerRecord(event.clinic_id, record.partition, record.offset, record.value, posted)


def ledger_records(records: list[Inbound]) -> list[LedgerRecord]:
    """The ledger entries among ``records`` (what the store reads state for)."""
    return [r for r in map(ledger_record_of, records) if isinstance(r, LedgerRecord)]


@dataclass(slots=True)
class LedgerState:
    """What the projection holds that a batch needs: the stored copy of each of its entry
    ids that is stored, and the stored entries of each visit it touches."""

    existing: dict[EntryRef, Posted] = field(default_factory=dict)
    histories: dict[VisitRef, list[Posted]] = field(default_factory=dict)


@dataclass(slots=True)
class LedgerChanges:
    """What one batch changes: entries to add (first copies), visits now open (True) or
    settled (False); and, for metrics and logs, the later copies and those that
    disagree with the first (first, later)."""

    added: list[LedgerRecord] = field(default_factory=list)
    open_visits: dict[VisitRef, bool] = field(default_factory=dict)
    duplicates: list[LedgerRecord] = field(default_factory=list)
    conflicts: list[tuple[Posted, LedgerRecord]] = field(default_factory=list)


def plan_ledger(records: list[Inbound], state: LedgerState) -> Planned[LedgerChanges]:
    """What a batch changes (pure; module docstring). ``records`` are the batch's readable
    records not applied before, in order."""
    changes = LedgerChanges()
    dead: list[DeadLetter] = []
    first_in_batch: dict[EntryRef, LedgerRecord] = {}
    for record in records:
        entry = ledger_record_of(record)
        if isinstance(entry, str):
            dead.append(DeadLetter(record, entry))
            continue
        stored = state.existing.get(entry.ref)
        earlier = first_in_batch.get(entry.ref)
        first = stored if stored is not None else (earlier.posted if earlier else None)
        if first is None:
            first_in_batch[entry.ref] = entry
            changes.added.append(entry)
            continue
        changes.duplicates.append(entry)
        if not same_amounts(first, entry.posted):
            changes.conflicts.append((first, entry))
    changes.open_visits = _open_visits(changes.added, state.histories)
    return Planned(changes, applied=len(changes.added), dead_letters=dead)


def _open_visits(added: list[LedgerRecord],
                 histories: dict[VisitRef, list[Posted]]) -> dict[VisitRef, bool]:
    """Whether each visit the new entries touch has a balance once they are applied."""
    touched: dict[VisitRef, list[Posted]] = {}
    for entry in added:
        if entry.posted.visit_id:
            touched.setdefault((entry.clinic_id, entry.posted.visit_id), []).append(entry.posted)
    return {visit: account(visit[1], [*histories.get(visit, []), *new]).balance_cents != 0
            for visit, new in touched.items()}
