"""Flow's floor consumer, without Kafka or Redis: what it remembers of published
estimates follows the open visits, not the day."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from services.flow import consumer as consumer_module
from services.flow.consumer import FloorConsumer
from services.flow.processor import Record
from shared import events as ev
from shared.floor.clinic_flow import ClinicFlow
from shared.floor.estimator import Estimate


class _Broker:
    def __init__(self) -> None:
        self.published: list[tuple[bytes, str]] = []

    async def publish(self, body: bytes, topic: str, key: bytes | None = None) -> None:
        self.published.append((body, topic))


class _Runtime:
    def __init__(self) -> None:
        self.broker = _Broker()


async def test_published_estimates_of_ended_visits_are_forgotten(monkeypatch: Any) -> None:
    monkeypatch.setattr(consumer_module, "PUBLISHED_PRUNE_AT", 50)
    runtime = _Runtime()
    floor = FloorConsumer(runtime, None, floor_topic="f", estimates_topic="e",  # type: ignore[arg-type]
                          dead_letter_topic="d")
    flow = floor.processor.flows["north"] = ClinicFlow("north")
    now = datetime.now(UTC)
    for number in range(200):
        visit = f"v{number}"
        flow.apply(ev.PatientArrived(visit_id=visit, ticket_code=f"A-{number}",
                                     provider_id="dr-lee", visit_type="follow_up"), now)
        await floor._publish_estimates([("north", Estimate(visit, now, 10.0, 5.0, 15.0, 1, 10.0),
                                         now)])
        if number >= 10:  # all but the first ten leave again
            flow.apply(ev.ArrivalCancelled(visit_id=visit, reason="cancelled"), now)
    assert len(runtime.broker.published) == 200  # every estimate went out
    assert len(floor._published) <= 2 * 50  # pruned as it went
    assert {f"v{n}" for n in range(10)} <= set(floor._published)  # the open ones kept


class _Store:
    def __init__(self) -> None:
        self.checkpoints: list[dict[tuple[str, int], int]] = []

    async def write(self, boards: dict[str, bytes], checkpoint: Any = None) -> None:
        if checkpoint is not None:
            self.checkpoints.append(checkpoint[0])


async def test_a_backlog_is_checkpointed_as_soon_as_it_is_read_and_not_on_every_batch_after(
    monkeypatch: Any,
) -> None:
    store = _Store()
    floor = FloorConsumer(_Runtime(), store, floor_topic="f", estimates_topic="e",  # type: ignore[arg-type]
                          dead_letter_topic="d", checkpoint_seconds=3600)
    lags = iter([20_000, 3_000, 0, 0, 0])
    monkeypatch.setattr(floor, "_lag", lambda result: next(lags))
    elsewhere = iter([1_000, 0])  # at the third batch another partition is still behind
    monkeypatch.setattr(floor, "_behind_anywhere", lambda: next(elsewhere))

    async def as_given(records: Any) -> Any:
        return list(records)

    async def committed(offsets: Any) -> None:
        return None

    monkeypatch.setattr(floor, "_without_gaps", as_given)
    monkeypatch.setattr(floor, "_commit", committed)
    now = datetime.now(UTC)
    for offset in range(5):
        event = ev.make_event(ev.RoomReady(room_id=f"room-{offset}"), clinic_id="north",
                              source="test", occurred_at=now)
        await floor.handle([Record("f", 0, offset, b"north", ev.encode(event))])
        # nothing before the whole backlog is read; then everything at once; then the
        # usual pace
        assert store.checkpoints == ([] if offset < 3 else [{("f", 0): 3}])


async def test_stage_timings_of_old_facts_are_not_observed_as_if_they_happened_now(
    monkeypatch: Any,
) -> None:
    from datetime import timedelta

    from prometheus_client import REGISTRY

    floor = FloorConsumer(_Runtime(), _Store(), floor_topic="f", estimates_topic="e",  # type: ignore[arg-type]
                          dead_letter_topic="d", checkpoint_seconds=3600)
    monkeypatch.setattr(floor, "_lag", lambda result: 0)

    async def as_given(records: Any) -> Any:
        return list(records)

    monkeypatch.setattr(floor, "_without_gaps", as_given)

    def observed(clinic: str) -> float:
        return REGISTRY.get_sample_value("clinicflow_stage_duration_minutes_count", {
            "clinic": clinic, "provider": "dr-lee", "stage": "arrival_to_roomed"}) or 0.0

    offset = 0
    for clinic, at in (("yesterday", datetime.now(UTC) - timedelta(days=1)),
                       ("today", datetime.now(UTC) - timedelta(minutes=2))):
        records = []
        for payload, minutes in ((ev.PatientArrived(visit_id="v1", ticket_code="A-1",
                                                    provider_id="dr-lee",
                                                    visit_type="follow_up"), 0),
                                 (ev.PatientRoomed(visit_id="v1", room_id="r1"), 1)):
            event = ev.make_event(payload, clinic_id=clinic, source="test",
                                  occurred_at=at + timedelta(minutes=minutes))
            records.append(Record("f", 0, offset, clinic.encode(), ev.encode(event)))
            offset += 1
        await floor.handle(records)
    assert observed("yesterday") == 0  # a rebuild's history: the day's report keeps it
    assert observed("today") == 1


class _Kafka:
    """Kafka whose offset lookups fail (the broker went away mid-rebalance)."""

    def __init__(self) -> None:
        self.seeks: list[tuple[Any, int]] = []

    async def beginning_offsets(self, tps: Any) -> Any:
        raise ConnectionError("broker unreachable")

    def seek(self, tp: Any, offset: int) -> None:
        self.seeks.append((tp, offset))


async def test_a_failed_seek_on_assignment_never_applies_a_checkpointed_record_again(
    monkeypatch: Any,
) -> None:
    import types

    import pytest
    from aiokafka import TopicPartition

    from shared.floor.snapshot import dump_flow_json

    restored = ClinicFlow("north")
    now = datetime.now(UTC)
    restored.apply(ev.PatientArrived(visit_id="v1", ticket_code="A-1", provider_id="dr-lee",
                                     visit_type="follow_up"), now, "e0")

    class Store(_Store):
        async def claim(self, topic: str, partition: int) -> None:
            return None

        async def load_partition(self, topic: str, partition: int) -> Any:
            return (7, [dump_flow_json(restored)]) if partition == 0 else (None, [])

    kafka = _Kafka()
    floor = FloorConsumer(_Runtime(), Store(), floor_topic="f", estimates_topic="e",  # type: ignore[arg-type]
                          dead_letter_topic="d", checkpoint_seconds=3600)
    floor.subscriber = types.SimpleNamespace(consumer=kafka)
    with pytest.raises(ConnectionError):  # aiokafka logs it and goes on consuming
        await floor.on_assigned([TopicPartition("f", 0), TopicPartition("f", 1)])
    monkeypatch.setattr(floor, "_lag", lambda result: 0)

    def arrival(offset: int) -> Record:
        event = ev.make_event(ev.PatientArrived(visit_id=f"w{offset}", ticket_code="A-2",
                                                provider_id="dr-lee", visit_type="follow_up"),
                              clinic_id="north", source="test", occurred_at=now)
        return Record("f", 0, offset, b"north", ev.encode(event))

    # resumed from an older committed offset: what the checkpoint holds is not applied again
    result = await floor.handle([arrival(offset) for offset in range(5, 10)])
    assert (result.already_applied, result.applied) == (3, 2)
    assert set(floor.processor.flows["north"].clinic.visits) == {"v1", "w8", "w9"}
