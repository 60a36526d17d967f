"""The shared projection runner (shared/projection.py) with a stand-in for aiokafka's
consumer and a projection that records what it is given: how records are read, where
partitions are positioned, which batches are dropped or read again, what is committed.
Every service's consumer goes through these paths; the real broker and Redis run them in
tests/integration."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from aiokafka import TopicPartition

from shared import events as ev
from shared.errors import Conflict, NotFound, Refusal, Rejected, Unavailable, status_of
from shared.projection import (
    READ_AHEAD,
    Applied,
    DeadLetter,
    Inbound,
    Partition,
    ProjectionRunner,
    Reading,
    RecordReader,
    RetryPolicy,
    StreamingProjection,
    fresh,
    inbound,
    partition_for,
)
from tests.fakes import FakeClock, FakeKafka, KafkaRecord, record_of

FLOOR, ESTIMATES = "floor", "estimates"
AT = datetime(2026, 3, 2, 14, 0, tzinfo=UTC)


def arrival(clinic: str = "north", visit: str = "v1") -> ev.Event:
    return ev.make_event(ev.PatientArrived(visit_id=visit, ticket_code="A-1",
                                             visit_type="follow_up"),
                         clinic_id=clinic, source="test", occurred_at=AT)


def estimate(clinic: str = "north") -> ev.Event:
    return ev.make_event(ev.WaitEstimated(visit_id="v1", ticket_code="A-1", provider_id=None,
                                          position=1, wait_minutes=5.0, low=2.0, high=9.0),
                         clinic_id=clinic, source="test", occurred_at=AT)


def reader() -> RecordReader:
    return RecordReader({FLOOR: frozenset({ev.PatientArrived, ev.RoomReady}),
                         ESTIMATES: frozenset({ev.WaitEstimated})})


class CountingReader(RecordReader):
    """The same reader, counting the records it has read."""

    def __init__(self) -> None:
        super().__init__(reader().accepts)
        self.reads = 0

    def check(self, topic: str, partition: int, key: bytes | None, value: bytes | None,
              partitions: int | None = None) -> ev.Event | str:
        self.reads += 1
        return super().check(topic, partition, key, value, partitions)


class Recording:
    """A projection that applies what it is given, or fails while ``failing``."""

    def __init__(self, stored: dict[Partition, int | None] | None = None) -> None:
        self.stored = stored or {}
        self.batches: list[list[Inbound]] = []
        self.released: list[Partition] = []
        self.failing = False

    async def positions(self, partitions: Sequence[Partition]) -> dict[Partition, int | None]:
        return {tp: self.stored.get(tp) for tp in partitions}

    async def release(self, partitions: Sequence[Partition]) -> None:
        self.released.extend(partitions)

    async def apply(self, records: list[Inbound]) -> Applied:
        if self.failing:
            raise ConnectionError("redis unreachable")
        new, already, offsets = fresh(records, self.stored)
        self.batches.append(new)
        self.stored.update(offsets)
        dead = [DeadLetter(r, r.reason) for r in new if r.reason is not None]
        return Applied(len(new) - len(dead), already, dead, offsets)


class Streaming:
    """A projection that applies each record as it reads it (``apply_stream``), noting
    how many records had been read when it came to each; it fails at ``fail_at``."""

    def __init__(self, counting: CountingReader) -> None:
        self.counting = counting
        self.read_when_applied: list[int] = []
        self.fail_at: int | None = None

    async def positions(self, partitions: Sequence[Partition]) -> dict[Partition, int | None]:
        return dict.fromkeys(partitions)

    async def release(self, partitions: Sequence[Partition]) -> None:
        return None

    async def apply_stream(self, records: Iterator[Reading]) -> Applied:
        applied = Applied()
        for record, found in records:
            self.read_when_applied.append(self.counting.reads)
            if record.offset == self.fail_at:
                raise ConnectionError("redis unreachable")
            applied.offsets[(record.topic, record.partition)] = record.offset
            if isinstance(found, str):
                applied.dead_letters.append(DeadLetter(inbound(record, found), found))
            else:
                applied.applied += 1
        return applied


def runner_with(projection: Recording | Streaming, kafka: FakeKafka,
                records: RecordReader | None = None) -> ProjectionRunner:
    runner = ProjectionRunner(None, projection, records or reader(), service="test",
                              consumer="test",
                              topics=[FLOOR, ESTIMATES], group_id="g",
                              retry=RetryPolicy(first=0.0, longest=0.0))
    runner.subscriber = type("Subscriber", (), {"consumer": kafka})()
    return runner


# ------------------------------------------------------------------ reading


def test_a_readable_event_on_its_clinics_partition_is_read() -> None:
    record = record_of(arrival(), FLOOR, 0, partitions=12)
    read = reader().read(*_fields(record), partitions=12)
    assert read.reason is None and read.event is not None
    assert read.event.clinic_id == "north"


def test_unreadable_records_say_why() -> None:
    good = record_of(arrival(), FLOOR, 0)
    cases = {
        "empty record (tombstone)": KafkaRecord(FLOOR, 0, 1, b"north", None),
        "not valid JSON": KafkaRecord(FLOOR, 0, 2, b"north", b"{oops"),
        "key 'south' is not the event's clinic_id 'north'": KafkaRecord(
            FLOOR, 0, 3, b"south", good.value),
        "wait.estimated": record_of(estimate(), FLOOR, 4),
    }
    for expected, record in cases.items():
        read = reader().read(*_fields(record))
        assert read.event is None
        assert read.reason is not None and expected in read.reason, read.reason


def test_an_event_type_a_topic_does_not_carry_is_refused_there() -> None:
    read = reader().read(*_fields(record_of(arrival(), ESTIMATES, 0)))
    assert read.reason is not None and "does not belong on estimates" in read.reason


def test_a_record_on_another_partition_than_its_key_is_refused_naming_the_right_one() -> None:
    right = partition_for(b"north", 12)
    wrong = (right + 1) % 12
    read = reader().read(*_fields(record_of(arrival(), FLOOR, 0, partition=wrong)),
                         partitions=12)
    assert read.reason is not None
    assert f"belongs on partition {right} of 12" in read.reason
    assert f"not {wrong}" in read.reason
    # the partition count unknown (metadata not there yet): not checked
    assert reader().read(*_fields(record_of(arrival(), FLOOR, 0, partition=wrong))).reason is None


def test_the_partition_of_a_key_is_the_one_producers_choose_by_default() -> None:
    from aiokafka.partitioner import DefaultPartitioner

    partitions = list(range(12))
    for key in (b"north", b"south", b"east", b"clinic-42", b"x"):
        assert partition_for(key, 12) == DefaultPartitioner()(key, partitions, partitions)


def test_records_at_or_below_the_stored_offset_were_applied_before() -> None:
    records = [Inbound(FLOOR, 0, offset, b"k", b"v") for offset in (4, 5, 6)]
    records.append(Inbound(FLOOR, 1, 0, b"k", b"v"))
    new, already, offsets = fresh(records, {(FLOOR, 0): 5, (FLOOR, 1): None})
    assert [r.offset for r in new] == [6, 0]
    assert already == 2
    assert offsets == {(FLOOR, 0): 6, (FLOOR, 1): 0}


# ------------------------------------------------------------------ running


async def test_partitions_resume_after_their_stored_offsets_or_at_their_beginning() -> None:
    kafka = FakeKafka(beginning=40)
    runner = runner_with(Recording({(FLOOR, 3): 99}), kafka)
    assigned = [TopicPartition(FLOOR, 3), TopicPartition(FLOOR, 4)]
    await runner.on_assigned(assigned)
    assert kafka.seeks == [(TopicPartition(FLOOR, 3), 100), (TopicPartition(FLOOR, 4), 40)]
    assert kafka.asked == [[TopicPartition(FLOOR, 4)]]  # beginnings in one request


async def test_a_first_batch_that_skipped_records_is_dropped_and_sought_back() -> None:
    kafka = FakeKafka()
    projection = Recording({(FLOOR, 0): 99})
    runner = runner_with(projection, kafka)
    await runner.on_assigned([TopicPartition(FLOOR, 0)])
    kafka.seeks.clear()
    skipped = [record_of(arrival(visit=f"v{i}"), FLOOR, 150 + i) for i in range(2)]
    assert await runner.handle(skipped) is None
    assert kafka.seeks == [(TopicPartition(FLOOR, 0), 100)]
    assert projection.batches == []
    applied = await runner.handle([record_of(arrival(), FLOOR, 100)])
    assert applied is not None and applied.applied == 1


async def test_records_deleted_by_retention_are_not_a_gap() -> None:
    kafka = FakeKafka(beginning=500)
    runner = runner_with(Recording({(FLOOR, 0): 99}), kafka)
    await runner.on_assigned([TopicPartition(FLOOR, 0)])
    applied = await runner.handle([record_of(arrival(), FLOOR, 500)])
    assert applied is not None and applied.applied == 1


async def test_a_batch_that_fails_is_read_again_and_nothing_is_committed() -> None:
    tp = TopicPartition(FLOOR, 0)
    kafka = FakeKafka(assigned={tp}, high={tp: 12})
    projection = Recording()
    runner = runner_with(projection, kafka)
    batch = [record_of(arrival(visit=f"v{i}"), FLOOR, 10 + i) for i in range(2)]
    projection.failing = True
    assert await runner.handle(batch) is None
    assert kafka.seeks == [(tp, 10)]
    assert kafka.commits == []
    projection.failing = False
    applied = await runner.handle(batch)
    assert applied is not None and applied.applied == 2
    assert kafka.commits == [{tp: 12}]  # one past what is stored
    assert runner.lag({(FLOOR, 0): 11}) == 0


async def test_unreadable_records_are_dead_lettered_and_the_consumer_keeps_going() -> None:
    tp = TopicPartition(FLOOR, 0)
    kafka = FakeKafka(assigned={tp})
    runner_calls: list[str] = []
    projection = Recording()
    runner = runner_with(projection, kafka)
    runner.on_dead_letters = lambda: runner_calls.append("kick")
    batch = [KafkaRecord(FLOOR, 0, 0, b"north", None), record_of(arrival(), FLOOR, 1)]
    applied = await runner.handle(batch)
    assert applied is not None
    assert [d.reason for d in applied.dead_letters] == ["empty record (tombstone)"]
    assert applied.applied == 1
    assert runner_calls == ["kick"]
    assert kafka.commits == [{tp: 2}]


async def test_revoked_partitions_are_released_to_the_projection() -> None:
    projection = Recording()
    runner = runner_with(projection, FakeKafka())
    await runner.on_revoked([TopicPartition(FLOOR, 2)])
    assert projection.released == [(FLOOR, 2)]


async def test_a_streaming_projection_is_given_records_read_a_few_hundred_ahead() -> None:
    tp = TopicPartition(FLOOR, 0)
    kafka, counting = FakeKafka(assigned={tp}), CountingReader()
    projection = Streaming(counting)
    assert isinstance(projection, StreamingProjection)
    runner = runner_with(projection, kafka, counting)
    last = READ_AHEAD + 1
    batch = [*(record_of(arrival(visit=f"v{i}"), FLOOR, i) for i in range(last)),
             KafkaRecord(FLOOR, 0, last, b"north", None)]
    applied = await runner.handle(batch)
    # read READ_AHEAD at a time as the projection comes to them, never the batch at once
    assert projection.read_when_applied == [READ_AHEAD] * READ_AHEAD + [last + 1] * 2
    assert applied is not None and applied.applied == last
    [letter] = applied.dead_letters
    assert letter.record == Inbound(FLOOR, 0, last, b"north", None,
                                    reason="empty record (tombstone)")
    assert kafka.commits == [{tp: last + 1}]


async def test_a_streamed_batch_off_course_or_failing_is_read_again_from_its_start() -> None:
    tp = TopicPartition(FLOOR, 0)
    kafka, counting = FakeKafka(assigned={tp}), CountingReader()
    projection = Streaming(counting)
    runner = runner_with(projection, kafka, counting)
    await runner.on_assigned([tp])  # nothing stored: the partition's beginning, 0
    kafka.seeks.clear()
    assert await runner.handle([record_of(arrival(), FLOOR, 5)]) is None
    assert kafka.seeks == [(tp, 0)] and counting.reads == 0  # dropped unread
    batch = [record_of(arrival(visit=f"v{i}"), FLOOR, i) for i in range(3)]
    projection.fail_at = 1
    assert await runner.handle(batch) is None
    assert kafka.seeks == [(tp, 0), (tp, 0)] and kafka.commits == []
    projection.fail_at = None
    applied = await runner.handle(batch)
    assert applied is not None and applied.applied == 3 and kafka.commits == [{tp: 3}]


def test_the_retry_pause_grows_and_starts_again_after_a_success() -> None:
    policy = RetryPolicy(first=0.5, longest=2.0)
    assert [policy.pause() for _ in range(4)] == [0.5, 1.0, 2.0, 2.0]
    policy.reset()
    assert policy.pause() == 0.5


# ------------------------------------------------------------------ errors, clock


def test_each_refusal_kind_has_one_http_status() -> None:
    assert [status_of(e("x")) for e in (NotFound, Conflict, Rejected, Unavailable)] == [
        404, 409, 422, 503]

    class RoomUnknown(NotFound):
        pass

    refusal = RoomUnknown("room r999 is not a room of clinic north", "unknown_room")
    assert status_of(refusal) == 404 and refusal.code == "unknown_room"
    assert status_of(Refusal("x")) == 409


def test_a_fake_clock_moves_only_when_told() -> None:
    clock = FakeClock(AT)
    assert clock.now() == AT
    assert clock.advance(minutes=5) == datetime(2026, 3, 2, 14, 5, tzinfo=UTC)
    assert clock.now() == datetime(2026, 3, 2, 14, 5, tzinfo=UTC)


def _fields(record: Any) -> tuple[str, int, int, bytes | None, bytes | None]:
    return record.topic, record.partition, record.offset, record.key, record.value
