"""Kafka positions that follow what Redis holds: the pieces every Kafka-to-Redis
consumer shares.

A service that applies a topic to Redis stores, in the same Redis transaction as
the change, the last offset it applied per partition. Redis, not Kafka's group
offsets, says where to resume:

* ``resume_all`` seeks newly assigned partitions just after their stored offsets
  (the beginning when nothing is stored) and notes where each must start;
* ``off_course`` checks the first batch of each such partition: when it did not
  start there (the group's committed offset won over our seek), the partition is
  sought again and its records are to be dropped;
* ``commit_applied`` tells Kafka what Redis holds, for lag monitoring only:
  Kafka's offsets never run ahead of Redis, so resuming from them can only
  replay records already applied (and skipped as such);
* ``rewind`` puts a batch that could not be applied (Redis unreachable) back in
  front of the consumer: the partition's position has moved past it, and Kafka
  would not deliver it again before a rebalance;
* ``rebalance_listener`` wires the assignment callbacks;
* ``RedisPositioned`` puts these together for a consumer class.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import structlog
from aiokafka import ConsumerRebalanceListener, TopicPartition

log = structlog.get_logger("clinicflow.consumer")

Partition = tuple[str, int]
Callback = Callable[[Sequence[TopicPartition]], Awaitable[None]]


def rebalance_listener(on_assigned: Callback,
                       on_revoked: Callback | None = None) -> ConsumerRebalanceListener:
    """A listener calling ``on_assigned`` (and ``on_revoked``) with the partitions."""

    class Listener(ConsumerRebalanceListener):  # type: ignore[misc]
        async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
            if on_revoked is not None:
                await on_revoked(revoked)

        async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
            await on_assigned(assigned)

    return Listener()


async def resume_all(kafka: Any, stored: dict[TopicPartition, int | None],
                     expect: dict[Partition, int]) -> dict[TopicPartition, int]:
    """Seek each partition just after its ``stored`` offset (its beginning when None),
    note in ``expect`` where its first batch must start, and return those offsets. The
    beginnings are asked for in one request, not one round trip per partition."""
    unknown = [tp for tp, offset in stored.items() if offset is None]
    beginnings = (await kafka.beginning_offsets(unknown) if kafka is not None
                  else dict.fromkeys(unknown, 0)) if unknown else {}
    starts = {}
    for tp, offset in stored.items():
        start = starts[tp] = beginnings[tp] if offset is None else offset + 1
        expect[(tp.topic, tp.partition)] = start
        if kafka is not None:
            kafka.seek(tp, start)
    return starts


def first_offsets(records: Iterable[Any]) -> dict[Partition, int]:
    """The first offset of each partition in a batch (records with topic, partition,
    offset attributes, in the order Kafka gave them)."""
    first: dict[Partition, int] = {}
    for record in records:
        first.setdefault((record.topic, record.partition), record.offset)
    return first


async def off_course(kafka: Any, expect: dict[Partition, int],
                     first: dict[Partition, int]) -> set[Partition]:
    """The partitions whose first batch did not start where ``resume_all`` put them:
    each is sought back there, and the caller drops its records from this batch.

    A start past the expected offset is allowed when the records in between were
    deleted by retention (it is then the partition's beginning)."""
    if not expect:
        return set()
    skip: set[Partition] = set()
    for tp, offset in first.items():
        expected = expect.pop(tp, None)
        if expected is None or offset <= expected:
            continue
        partition = TopicPartition(*tp)
        beginning = (await kafka.beginning_offsets([partition]))[partition] if kafka else 0
        if offset <= beginning:
            continue
        log.warning("partition did not resume at its stored offset: seeking again",
                    topic=tp[0], partition=tp[1], got=offset, expected=expected)
        skip.add(tp)
        expect[tp] = expected
        if kafka is not None:
            kafka.seek(partition, expected)
    return skip


def rewind(kafka: Any, first: dict[Partition, int]) -> None:
    """Seek each partition of a batch that was not applied back to its first record, so
    the next fetch delivers it again."""
    if kafka is None:
        return
    assigned = kafka.assignment()
    for tp, offset in first.items():
        partition = TopicPartition(*tp)
        if partition in assigned:
            kafka.seek(partition, offset)


async def commit_applied(kafka: Any, offsets: dict[Partition, int]) -> None:
    """Commit to Kafka the offsets Redis holds (the last applied per partition), for the
    partitions still assigned. A rebalance in progress skips it: the next one commits."""
    if kafka is None or not offsets:
        return
    assigned = kafka.assignment()
    commit = {TopicPartition(*tp): offset + 1 for tp, offset in offsets.items()
              if TopicPartition(*tp) in assigned}
    if commit:
        try:
            await kafka.commit(commit)
        except Exception as exc:
            log.info("kafka commit skipped", error=repr(exc))


def lag_after(kafka: Any, offsets: dict[Partition, int]) -> int | None:
    """Records behind the high-water marks after ``offsets`` (None when unknown)."""
    if kafka is None or not offsets:
        return None
    lag = 0
    for tp, offset in offsets.items():
        try:
            highwater = kafka.highwater(TopicPartition(*tp))
        except Exception:  # metadata not there yet
            return None
        if highwater is None:
            return None
        lag += max(0, highwater - offset - 1)
    return lag


class RedisPositioned:
    """The wiring of a consumer whose positions live in Redis: the FastStream subscriber
    (set after the subscriber is made), its aiokafka consumer, the rebalance listener,
    resuming each assigned partition after ``stored_offset`` and dropping a first batch
    that did not start there (``without_gaps``)."""

    def __init__(self) -> None:
        self.subscriber: Any = None
        self._expect: dict[Partition, int] = {}

    def listener(self) -> ConsumerRebalanceListener:
        return rebalance_listener(self.on_assigned, self.on_revoked)

    @property
    def kafka_consumer(self) -> Any:
        return getattr(self.subscriber, "consumer", None)

    async def stored_offset(self, topic: str, partition: int) -> int | None:
        """The last offset of ``topic``/``partition`` applied to Redis (None: none yet)."""
        raise NotImplementedError

    async def on_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        """Position each new partition just after its stored offset (or at its start)."""
        stored = {tp: await self.stored_offset(tp.topic, tp.partition) for tp in assigned}
        await resume_all(self.kafka_consumer, stored, self._expect)

    async def on_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        for tp in revoked:
            self._expect.pop((tp.topic, tp.partition), None)

    async def off_course_partitions(self, records: Iterable[Any]) -> set[Partition]:
        """The partitions of a batch to drop: see ``off_course``."""
        return await off_course(self.kafka_consumer, self._expect, first_offsets(records))
