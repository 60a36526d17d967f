"""Kafka positions that follow Redis (shared/consumer.py), with a stand-in for the
aiokafka consumer: which partitions are sought where, which batches are dropped, what is
committed. The real broker runs these paths in tests/integration (flow, notifications)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiokafka import TopicPartition

from shared.consumer import (
    commit_applied,
    first_offsets,
    lag_after,
    off_course,
    resume_all,
    rewind,
)


@dataclass
class FakeKafka:
    beginning: int = 0
    high: dict[TopicPartition, int | None] = field(default_factory=dict)
    assigned: set[TopicPartition] = field(default_factory=set)
    seeks: list[tuple[TopicPartition, int]] = field(default_factory=list)
    commits: list[dict[TopicPartition, int]] = field(default_factory=list)
    asked: list[list[TopicPartition]] = field(default_factory=list)

    async def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        self.asked.append(list(tps))
        return dict.fromkeys(tps, self.beginning)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))

    def assignment(self) -> set[TopicPartition]:
        return self.assigned

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(offsets)

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.high.get(tp)


@dataclass
class Rec:
    topic: str
    partition: int
    offset: int


TP = TopicPartition("floor", 3)


async def test_a_partition_resumes_after_its_stored_offset_or_at_its_beginning() -> None:
    kafka, expect = FakeKafka(beginning=40), {}
    assert (await resume_all(kafka, {TP: 99}, expect))[TP] == 100
    other = TopicPartition("floor", 4)
    assert (await resume_all(kafka, {other: None}, expect))[other] == 40
    assert kafka.seeks == [(TP, 100), (TopicPartition("floor", 4), 40)]
    assert expect == {("floor", 3): 100, ("floor", 4): 40}


async def test_partitions_assigned_together_ask_for_their_beginnings_in_one_request() -> None:
    kafka, expect = FakeKafka(beginning=7), {}
    stored = {TopicPartition("floor", p): (None if p % 2 else 10 * p) for p in range(6)}
    starts = await resume_all(kafka, stored, expect)
    assert kafka.asked == [[TopicPartition("floor", p) for p in (1, 3, 5)]]
    assert starts == {TopicPartition("floor", p): (7 if p % 2 else 10 * p + 1) for p in range(6)}
    assert kafka.seeks == list(starts.items())
    assert await resume_all(kafka, {TP: 4}, expect) == {TP: 5}
    assert len(kafka.asked) == 1  # every offset stored: Kafka is not asked


async def test_a_batch_that_skipped_records_is_dropped_and_sought_back() -> None:
    kafka, expect = FakeKafka(), {("floor", 3): 100, ("floor", 4): 7}
    batch = [Rec("floor", 3, 150), Rec("floor", 3, 151), Rec("floor", 4, 7)]
    first = first_offsets(batch)
    assert first == {("floor", 3): 150, ("floor", 4): 7}
    assert await off_course(kafka, expect, first) == {("floor", 3)}
    assert kafka.seeks == [(TP, 100)]
    assert expect == {("floor", 3): 100}  # checked again on its next batch
    assert await off_course(kafka, expect, {("floor", 3): 100}) == set()
    assert expect == {}


async def test_records_deleted_by_retention_are_not_a_gap() -> None:
    kafka, expect = FakeKafka(beginning=500), {("floor", 3): 100}
    assert await off_course(kafka, expect, {("floor", 3): 500}) == set()
    assert kafka.seeks == []


async def test_only_assigned_partitions_are_committed_one_past_what_redis_holds() -> None:
    other = TopicPartition("floor", 5)
    kafka = FakeKafka(assigned={TP})
    await commit_applied(kafka, {("floor", 3): 41, ("floor", 5): 9})
    assert kafka.commits == [{TP: 42}]
    assert other not in kafka.commits[0]
    await commit_applied(kafka, {})
    assert len(kafka.commits) == 1


async def test_a_commit_refused_in_a_rebalance_is_left_for_the_next_one() -> None:
    class Refusing(FakeKafka):
        async def commit(self, offsets: dict[TopicPartition, int]) -> None:
            raise RuntimeError("rebalance in progress")

    await commit_applied(Refusing(assigned={TP}), {("floor", 3): 1})  # does not raise


def test_lag_is_what_remains_after_the_applied_offsets_and_unknown_without_metadata() -> None:
    kafka: Any = FakeKafka(high={TP: 50, TopicPartition("floor", 4): 10})
    assert lag_after(kafka, {("floor", 3): 41, ("floor", 4): 9}) == 8
    assert lag_after(kafka, {("floor", 6): 1}) is None
    assert lag_after(None, {("floor", 3): 1}) is None
    assert lag_after(kafka, {}) is None


def test_a_batch_not_applied_is_put_back_for_the_partitions_still_assigned() -> None:
    kafka = FakeKafka(assigned={TP})
    rewind(kafka, {("floor", 3): 17, ("floor", 9): 4})
    assert kafka.seeks == [(TP, 17)]
    rewind(None, {("floor", 3): 17})  # no consumer yet: nothing to do
