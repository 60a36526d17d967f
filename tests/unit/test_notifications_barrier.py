"""The contact desk's barrier on stand-ins for the runner's Kafka consumer and the stored
offsets: a command waits while the consumer is starting (no consumer, no partitions yet,
``end_offsets`` failing before it has started) and until the notifier has applied the
clinic's partition up to its end; past its time it is refused as unavailable."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import pytest
from aiokafka import TopicPartition

from shared.barrier import ProjectionBarrier
from shared.errors import Unavailable
from shared.projection import Partition, partition_for

FLOOR = "floor"
NORTH = TopicPartition(FLOOR, partition_for(b"north", 4))


class StartingConsumer:
    """aiokafka's consumer as the runner has it while it starts: partitions known from
    metadata, ``end_offsets`` failing until it has started (``fails`` times)."""

    def __init__(self, end: int, fails: int) -> None:
        self.end, self.fails = end, fails

    def partitions_for_topic(self, topic: str) -> set[int]:
        return {0, 1, 2, 3} if topic == FLOOR else set()

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        if self.fails:
            self.fails -= 1
            raise AttributeError("'NoneType' object has no attribute 'end_offsets'")
        return {tp: self.end for tp in tps}


class AppliedOffsets:
    """The offsets the notifier stored, as it catches up: one more record per look."""

    def __init__(self, applied: list[int | None]) -> None:
        self.applied = applied
        self.looks = 0

    async def read(self, partitions: Sequence[Partition]) -> dict[Partition, int | None]:
        self.looks += 1
        value = self.applied.pop(0) if len(self.applied) > 1 else self.applied[0]
        return {tp: value for tp in partitions}


class Seconds:
    """A monotonic clock that moves ``step`` seconds at every look."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


async def test_a_command_waits_for_a_starting_consumer_and_for_the_floor_to_be_read() -> None:
    consumers: list[Any] = [None, None, StartingConsumer(end=6, fails=2)]
    offsets = AppliedOffsets([None, 3, 4, 5])
    barrier = ProjectionBarrier(lambda: consumers.pop(0) if len(consumers) > 1 else consumers[0],
                           offsets, FLOOR, what="notifications", timeout=5, poll_seconds=0,
                           monotonic=Seconds(0.01))
    await barrier.caught_up("north")
    assert offsets.looks == 4  # until record 5, the partition's last, was applied
    assert NORTH.partition == partition_for(b"north", 4)


async def test_an_empty_floor_partition_needs_no_wait() -> None:
    offsets = AppliedOffsets([None])
    barrier = ProjectionBarrier(lambda: StartingConsumer(end=0, fails=0), offsets, FLOOR,
                           what="notifications",
                           poll_seconds=0)
    await barrier.caught_up("north")
    assert offsets.looks == 0


@pytest.mark.parametrize("consumer, applied, says", [
    (None, [None], "notifications is starting (the floor topic floor is not known yet)"),
    (StartingConsumer(end=6, fails=10**6), [None], "the floor topic's end is not known"),
    (StartingConsumer(end=6, fails=0), [2], "notifications is behind the floor topic"),
])
async def test_a_notifier_that_cannot_read_the_floor_in_time_refuses_the_command(
    consumer: Any, applied: list[int | None], says: str,
) -> None:
    barrier = ProjectionBarrier(lambda: consumer, AppliedOffsets(applied), FLOOR,
                                what="notifications", timeout=1,
                                poll_seconds=0, monotonic=Seconds(0.3))
    with pytest.raises(Unavailable, match=re.escape(says)):
        await barrier.caught_up("north")
