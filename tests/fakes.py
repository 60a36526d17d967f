"""The test fakes every layer shares: a settable clock, a stand-in for aiokafka's consumer
(what was sought, committed, asked), and Kafka records built from events.

Unit tests use them instead of a broker; integration tests use the real Kafka and Redis
but take time from ``FakeClock`` and call the services' ``tick(now)`` themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from aiokafka import TopicPartition

from shared import events as ev
from shared.projection import partition_for


class FakeClock:
    """A clock a test sets and moves: ``now()`` is what it was last set to."""

    def __init__(self, start: datetime | None = None) -> None:
        self.at = start or datetime(2026, 3, 2, 14, 0, tzinfo=UTC)

    def now(self) -> datetime:
        return self.at

    def set(self, at: datetime) -> datetime:
        self.at = at
        return at

    def advance(self, **delta: float) -> datetime:
        self.at = self.at + timedelta(**delta)
        return self.at


@dataclass
class FakeKafka:
    """aiokafka's ``AIOKafkaConsumer`` as the runner uses it, recording what it is told."""

    beginning: int = 0
    partitions: int | None = None  # partitions per topic (None: metadata not known yet)
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

    def partitions_for_topic(self, _topic: str) -> set[int] | None:
        return None if self.partitions is None else set(range(self.partitions))


@dataclass(frozen=True)
class KafkaRecord:
    """A record as aiokafka delivers it (the attributes the runner reads)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


def record_of(event: ev.Event, topic: str, offset: int, *, partitions: int = 1,
              partition: int | None = None) -> KafkaRecord:
    """``event`` encoded, keyed by its clinic, on the partition Kafka's default
    partitioner gives that key (or ``partition`` when a test wants another)."""
    key = event.clinic_id.encode()
    on = partition_for(key, partitions) if partition is None else partition
    return KafkaRecord(topic, on, offset, key, ev.encode(event))
