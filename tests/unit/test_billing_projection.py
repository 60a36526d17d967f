"""The ledger projection's pure plan (the first copy of an entry id wins, copies that
disagree are counted, visits marked open or settled, entries that lie about their id
dead-lettered), what the ledger reader refuses, and the desk's barrier on the runner's
consumer. No broker, no Redis: records are built with tests/fakes.py, time is a counter.
The runner's own paths (positioning, a failed or misplaced batch read again) are tested
in test_projection_runner.py."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from aiokafka import TopicPartition

from services.billing.domain.accounts import Posted
from services.billing.projection import (
    LedgerState,
    ledger_reader,
    plan_ledger,
    posted_of,
)
from shared import events as ev
from shared.barrier import ProjectionBarrier
from shared.errors import Unavailable, status_of
from shared.events_billing import ChargeLine, ChargePosted, PatientSharePosted, PaymentRecorded
from shared.projection import Inbound, Partition, partition_for
from tests.fakes import FakeKafka, KafkaRecord, record_of

TOPIC = "clinicflow.ledger.v1"
PARTITIONS = 6
AT = datetime(2026, 3, 2, 14, 0, tzinfo=UTC)
NORTH = (TOPIC, partition_for(b"north", PARTITIONS))


def entry_event(entry: ChargePosted | PatientSharePosted | PaymentRecorded,
                event_id: str | None = None) -> ev.Event:
    return ev.make_event(entry, clinic_id="north", source="billing", occurred_at=AT,
                         correlation_id=entry.visit_id, event_id=event_id or entry.entry_id)


def payment(entry_id: str, cents: int, visit: str = "v1") -> ev.Event:
    return entry_event(PaymentRecorded(entry_id=entry_id, visit_id=visit, method="cash",
                                       amount_cents=cents, reason="desk",
                                       made_by="dev billing"))


def charge(visit: str, cents: int) -> ev.Event:
    return entry_event(ChargePosted(
        entry_id=f"chg-{visit}", visit_id=visit, checkout_event_id=f"out-{visit}",
        lines=[ChargeLine(cpt_code="99213", fee_cents=cents)], amount_cents=cents,
        reason="checkout", made_by="dev billing"))


def share(visit: str, cents: int) -> ev.Event:
    return entry_event(PatientSharePosted(
        entry_id=f"shr-{visit}", visit_id=visit, charge_entry_id=f"chg-{visit}",
        amount_cents=cents, reason="checkout", made_by="dev billing"))


def read(*events_or_records: ev.Event | KafkaRecord) -> list[Inbound]:
    """The records as the ledger consumer reads them, at offsets 0, 1, 2, ..."""
    reader = ledger_reader(TOPIC)
    records = [item if isinstance(item, KafkaRecord)
               else record_of(item, TOPIC, offset, partitions=PARTITIONS)
               for offset, item in enumerate(events_or_records)]
    return [reader.read(r.topic, r.partition, r.offset, r.key, r.value, PARTITIONS)
            for r in records]


def stored(event: ev.Event, offset: int) -> Posted:
    posted = posted_of(event, offset)
    assert posted is not None
    return posted


# ------------------------------------------------------------------ the plan


def test_a_redelivered_payment_is_applied_once_and_the_first_copy_counts() -> None:
    first, disagreeing = payment("pay-1", 500), payment("pay-1", 900)
    planned = plan_ledger(read(first, first, disagreeing), LedgerState())
    changes = planned.changes
    assert [r.posted.amount_cents for r in changes.added] == [500]
    assert planned.applied == 1 and planned.dead_letters == []
    assert len(changes.duplicates) == 2
    # the copy saying 900 disagrees about money: counted, and still changes nothing
    assert [(f.amount_cents, later.posted.amount_cents) for f, later in changes.conflicts] == [
        (500, 900)]
    assert changes.open_visits == {("north", "v1"): True}  # paid before any charge: a credit


def test_an_entry_the_projection_holds_already_wins_over_a_copy_read_again() -> None:
    copy = payment("pay-1", 500)
    state = LedgerState(existing={("north", "pay-1"): stored(copy, 3)})
    planned = plan_ledger(read(copy), state)
    assert planned.changes.added == [] and planned.applied == 0
    assert len(planned.changes.duplicates) == 1 and planned.changes.conflicts == []
    assert planned.changes.open_visits == {}  # nothing new: the visit is left as it is


def test_a_visit_is_open_while_it_owes_and_settled_once_paid_in_full() -> None:
    history = [stored(charge("v7", 13000), 0), stored(share("v7", 2500), 1)]
    state = LedgerState(histories={("north", "v7"): history})
    part = plan_ledger(read(payment("pay-a", 1000, visit="v7")), state)
    assert part.changes.open_visits == {("north", "v7"): True}
    whole = plan_ledger(read(payment("pay-b", 2500, visit="v7")), state)
    assert whole.changes.open_visits == {("north", "v7"): False}


def test_an_entry_whose_event_id_is_not_its_entry_id_is_dead_lettered() -> None:
    liar = entry_event(PaymentRecorded(entry_id="pay-9", visit_id="v1", method="cash",
                                       amount_cents=100, reason="desk", made_by="dev billing"),
                       event_id="something-else")
    planned = plan_ledger(read(payment("pay-1", 500), liar), LedgerState())
    assert planned.applied == 1
    assert [d.reason for d in planned.dead_letters] == [
        "event_id 'something-else' is not the entry_id 'pay-9'"]


def test_the_ledger_reader_takes_only_ledger_entries_keyed_by_their_clinic() -> None:
    arrival = ev.make_event(ev.PatientArrived(visit_id="v1", ticket_code="A-1",
                                              visit_type="follow_up"),
                            clinic_id="north", source="checkin", occurred_at=AT)
    good = record_of(payment("pay-1", 500), TOPIC, 3, partitions=PARTITIONS)
    records = read(
        payment("pay-1", 500),
        arrival,
        KafkaRecord(TOPIC, NORTH[1], 2, b"north", None),
        KafkaRecord(TOPIC, NORTH[1], 3, b"south", good.value),
        KafkaRecord(TOPIC, (NORTH[1] + 1) % PARTITIONS, 4, b"north", good.value),
    )
    assert records[0].event is not None and records[0].reason is None
    reasons = [r.reason or "" for r in records[1:]]
    assert reasons[0] == f"patient.arrived does not belong on {TOPIC}"
    assert reasons[1] == "empty record (tombstone)"
    assert reasons[2].startswith("key 'south' is not the event's clinic_id 'north'")
    assert reasons[3].startswith("wrong partition")


# ------------------------------------------------------------------ the barrier


class LedgerKafka(FakeKafka):
    """The runner's consumer, with the ledger's end offsets."""

    def __init__(self, end: int, partitions: int | None = PARTITIONS) -> None:
        super().__init__(partitions=partitions)
        self.end = end

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return dict.fromkeys(tps, self.end)


class CatchingUp:
    """Stored offsets as the projection writes them: each look finds the next one."""

    def __init__(self, *looks: int | None) -> None:
        self.looks = list(looks)
        self.asked: list[Partition] = []

    async def read(self, partitions: list[Partition]) -> dict[Partition, int | None]:
        self.asked.extend(partitions)
        value = self.looks.pop(0) if len(self.looks) > 1 else self.looks[0]
        return dict.fromkeys(partitions, value)


class Seconds:
    """A monotonic clock that moves one second each time it is read."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def barrier(kafka: FakeKafka | None, offsets: CatchingUp, timeout: float) -> ProjectionBarrier:
    return ProjectionBarrier(lambda: kafka, offsets, TOPIC,  # type: ignore[arg-type]
                         what="the ledger projection", topic_role="ledger",
                         timeout=timeout, poll_seconds=0.0, monotonic=Seconds())


async def test_a_command_waits_until_the_projection_holds_its_clinics_ledger() -> None:
    offsets = CatchingUp(None, 7, 9)  # rebuilding, behind, then at the end (offset 9 of 10)
    await barrier(LedgerKafka(end=10), offsets, timeout=30).caught_up("north")
    assert offsets.asked == [NORTH] * 3  # north's own partition, murmur2 as Kafka puts it


async def test_a_projection_that_does_not_catch_up_in_time_makes_the_command_unavailable(
) -> None:
    with pytest.raises(Unavailable, match="behind the ledger") as behind:
        await barrier(LedgerKafka(end=10), CatchingUp(7), timeout=3).caught_up("north")
    assert status_of(behind.value) == 503
    with pytest.raises(Unavailable, match="is starting"):
        await barrier(None, CatchingUp(None), timeout=3).caught_up("north")


async def test_an_empty_ledger_needs_no_waiting() -> None:
    offsets = CatchingUp(None)
    await barrier(LedgerKafka(end=0), offsets, timeout=30).caught_up("north")
    assert offsets.asked == []
