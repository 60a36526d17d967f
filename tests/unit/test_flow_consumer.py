"""Flow's floor projection on the shared runner, without Kafka or Redis (tests/fakes.py
stands in for the consumer and the clock; a store in memory records what flow wrote):
when boards, checkpoints and dead letters are written, what Kafka is told, and what is
remembered."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from aiokafka import TopicPartition
from prometheus_client import REGISTRY

from services.flow import consumer as consumer_module
from services.flow.consumer import FlowProjection
from services.flow.processor import floor_reader
from services.flow.store import Checkpoint, Fenced
from shared import events as ev
from shared.floor.clinic_flow import ClinicFlow
from shared.floor.estimator import WaitEstimate
from shared.floor.snapshot import dump_flow_json
from shared.projection import Partition, ProjectionRunner, RetryPolicy
from tests.fakes import FakeClock, FakeKafka, KafkaRecord

FLOOR = "floor"
ON_0 = TopicPartition(FLOOR, 0)


class MemoryFlowStore:
    """FlowStore in memory: what flow wrote (boards, checkpoints), and the checkpoints a
    partition is restored from."""

    def __init__(self, restored: dict[Partition, tuple[int, list[bytes]]] | None = None) -> None:
        self.restored = restored or {}
        self.boards: dict[str, bytes] = {}
        self.checkpoints: list[Checkpoint] = []
        self.released: list[Partition] = []
        self.refusing: Exception | None = None  # every write raises it (Redis down, fenced)

    async def claim(self, topic: str, partition: int) -> None:
        return None

    def release(self, topic: str, partition: int) -> None:
        self.released.append((topic, partition))

    async def load_partition(self, topic: str, partition: int) -> tuple[int | None, list[bytes]]:
        return self.restored.get((topic, partition), (None, []))

    async def write(self, boards: dict[str, bytes], checkpoint: Checkpoint | None = None
                    ) -> None:
        if self.refusing is not None:
            raise self.refusing
        self.boards.update(boards)
        if checkpoint is not None:
            self.checkpoints.append(checkpoint)


class Published:
    """The estimates flow sent (bytes, topic, key)."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, str, bytes | None]] = []

    async def __call__(self, value: bytes, topic: str, key: bytes | None
                       ) -> asyncio.Future[None]:
        """Handed over (in order) and confirmed at once."""
        self.sent.append((value, topic, key))
        confirmed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        confirmed.set_result(None)
        return confirmed


def flow_on(store: MemoryFlowStore, kafka: FakeKafka, clock: FakeClock, *,
            checkpoint_seconds: float = 1.0, published: Published | None = None,
            ) -> tuple[FlowProjection, ProjectionRunner]:
    """Flow's projection and the runner as app.py wires them, on the fakes."""
    floor = FlowProjection(store, published or Published(), clock,  # type: ignore[arg-type]
                           estimates_topic="estimates", checkpoint_seconds=checkpoint_seconds)
    runner = ProjectionRunner(None, floor, floor_reader(FLOOR), service="flow",
                              consumer="flow", topics=[FLOOR], group_id="flow",
                              retry=RetryPolicy(first=0.0, longest=0.0))
    runner.subscriber = SimpleNamespace(consumer=kafka)
    floor.kafka = runner
    return floor, runner


def fact(offset: int, payload: ev.Payload, at: datetime, clinic: str = "north",
         partition: int = 0) -> KafkaRecord:
    event = ev.make_event(payload, clinic_id=clinic, source="test", occurred_at=at,
                          event_id=f"e{partition}-{offset}")
    return KafkaRecord(FLOOR, partition, offset, clinic.encode(), ev.encode(event))


def arrival(offset: int, at: datetime, visit: str | None = None) -> KafkaRecord:
    return fact(offset, ev.PatientArrived(visit_id=visit or f"v{offset}", ticket_code="A-1",
                                          provider_id="dr-lee", visit_type="follow_up"), at)


async def test_boards_follow_every_batch_and_checkpoints_the_clock_s_pace() -> None:
    clock, kafka, store = FakeClock(), FakeKafka(assigned={ON_0}), MemoryFlowStore()
    _floor, runner = flow_on(store, kafka, clock)
    applied = await runner.handle([arrival(0, clock.now())])
    assert applied is not None and applied.applied == 1
    assert b'"A-1"' in store.boards["north"]  # on the board at once
    assert store.checkpoints == [] and applied.offsets == {}  # the period has not passed
    assert kafka.commits == []  # Kafka is told what Redis holds, nothing more

    clock.advance(seconds=1)
    applied = await runner.handle([arrival(1, clock.now())])
    assert applied is not None and applied.offsets == {(FLOOR, 0): 1}
    [checkpoint] = store.checkpoints
    assert checkpoint.offsets == {(FLOOR, 0): 1}
    assert set(checkpoint.snapshots) == {"north"}
    assert kafka.commits == [{ON_0: 2}]


async def test_a_dead_letter_is_queued_with_the_checkpoint_that_stores_its_offset() -> None:
    clock, kafka, store = FakeClock(), FakeKafka(assigned={ON_0}), MemoryFlowStore()
    floor, runner = flow_on(store, kafka, clock)
    batch_at = clock.now()
    applied = await runner.handle([KafkaRecord(FLOOR, 0, 0, b"north", None),
                                   arrival(1, batch_at)])
    assert applied is not None and [d.reason for d in applied.dead_letters] == [
        "empty record (tombstone)"]
    assert store.checkpoints == []  # not dead-lettered yet: its offset is not stored

    await floor.flush_when_idle(batch_at + timedelta(seconds=0.5))  # the topic not quiet yet
    assert store.checkpoints == []
    await floor.flush_when_idle(batch_at + timedelta(seconds=1))  # quiet for a period
    [checkpoint] = store.checkpoints
    assert checkpoint.offsets == {(FLOOR, 0): 1}
    [entry] = [orjson.loads(e) for e in checkpoint.dead_letters]
    letter = orjson.loads(entry["value"])
    assert (entry["topic"], entry["key"]) == ("deadletter", "north")
    assert (letter["offset"], letter["reason"], letter["consumer"]) == (
        0, "empty record (tombstone)", "flow")
    assert kafka.commits == [{ON_0: 2}]

    await floor.flush_when_idle(batch_at + timedelta(seconds=2))
    assert len(store.checkpoints) == 1  # nothing left to store


async def test_a_backlog_is_checkpointed_as_soon_as_it_is_read_and_not_on_every_batch_after(
) -> None:
    clock, store = FakeClock(), MemoryFlowStore(restored={(FLOOR, 1): (0, [])})
    kafka = FakeKafka(assigned={ON_0, TopicPartition(FLOOR, 1)})
    _floor, runner = flow_on(store, kafka, clock, checkpoint_seconds=3600)
    await runner.on_assigned([ON_0, TopicPartition(FLOOR, 1)])  # partition 1 was checkpointed
    behind = [20_000, 3_000, 0, 0, 0]  # records left on partition 0 after each batch
    elsewhere = [5_000, 5_000, 1_000, 0, 0]  # partition 1 still has a backlog at the third
    for offset in range(5):
        kafka.high[ON_0] = offset + 1 + behind[offset]
        kafka.high[TopicPartition(FLOOR, 1)] = 1 + elsewhere[offset]
        room = fact(offset, ev.RoomReady(room_id=f"room-{offset}"), clock.now())
        await runner.handle([room])
        # nothing before the whole backlog is read; then everything at once; then the
        # usual pace (an hour here)
        assert [c.offsets for c in store.checkpoints] == (
            [] if offset < 3 else [{(FLOOR, 0): 3}])


async def test_stage_timings_of_old_facts_are_not_observed_as_if_they_happened_now() -> None:
    clock, store = FakeClock(), MemoryFlowStore()
    _floor, runner = flow_on(store, FakeKafka(), clock, checkpoint_seconds=3600)

    def observed(clinic: str) -> float:
        return REGISTRY.get_sample_value("clinicflow_stage_duration_minutes_count", {
            # dr-lee is not configured for these clinics: bounded, the label is "other"
            "clinic": clinic, "provider": "other", "stage": "arrival_to_roomed"}) or 0.0

    offset = 0
    for clinic, at in (("yesterday", clock.now() - timedelta(days=1)),
                       ("today", clock.now() - timedelta(minutes=2))):
        records = []
        for payload, minutes in ((ev.PatientArrived(visit_id="v1", ticket_code="A-1",
                                                    provider_id="dr-lee",
                                                    visit_type="follow_up"), 0),
                                 (ev.PatientRoomed(visit_id="v1", room_id="r1"), 1)):
            records.append(fact(offset, payload, at + timedelta(minutes=minutes), clinic))
            offset += 1
        await runner.handle(records)
    assert observed("yesterday") == 0  # a rebuild's history: the day's report keeps it
    assert observed("today") == 1


async def test_published_estimates_of_ended_visits_are_forgotten(monkeypatch: Any) -> None:
    monkeypatch.setattr(consumer_module, "PUBLISHED_PRUNE_AT", 50)
    clock, published = FakeClock(), Published()
    floor, _runner = flow_on(MemoryFlowStore(), FakeKafka(), clock, published=published)
    flow = floor.processor.flows["north"] = ClinicFlow("north")
    now = clock.now()
    for number in range(200):
        visit = f"v{number}"
        flow.apply(ev.PatientArrived(visit_id=visit, ticket_code=f"A-{number}",
                                     provider_id="dr-lee", visit_type="follow_up"), now)
        estimate = WaitEstimate(visit, now, 10.0, 5.0, 15.0, 1, 10.0)
        await floor._publish_estimates([("north", estimate, now)])
        if number >= 10:  # all but the first ten leave again
            flow.apply(ev.ArrivalCancelled(visit_id=visit, reason="cancelled"), now)
    assert len(published.sent) == 200  # every estimate went out
    assert {topic for _value, topic, _key in published.sent} == {"estimates"}
    assert len(floor._published) <= 2 * 50  # pruned as it went
    assert {f"v{n}" for n in range(10)} <= set(floor._published)  # the open ones kept


class UnreachableKafka(FakeKafka):
    """Kafka whose offset lookups fail (the broker went away mid-rebalance)."""

    async def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        raise ConnectionError("broker unreachable")


async def test_a_failed_seek_on_assignment_never_applies_a_checkpointed_record_again() -> None:
    clock = FakeClock()
    restored = ClinicFlow("north")
    restored.apply(ev.PatientArrived(visit_id="v1", ticket_code="A-1", provider_id="dr-lee",
                                     visit_type="follow_up"), clock.now(), "e0")
    store = MemoryFlowStore(restored={(FLOOR, 0): (7, [dump_flow_json(restored)])})
    floor, runner = flow_on(store, UnreachableKafka(), clock, checkpoint_seconds=3600)
    with pytest.raises(ConnectionError):  # aiokafka logs it and goes on consuming
        await runner.on_assigned([ON_0, TopicPartition(FLOOR, 1)])
    assert b'"A-1"' in store.boards["north"]  # the restored board is current again

    # resumed from an older committed offset: what the checkpoint holds is not applied again
    applied = await runner.handle([arrival(offset, clock.now(), f"w{offset}")
                                   for offset in range(5, 10)])
    assert applied is not None and (applied.already_applied, applied.applied) == (3, 2)
    assert set(floor.processor.flows["north"].clinic.visits) == {"v1", "w8", "w9"}


async def test_the_board_refresh_re_estimates_at_the_time_it_is_given_and_checkpoints() -> None:
    clock, kafka, store = FakeClock(), FakeKafka(assigned={ON_0}), MemoryFlowStore()
    floor, runner = flow_on(store, kafka, clock, checkpoint_seconds=3600)
    arrived = clock.now()
    await runner.handle([arrival(0, arrived)])
    assert orjson.loads(store.boards["north"])["as_of"] == arrived.isoformat()

    later = arrived + timedelta(minutes=10)
    assert await floor.refresh_boards(later) == 1
    assert orjson.loads(store.boards["north"])["as_of"] == later.isoformat()
    assert [c.offsets for c in store.checkpoints] == [{(FLOOR, 0): 0}]
    assert kafka.commits == [{ON_0: 1}]
    # a clinic quiet for more than twelve hours is not redrawn
    assert await floor.refresh_boards(arrived + timedelta(hours=13)) == 0


async def test_boards_left_behind_while_redis_is_unreachable_are_drawn_once_it_is_back() -> None:
    clock, kafka, store = FakeClock(), FakeKafka(assigned={ON_0}), MemoryFlowStore()
    floor, runner = flow_on(store, kafka, clock)
    store.refusing = ConnectionError("redis unreachable")
    clock.advance(seconds=5)
    applied = await runner.handle([arrival(0, clock.now())])
    # applied in memory all the same: not read again, nothing stored, nothing committed
    assert applied is not None and (applied.applied, applied.offsets) == (1, {})
    assert store.boards == {} and kafka.commits == []

    store.refusing = None
    await floor.flush_when_idle(clock.advance(seconds=1))
    assert b'"A-1"' in store.boards["north"]
    assert [c.offsets for c in store.checkpoints] == [{(FLOOR, 0): 0}]
    assert kafka.commits == [{ON_0: 1}]


async def test_a_revoked_partition_is_checkpointed_then_forgotten() -> None:
    clock, kafka, store = FakeClock(), FakeKafka(assigned={ON_0}), MemoryFlowStore()
    floor, runner = flow_on(store, kafka, clock, checkpoint_seconds=3600)
    await runner.handle([arrival(0, clock.now()), KafkaRecord(FLOOR, 0, 1, b"north", None)])
    await runner.on_revoked([ON_0])
    [checkpoint] = store.checkpoints
    assert checkpoint.offsets == {(FLOOR, 0): 1} and len(checkpoint.dead_letters) == 1
    assert floor.processor.flows == {} and store.released == [(FLOOR, 0)]


async def test_a_partition_taken_over_while_paused_is_let_go_without_its_late_checkpoint(
) -> None:
    clock, kafka, store = FakeClock(), FakeKafka(assigned={ON_0}), MemoryFlowStore()
    floor, runner = flow_on(store, kafka, clock, checkpoint_seconds=3600)
    await runner.handle([arrival(0, clock.now()), KafkaRecord(FLOOR, 0, 1, b"north", None)])
    store.refusing = Fenced("partition 0 claimed by another instance")
    await runner.on_revoked([ON_0])
    assert store.checkpoints == [] and kafka.commits == []
    # nothing of it left to write later: the next owner applies (and dead-letters) it again
    assert floor.processor.flows == {} and store.released == [(FLOOR, 0)]
    store.refusing = None
    await floor.flush(clock.advance(seconds=1))
    assert store.checkpoints == []


def test_an_estimate_goes_to_kafka_as_the_event_models_would_write_it() -> None:
    from datetime import UTC, timezone

    from pydantic import ValidationError

    from services.flow.consumer import estimate_event
    from shared.floor.model import Visit

    def by_models(clinic_id: str, visit: Any, estimate: WaitEstimate, at: datetime) -> bytes:
        return ev.encode(ev.make_event(
            ev.WaitEstimated(visit_id=visit.visit_id, ticket_code=visit.ticket_code,
                             provider_id=visit.provider_id, position=estimate.position,
                             wait_minutes=estimate.wait_minutes, low=estimate.low,
                             high=estimate.high),
            clinic_id=clinic_id, source="flow", occurred_at=at,
            correlation_id=visit.visit_id))

    def without_id(raw: bytes) -> dict[str, Any]:
        document: dict[str, Any] = orjson.loads(raw)
        assert len(document.pop("event_id")) == 32
        return document

    arrived = datetime(2026, 3, 2, 13, 0, tzinfo=UTC)
    cases = [
        ("north", Visit("v-1", "A-1", "dr-lee", "follow_up", "routine", None, arrived),
         WaitEstimate("v-1", arrived, 12.5, 4.0, 21.25, 1, 12.5), arrived),
        ("north", Visit("v-2", "A-2", None, "new_patient", "urgent", arrived, arrived),
         WaitEstimate("v-2", arrived, 0, 0, 3, 2, 0.0),  # whole numbers: floats on the wire
         arrived + timedelta(microseconds=500)),
        ("c.7:x", Visit("v:3", "B-3", "p1", "physical", "routine", None, arrived),
         WaitEstimate("v:3", arrived, 7.000001, 1e-9, 1e6, 12, 7.0),
         datetime(2026, 11, 1, 1, 30, tzinfo=timezone(timedelta(hours=-4)))),
    ]
    for clinic_id, visit, estimate, at in cases:
        fast = estimate_event(clinic_id, visit, estimate, at)
        slow = by_models(clinic_id, visit, estimate, at)
        document = without_id(fast)
        assert document == without_id(slow)
        # the very bytes, given the same event id
        assert fast.replace(orjson.loads(fast)["event_id"].encode(), b"") == slow.replace(
            orjson.loads(slow)["event_id"].encode(), b"")
    # what the models refuse is refused as before
    visit = cases[0][1]
    for wrong in (WaitEstimate("v-1", arrived, -1.0, 0.0, 3.0, 1, 0.0),
                  WaitEstimate("v-1", arrived, float("nan"), 0.0, 3.0, 1, 0.0),
                  WaitEstimate("v-1", arrived, 1.0, 0.0, 3.0, 0, 0.0)):
        with pytest.raises(ValidationError):
            estimate_event("north", visit, wrong, arrived)
    newline = Visit("v-1\n", "A-1", "dr-lee", "follow_up", "routine", None, arrived)
    with pytest.raises(ValidationError):
        estimate_event("north", newline, cases[0][2], arrived)
    # the hour a clock falls back: 01:30 twice in New York, equal as datetimes, an hour apart
    from zoneinfo import ZoneInfo

    first = datetime(2026, 11, 1, 1, 30, tzinfo=ZoneInfo("America/New_York"))
    for at in (first, first.replace(fold=1)):
        fast = estimate_event("north", visit, cases[0][2], at)
        assert without_id(fast) == without_id(by_models("north", visit, cases[0][2], at))


async def test_a_record_the_producer_refuses_fails_the_batch_after_every_one_was_tried(
) -> None:
    # a record handed over in one batch: one refused must not keep the others (the told
    # ranges of another topic among them) from going out, nor leave outcomes unread
    from services.flow.consumer import FlowProjection
    from shared.floor.model import Visit

    sent: list[str] = []

    async def send(value: bytes, topic: str, _key: bytes | None) -> asyncio.Future[None]:
        sent.append(topic)
        if len(sent) == 2:
            raise ConnectionError("the producer is closed")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    clock = FakeClock(datetime(2026, 3, 2, 13, 0, tzinfo=UTC))
    floor = FlowProjection(MemoryFlowStore(), send, clock,  # type: ignore[arg-type]
                           estimates_topic="estimates", told_topic="told")
    flow = ClinicFlow("north")
    floor.processor.flows["north"] = flow
    at = clock.now()
    estimates = []
    for n in range(3):
        flow.clinic.visits[f"v-{n}"] = Visit(f"v-{n}", f"A-{n}", "dr-lee", "follow_up",
                                             "routine", None, at)
        estimates.append(WaitEstimate(f"v-{n}", at, 10.0 + n, 5.0, 20.0 + n, n + 1, 10.0))
    with pytest.raises(ConnectionError):
        await floor._publish_estimates([("north", e, at) for e in estimates])
    assert sent.count("estimates") == 3 and sent.count("told") == 3
