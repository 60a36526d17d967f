"""The one exactly-once projection runner: every consumer of every service reads Kafka
through it.

Kafka delivers at least once; a projection applies each record exactly once because it
stores the offsets it applied *in the same Redis transaction* as the state they
produced, and skips what is at or below them. The pieces, in the order a record meets
them:

``RecordReader``
    decodes each record into an ``Inbound``: the event, or the reason it cannot be
    applied (a tombstone, not an event, keyed other than by its clinic, on a partition
    other than its key's, an event type the topic does not carry). One table per
    consumer says which event types each topic accepts. ``stream`` reads a batch a few
    hundred records at a time, as they are come to.
``ProjectionRunner``
    the FastStream batch subscriber (``AckPolicy.MANUAL``: Kafka's commits follow
    Redis), partition positioning on assignment (just after the stored offset, or the
    partition's beginning when Redis holds none: a flushed Redis rebuilds itself),
    dropping a first batch that did not start there, one retry policy (a batch that
    fails is sought back and read again after a growing pause), commits of what Redis
    holds (for lag monitoring only), lag and consumption metrics.
``Projection``
    what a service supplies: ``positions`` (restore and fence on assignment),
    ``release`` (on revocation) and ``apply`` (a batch, exactly once, its records read).
    A ``StreamingProjection`` has ``apply_stream`` instead: it is given the batch's
    records as it comes to them, each the record as Kafka gave it with its event or the
    reason it cannot be applied, read a few hundred ahead (``READ_AHEAD``). A projection
    that applies records in memory (flow) then makes no ``Inbound`` for a record that
    applies (one object less per event), and never holds a whole batch decoded at once.
``RedisProjection``
    the usual ``apply``: one optimistic Redis transaction per batch. Under ``WATCH`` it
    reads the stored offsets and the state the batch needs (the service's
    ``ProjectionStore``), calls the service's pure ``plan(records, state)``, and writes
    the changes, the new offsets and the dead letters (to the outbox) in one
    ``MULTI``/``EXEC``. Another writer touching the same keys meanwhile makes it plan
    again from what is now stored.

Dead letters go to the service's outbox (``shared/outbox.py``) in the transaction that
stores their offsets, so a record is dead-lettered exactly when it is marked done.

Offsets key layout (``P`` is the service's Redis prefix, ``C`` the consumer's name)::

    P:applied:C:<topic>:<partition>     the last offset applied (string)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, make_dataclass
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.partitioner import murmur2
from faststream import AckPolicy
from faststream.kafka import KafkaMessage
from redis.asyncio import Redis
from redis.exceptions import WatchError

from shared import events as ev
from shared.kafka import dead_letter_record
from shared.logging import get_logger
from shared.metrics import (
    BATCH_FAILURES,
    BATCH_SECONDS,
    CONSUMER_LAG,
    DEAD_LETTERS,
    EVENTS_CONSUMED,
    reason_kind,
)
from shared.outbox import Outbox, outbox_entry

log = get_logger("clinicflow.projection")

Partition = tuple[str, int]
S = TypeVar("S")
C = TypeVar("C")
S_co = TypeVar("S_co", covariant=True)
C_contra = TypeVar("C_contra", contravariant=True)


# ------------------------------------------------------------------ reading


@dataclass(frozen=True, slots=True)
class Inbound:
    """One Kafka record as read: its ``event``, or the ``reason`` it cannot be applied."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    event: ev.Event | None = None
    reason: str | None = None

    @property
    def tp(self) -> Partition:
        return (self.topic, self.partition)


# The reader makes one Inbound per record. A frozen dataclass's __init__ sets each field
# through object.__setattr__, about three times as slow as plain slot stores: ~0.5 us of
# flow's ~35 us per event. The reader fills a settable twin with the same slots instead and
# makes it an Inbound (an object may change its class to one of the same layout).
_InboundDraft = make_dataclass(
    "_InboundDraft", [(f.name, f.type, field(default=f.default)) for f in fields(Inbound)],
    slots=True)


def _inbound(topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None,
             found: ev.Event | str) -> Inbound:
    """The ``Inbound`` of a record and what reading it found (its event, made the fast way,
    or the reason it cannot be applied)."""
    if isinstance(found, str):
        return Inbound(topic, partition, offset, key, value, reason=found)
    record: Any = _InboundDraft(topic, partition, offset, key, value, found)
    record.__class__ = Inbound
    return record


def inbound(record: Any, found: ev.Event | str) -> Inbound:
    """The ``Inbound`` of an aiokafka record (``topic``, ``partition``, ``offset``, ``key``,
    ``value``) and what reading it found."""
    return _inbound(record.topic, record.partition, record.offset, record.key, record.value,
                    found)


# An aiokafka record as a ``StreamingProjection`` is given it, with what reading it found:
# its event, or the reason it cannot be applied
Reading = tuple[Any, "ev.Event | str"]

# How many records ``RecordReader.stream`` reads ahead of the projection applying them.
# Counted with cachegrind on flow (bench/instructions.py, 2,000-record batches): a few
# hundred decoded together, then applied, miss the CPU's caches least (decoding's code
# and data stay warm through its run, the floor's through its own, and what was decoded
# still fits a core's L2): one at a time missed 15% more in L2, a whole batch at once
# took 900 more instructions per event.
READ_AHEAD = 256


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record that cannot be applied, and why."""

    record: Inbound
    reason: str

    def entry(self, consumer: str) -> bytes:
        """The outbox entry that publishes it to the dead-letter topic."""
        record = self.record
        letter = dead_letter_record(raw=record.value, reason=self.reason, consumer=consumer,
                                    source_topic=record.topic, partition=record.partition,
                                    offset=record.offset, key=record.key)
        key = record.key.decode("utf-8", "replace") if record.key else None
        return outbox_entry("deadletter", key, letter)


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's Java client (and aiokafka, and librdkafka's
    ``murmur2_random``) puts ``key`` on: murmur2 of the key, positive, modulo the count."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class RecordReader:
    """Reads raw records for one consumer: into ``Inbound``s (``read``), or each with its
    event or the reason it cannot be applied (``check``, ``stream``).

    ``accepts`` maps each topic the consumer reads to the event payload types it takes
    there (None: any event). Floor, estimates and ledger records are keyed by clinic: a
    key other than the event's clinic, or a partition other than the key's under
    Kafka's default (murmur2) partitioner, would break the clinic's order, and the
    record is refused with the reason."""

    def __init__(self, accepts: Mapping[str, frozenset[type[Any]] | None]) -> None:
        self.accepts = dict(accepts)
        # partition count -> key -> its partition (keyed by the record's own bytes: a
        # lookup hashes them once, with no tuple made per record)
        self._partition_of_key: dict[int, dict[bytes, int]] = {}

    def read(self, topic: str, partition: int, offset: int, key: bytes | None,
             value: bytes | None, partitions: int | None = None) -> Inbound:
        """Decode one record; ``partitions`` is the topic's partition count when known."""
        return _inbound(topic, partition, offset, key, value,
                        self.check(topic, partition, key, value, partitions))

    def stream(self, records: Sequence[Any], partitions: Mapping[str, int]
               ) -> Iterator[Reading]:
        """Each record (aiokafka's: ``topic``, ``partition``, ``offset``, ``key``,
        ``value``) with what ``check`` finds in it, in order, read ``READ_AHEAD`` at a
        time when the first of them is asked for; ``partitions``: the topics' partition
        counts, where known."""
        check = self.check
        count = partitions.get
        for start in range(0, len(records), READ_AHEAD):
            yield from [(record, check(record.topic, record.partition, record.key,
                                       record.value, count(record.topic)))
                        for record in records[start:start + READ_AHEAD]]

    def check(self, topic: str, partition: int, key: bytes | None, value: bytes | None,
              partitions: int | None = None) -> ev.Event | str:
        """What ``read`` finds in a record: its event, or the reason it cannot be applied."""
        if value is None:
            return "empty record (tombstone)"
        try:
            event = ev.decode(value)
        except ev.InvalidEvent as exc:
            return exc.reason
        clinic_id = event.envelope.clinic_id
        if key is not None:
            if key != clinic_id.encode():
                return (f"key {key.decode('utf-8', 'replace')!r} is not the event's clinic_id "
                        f"{clinic_id!r}: events are keyed by clinic")
            if partitions:
                of_key = self._partition_of_key.get(partitions)
                expected = None if of_key is None else of_key.get(key)
                if expected is None:
                    expected = self._expected_partition(key, partitions)
                if expected != partition:
                    return (f"wrong partition: key {clinic_id!r} belongs on partition {expected} "
                            f"of {partitions} (Kafka's default murmur2 partitioner), not "
                            f"{partition}; a clinic's events must share one partition to keep "
                            "their order (kcat: -X partitioner=murmur2_random)")
        accepted = self.accepts.get(topic)
        if accepted is not None and type(event.payload) not in accepted:
            return f"{event.event_type} does not belong on {topic}"
        return event

    def _expected_partition(self, key: bytes, partitions: int) -> int:
        cache = self._partition_of_key.setdefault(partitions, {})
        found = cache.get(key)
        if found is None:
            if len(cache) > 100_000:  # keys are clinics: bounded in practice, bounded here
                cache.clear()
            found = cache[key] = partition_for(key, partitions)
        return found


def first_offsets(records: Iterable[Any]) -> dict[Partition, int]:
    """The first offset of each partition in a batch of records (anything with
    ``topic``, ``partition`` and ``offset``, in Kafka's order)."""
    first: dict[Partition, int] = {}
    for record in records:
        first.setdefault((record.topic, record.partition), record.offset)
    return first


def fresh(records: Iterable[Inbound], stored: Mapping[Partition, int | None]
          ) -> tuple[list[Inbound], int, dict[Partition, int]]:
    """The records past their partition's stored offset (in order), how many were at or
    below it (applied before), and the last offset per partition among the new ones."""
    new: list[Inbound] = []
    already = 0
    offsets: dict[Partition, int] = {}
    for record in records:
        done = stored.get(record.tp)
        if done is not None and record.offset <= done:
            already += 1
            continue
        new.append(record)
        if record.offset > offsets.get(record.tp, -1):
            offsets[record.tp] = record.offset
    return new, already, offsets


# ------------------------------------------------------------------ applying


@dataclass(slots=True)
class Applied:
    """What one batch did, for the runner to count and commit.

    ``offsets`` are the last offsets per partition that the store now holds (committed
    to Kafka for lag monitoring); a projection that stores later (flow's periodic
    checkpoint) leaves it empty until it does."""

    applied: int = 0
    already_applied: int = 0
    dead_letters: list[DeadLetter] = field(default_factory=list)
    offsets: dict[Partition, int] = field(default_factory=dict)


class Projection(Protocol):
    """What a service gives the runner."""

    async def positions(self, partitions: Sequence[Partition]) -> dict[Partition, int | None]:
        """Newly assigned partitions: restore what the projection keeps of them (fencing
        off a previous holder) and return the last offset applied of each (None: none)."""
        ...

    async def release(self, partitions: Sequence[Partition]) -> None:
        """Partitions going to another instance: store what must be, forget the rest."""
        ...

    async def apply(self, records: list[Inbound]) -> Applied:
        """Apply a batch exactly once (records at or below the stored offsets skipped;
        changes, offsets and dead letters stored together). Raises when nothing of it
        could be stored: the runner delivers it again."""
        ...


@runtime_checkable
class StreamingProjection(Protocol):
    """A ``Projection`` that applies records as it is given them (see the module's
    docstring): ``apply_stream`` in place of ``apply``."""

    async def positions(self, partitions: Sequence[Partition]) -> dict[Partition, int | None]:
        ...

    async def release(self, partitions: Sequence[Partition]) -> None:
        ...

    async def apply_stream(self, records: Iterator[Reading]) -> Applied:
        """Apply a batch exactly once, as ``Projection.apply`` does; ``records`` reads
        (decodes and checks) the batch's records as they are come to, in order, once
        (``RecordReader.stream``). ``inbound(record, found)`` makes the ``Inbound`` that
        a ``DeadLetter`` carries."""
        ...


@dataclass(slots=True)
class Planned(Generic[C]):
    """What a pure ``plan`` decided for a batch: the store's changes, how many records
    took effect, and the records that could not be applied (with the reason)."""

    changes: C
    applied: int = 0
    dead_letters: list[DeadLetter] = field(default_factory=list)


class ProjectionStore(Protocol[S_co, C_contra]):
    """The service's side of a ``RedisProjection``: the keys it reads, reading them, and
    writing a plan's changes. Only the store knows its key layout."""

    def watched(self, records: Sequence[Inbound]) -> list[str]:
        """The state keys this batch reads (watched: another writer means plan again)."""
        ...

    async def read(self, pipe: Any, records: Sequence[Inbound]) -> S_co:
        """The state the plan needs, read on the watching pipeline (immediate mode)."""
        ...

    def write(self, pipe: Any, changes: C_contra) -> None:
        """Queue the changes on the pipeline, inside its MULTI."""
        ...


Plan = Callable[[list[Inbound], S], Planned[C]]


class Offsets:
    """Where a consumer's applied offsets live in Redis (one key per partition, so two
    instances owning different partitions never conflict)."""

    def __init__(self, redis: Redis, prefix: str, consumer: str) -> None:
        self.redis = redis
        self.base = f"{prefix}:applied:{consumer}"

    def key(self, tp: Partition) -> str:
        return f"{self.base}:{tp[0]}:{tp[1]}"

    async def read(self, partitions: Sequence[Partition]) -> dict[Partition, int | None]:
        if not partitions:
            return {}
        raw = await self.redis.mget([self.key(tp) for tp in partitions])
        return {tp: None if value is None else int(value)
                for tp, value in zip(partitions, raw, strict=True)}

    def write(self, pipe: Any, offsets: Mapping[Partition, int]) -> None:
        if offsets:
            pipe.mset({self.key(tp): offset for tp, offset in offsets.items()})


class RedisProjection(Generic[S, C]):
    """A projection applied in one optimistic Redis transaction per batch (see the
    module's docstring). ``after`` runs with the planned changes once they are stored
    (live pushes, metrics); it must not fail the batch."""

    max_conflicts = 50

    def __init__(self, redis: Redis, prefix: str, *, consumer: str,
                 store: ProjectionStore[S, C], plan: Plan[S, C], outbox: Outbox,
                 after: Callable[[C], Awaitable[None]] | None = None,
                 on_stored: Callable[[], None] | None = None) -> None:
        self.redis = redis
        self.consumer = consumer
        self.store = store
        self.plan = plan
        self.outbox = outbox
        self.offsets = Offsets(redis, prefix, consumer)
        self.after = after
        self.on_stored = on_stored

    async def positions(self, partitions: Sequence[Partition]) -> dict[Partition, int | None]:
        return await self.offsets.read(partitions)

    async def release(self, partitions: Sequence[Partition]) -> None:
        return None  # nothing kept in memory: Redis holds it all

    async def apply(self, records: list[Inbound]) -> Applied:
        partitions = sorted({r.tp for r in records})
        offset_keys = [self.offsets.key(tp) for tp in partitions]
        for _attempt in range(self.max_conflicts):
            try:
                async with self.redis.pipeline(transaction=True) as pipe:
                    await pipe.watch(*offset_keys, *self.store.watched(records))
                    raw = await pipe.mget(offset_keys) if offset_keys else []
                    stored = {tp: None if value is None else int(value)
                              for tp, value in zip(partitions, raw, strict=True)}
                    new, already, offsets = fresh(records, stored)
                    unreadable = [DeadLetter(r, r.reason) for r in new if r.reason is not None]
                    readable = [r for r in new if r.reason is None]
                    state = await self.store.read(pipe, readable)
                    planned = self.plan(readable, state)
                    dead = unreadable + planned.dead_letters
                    pipe.multi()
                    self.store.write(pipe, planned.changes)
                    self.offsets.write(pipe, offsets)
                    self.outbox.queue(pipe, [d.entry(self.consumer) for d in dead])
                    await pipe.execute()
            except WatchError:
                continue
            if self.on_stored is not None:
                self.on_stored()
            if self.after is not None:
                await self.after(planned.changes)
            return Applied(planned.applied, already, dead, offsets)
        raise RuntimeError(f"{self.consumer}: gave up after {self.max_conflicts} conflicting "
                           f"writes to the same keys")


# ------------------------------------------------------------------ running


@dataclass(slots=True)
class RetryPolicy:
    """How long to pause before a failed batch is read again: ``first`` seconds,
    doubling up to ``longest``, back to ``first`` after a batch applies."""

    first: float = 0.5
    longest: float = 10.0
    _next: float = 0.0

    def pause(self) -> float:
        pause = self._next or self.first
        self._next = min(pause * 2, self.longest)
        return pause

    def reset(self) -> None:
        self._next = 0.0


def _reading_all(projection: Projection) -> Callable[[Iterator[Reading]], Awaitable[Applied]]:
    """``projection.apply`` given the whole batch read."""
    async def apply(records: Iterator[Reading]) -> Applied:
        return await projection.apply([inbound(record, found) for record, found in records])
    return apply


async def _raw_records(message: KafkaMessage) -> object:
    """Keep a batch as aiokafka records: the runner reads (and dead-letters) each."""
    return message.raw_message


class ProjectionRunner:
    """Runs one projection as one FastStream batch subscriber (see the module docstring).

    ``service`` and ``consumer`` name it in metrics, logs and dead letters;
    ``subscriber_options`` go to FastStream's ``subscriber`` (title, description, batch
    sizes, session timeouts)."""

    def __init__(self, broker: Any, projection: Projection | StreamingProjection,
                 reader: RecordReader, *,
                 service: str, consumer: str, topics: Sequence[str], group_id: str,
                 retry: RetryPolicy | None = None,
                 on_dead_letters: Callable[[], None] | None = None,
                 **subscriber_options: Any) -> None:
        self.projection = projection
        self.reader = reader
        self._apply = (projection.apply_stream if isinstance(projection, StreamingProjection)
                       else _reading_all(projection))
        self.service = service
        self.consumer = consumer
        self.topics = list(topics)
        self.retry = retry or RetryPolicy()
        self.on_dead_letters = on_dead_letters
        self.applied_total = 0
        self._expect: dict[Partition, int] = {}
        self._partition_counts: dict[str, int] = {}
        self._consumed = {outcome: EVENTS_CONSUMED.labels(service, outcome)
                          for outcome in ("applied", "already_applied", "dead_lettered")}
        self._seconds = BATCH_SECONDS.labels(service, consumer)
        options: dict[str, Any] = {
            "max_records": 500, "batch_timeout_ms": 20, "fetch_max_wait_ms": 20,
            **subscriber_options,
        }
        self.subscriber: Any = None
        if broker is not None:
            self.subscriber = broker.subscriber(
                *self.topics, batch=True, group_id=group_id, auto_offset_reset="earliest",
                ack_policy=AckPolicy.MANUAL,  # Kafka's commits follow what Redis holds
                listener=self.listener(), decoder=_raw_records, **options)
            self.subscriber(self._on_batch)

    async def _on_batch(self, records: list[Any]) -> None:
        await self.handle(records)

    # ------------------------------------------------------------ assignment

    @property
    def kafka(self) -> Any:
        return getattr(self.subscriber, "consumer", None)

    def listener(self) -> ConsumerRebalanceListener:
        runner = self

        class Listener(ConsumerRebalanceListener):  # type: ignore[misc]
            async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
                await runner.on_revoked(revoked)

            async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
                await runner.on_assigned(assigned)

        return Listener()

    async def on_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        """Restore each new partition and position it just after its stored offset (its
        beginning when none): noted first, so a failed seek is caught by ``off_course``."""
        if not assigned:
            return
        stored = await self.projection.positions([(tp.topic, tp.partition) for tp in assigned])
        kafka = self.kafka
        unknown = [tp for tp in assigned if stored.get((tp.topic, tp.partition)) is None]
        for tp in assigned:
            offset = stored.get((tp.topic, tp.partition))
            self._expect[(tp.topic, tp.partition)] = 0 if offset is None else offset + 1
        beginnings = (await kafka.beginning_offsets(unknown) if kafka is not None and unknown
                      else dict.fromkeys(unknown, 0))
        for tp in assigned:
            offset = stored.get((tp.topic, tp.partition))
            start = beginnings[tp] if offset is None else offset + 1
            self._expect[(tp.topic, tp.partition)] = start
            if kafka is not None:
                kafka.seek(tp, start)
            log.info("partition assigned", consumer=self.consumer, topic=tp.topic,
                     partition=tp.partition, resume_at=start,
                     rebuilding=offset is None)

    async def on_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        partitions = [(tp.topic, tp.partition) for tp in revoked]
        for tp in partitions:
            self._expect.pop(tp, None)
        if partitions:
            try:
                await self.projection.release(partitions)
            except Exception as exc:  # what was not stored is replayed by the next owner
                log.warning("release of revoked partitions failed", consumer=self.consumer,
                            error=repr(exc))

    # ------------------------------------------------------------ batches

    def read(self, raw_records: Sequence[Any]) -> list[Inbound]:
        """Read a batch of aiokafka records (tests call it with their own records)."""
        return [inbound(record, found) for record, found in self.stream(raw_records)]

    def stream(self, raw_records: Sequence[Any]) -> Iterator[Reading]:
        """Each of a batch of aiokafka records with what reading it finds, read as the
        projection comes to it (``RecordReader.stream``)."""
        counts = self._partition_counts
        kafka = self.kafka
        if kafka is not None and len(counts) < len(self.topics):
            for topic in self.topics:
                if topic not in counts:
                    known = kafka.partitions_for_topic(topic)
                    if known:  # metadata not there yet: not checked until it is
                        counts[topic] = len(known)
        return self.reader.stream(raw_records, counts)

    async def handle(self, raw_records: Sequence[Any]) -> Applied | None:
        """Apply one batch of aiokafka records; None when it must be read again (a gap,
        or a failure)."""
        started = time.perf_counter()
        records = raw_records
        skip = await self._off_course(records)
        if skip:
            records = [r for r in records if (r.topic, r.partition) not in skip]
        if not records:
            return None
        try:
            applied = await self._apply(self.stream(records))
        except Exception as exc:
            BATCH_FAILURES.labels(self.service, self.consumer).inc()
            pause = self.retry.pause()
            log.warning("batch not applied: it will be read again", consumer=self.consumer,
                        error=repr(exc), retry_in=pause)
            self._rewind(records)
            await asyncio.sleep(pause)
            return None
        self.retry.reset()
        self._observe(applied)
        await self.commit(applied.offsets)
        self._seconds.observe(time.perf_counter() - started)
        return applied

    def _observe(self, applied: Applied) -> None:
        if applied.applied:
            self._consumed["applied"].inc(applied.applied)
            self.applied_total += applied.applied
        if applied.already_applied:
            self._consumed["already_applied"].inc(applied.already_applied)
        if applied.dead_letters:
            self._consumed["dead_lettered"].inc(len(applied.dead_letters))
            for letter in applied.dead_letters:
                DEAD_LETTERS.labels(self.service, reason_kind(letter.reason)).inc()
                log.warning("event dead-lettered", consumer=self.consumer,
                            reason=letter.reason, topic=letter.record.topic,
                            partition=letter.record.partition, offset=letter.record.offset)
            if self.on_dead_letters is not None:
                self.on_dead_letters()

    async def commit(self, offsets: Mapping[Partition, int]) -> None:
        """Tell Kafka what Redis holds (lag monitoring only; a rebalance in progress skips
        it, the next batch commits) and report the lag."""
        kafka = self.kafka
        if kafka is None or not offsets:
            return
        assigned = kafka.assignment()
        commit = {TopicPartition(*tp): offset + 1 for tp, offset in offsets.items()
                  if TopicPartition(*tp) in assigned}
        if commit:
            try:
                await kafka.commit(commit)
            except Exception as exc:
                log.info("kafka commit skipped", consumer=self.consumer, error=repr(exc))
        lag = self.lag(offsets)
        if lag is not None:
            CONSUMER_LAG.labels(self.service).set(lag)

    def lag(self, offsets: Mapping[Partition, int]) -> int | None:
        """Records behind the high-water marks after ``offsets`` (None when unknown)."""
        kafka = self.kafka
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

    async def _off_course(self, records: Sequence[Any]) -> set[Partition]:
        """Partitions whose first records of this assignment did not start where
        ``on_assigned`` put them (the group's committed offset won over our seek): each
        is sought back and its records dropped. A start past the expected offset is
        allowed when retention deleted the records in between."""
        if not self._expect:
            return set()
        kafka = self.kafka
        skip: set[Partition] = set()
        for tp, offset in first_offsets(records).items():
            expected = self._expect.pop(tp, None)
            if expected is None or offset <= expected:
                continue
            partition = TopicPartition(*tp)
            beginning = ((await kafka.beginning_offsets([partition]))[partition]
                         if kafka is not None else 0)
            if offset <= beginning:
                continue
            log.warning("partition did not resume at its stored offset: seeking again",
                        consumer=self.consumer, topic=tp[0], partition=tp[1], got=offset,
                        expected=expected)
            skip.add(tp)
            self._expect[tp] = expected
            if kafka is not None:
                kafka.seek(partition, expected)
        return skip

    def _rewind(self, records: Sequence[Any]) -> None:
        """Seek each partition of a batch that was not applied back to its first record."""
        kafka = self.kafka
        if kafka is None:
            return
        assigned = kafka.assignment()
        for tp, offset in first_offsets(records).items():
            partition = TopicPartition(*tp)
            if partition in assigned:
                kafka.seek(partition, offset)
