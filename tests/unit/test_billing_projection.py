"""The ledger projection's batch handling with a fake Kafka consumer and a fake store:
duplicates apply once, a failed batch is read again, a gap is sought back."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiokafka import TopicPartition

from services.billing.projection import LedgerProjection
from services.billing.store import LedgerRecord
from shared import events as ev
from shared.events_billing import PaymentRecorded

TOPIC = "clinicflow.ledger.v1"


@dataclass
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


class FakeKafka:
    def __init__(self) -> None:
        self.sought: list[tuple[int, int]] = []
        self.committed: dict[TopicPartition, int] = {}

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition(TOPIC, 0)}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.sought.append((tp.partition, offset))

    async def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return dict.fromkeys(tps, 0)

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.committed.update(offsets)

    def highwater(self, _tp: TopicPartition) -> int:
        return 0


class FakeStore:
    def __init__(self) -> None:
        self.offsets: dict[tuple[str, int], int] = {}
        self.entries: dict[str, Any] = {}
        self.open: dict[tuple[str, str], bool] = {}
        self.fail = False

    async def ledger_offsets(self, tps: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        return {tp: self.offsets[tp] for tp in tps if tp in self.offsets}

    async def existing(self, records: list[LedgerRecord]) -> dict[str, Any]:
        return {r.posted.entry_id: self.entries[r.posted.entry_id] for r in records
                if r.posted.entry_id in self.entries}

    async def visits_entries(self, _clinic_id: str, visits: Any) -> dict[str, list[Any]]:
        return {v: [p for p in self.entries.values() if p.visit_id == v] for v in visits}

    async def apply_ledger(self, records: list[LedgerRecord],
                           offsets: dict[tuple[str, int], int],
                           open_visits: dict[tuple[str, str], bool]) -> None:
        if self.fail:
            raise ConnectionError("redis down")
        for record in records:
            self.entries.setdefault(record.posted.entry_id, record.posted)
        self.offsets.update(offsets)
        self.open.update(open_visits)


class Subscriber:
    def __init__(self, kafka: FakeKafka) -> None:
        self.consumer = kafka


def payment(entry_id: str, cents: int) -> bytes:
    return ev.encode(ev.make_event(
        PaymentRecorded(entry_id=entry_id, visit_id="v1", method="cash", amount_cents=cents,
                        reason="desk", made_by="dev billing"),
        clinic_id="north", source="test", event_id=entry_id))


def projection() -> tuple[LedgerProjection, FakeStore, FakeKafka]:
    store, kafka = FakeStore(), FakeKafka()
    made = LedgerProjection(None, store, ledger_topic=TOPIC,  # type: ignore[arg-type]
                            dead_letter_topic="dl")
    made.subscriber = Subscriber(kafka)
    return made, store, kafka


async def test_a_redelivered_entry_is_applied_once_and_the_first_copy_counts() -> None:
    made, store, kafka = projection()
    batch = [Record(TOPIC, 0, 0, b"north", payment("pay-1", 500)),
             Record(TOPIC, 0, 1, b"north", payment("pay-1", 900))]
    assert await made.handle(batch) == 1
    assert store.entries["pay-1"].amount_cents == 500
    assert store.open == {("north", "v1"): True}  # paid before any charge: a credit
    assert await made.handle(batch) == 0  # the same batch delivered again
    assert store.offsets == {(TOPIC, 0): 1}
    assert kafka.committed == {TopicPartition(TOPIC, 0): 2}


async def test_a_failed_batch_is_read_again_from_the_stored_offset() -> None:
    made, store, kafka = projection()
    await made.handle([Record(TOPIC, 0, 0, b"north", payment("pay-1", 500))])
    store.fail = True
    assert await made.handle([Record(TOPIC, 0, 1, b"north", payment("pay-2", 700))]) == 0
    assert kafka.sought == [(0, 1)]
    store.fail = False
    # the next batch starts later than the stored offset: sought back, not applied
    assert await made.handle([Record(TOPIC, 0, 2, b"north", payment("pay-3", 100))]) == 0
    assert kafka.sought == [(0, 1), (0, 1)]
    assert await made.handle([Record(TOPIC, 0, 1, b"north", payment("pay-2", 700)),
                              Record(TOPIC, 0, 2, b"north", payment("pay-3", 100))]) == 2
    assert sorted(store.entries) == ["pay-1", "pay-2", "pay-3"]
