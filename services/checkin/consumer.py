"""Checkin's projection of the floor and of flow's estimates: which visits still wait,
their ticket codes and their latest estimate (for the kiosk and the status lookup).

One FastStream batch subscriber reads the floor topic and the estimates topic. Each
batch: records are decoded (unreadable or misplaced ones go to the dead-letter topic
with the reason, and the consumer keeps going); ``plan_batch`` (pure) applies the ones
not applied yet to the visits they touch; the store writes the visits and the
partitions' offsets in one transaction. Where to resume comes from Redis: on
assignment a partition is positioned just after its stored offset, or at its
beginning when Redis has none (a flushed Redis rebuilds itself). Kafka's committed
offsets only serve lag monitoring.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from services.checkin.domain import VisitView, clinic_day, evolve_visit
from services.checkin.store import CheckinStore, ProjectionWrites
from shared import events as ev
from shared.consumer import (
    RedisPositioned,
    lag_after,
)
from shared.kafka import dead_letter_record
from shared.logging import get_logger
from shared.metrics import CONSUMER_LAG, DEAD_LETTERS, EVENTS_CONSUMED, reason_kind
from shared.service import ServiceRuntime

log = get_logger("clinicflow.checkin.consumer")
VISIT_EVENTS = (ev.PatientArrived, ev.PatientRoomed, ev.ArrivalCancelled, ev.PatientCheckedOut,
                ev.WaitEstimated)


@dataclass(frozen=True, slots=True)
class Item:
    """One Kafka record, decoded (``event``) or not (``reason``)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    event: ev.Event | None = None
    reason: str | None = None

    @property
    def tp(self) -> tuple[str, int]:
        return (self.topic, self.partition)


@dataclass(slots=True)
class BatchResult:
    applied: int = 0
    already_applied: int = 0
    dead_letters: list[Item] = field(default_factory=list)


def read_record(topic: str, partition: int, offset: int, key: bytes | None,
                value: bytes | None, *, estimates_topic: str) -> Item:
    """Decode one record, or say why it cannot be applied."""
    if value is None:
        return Item(topic, partition, offset, key, value, reason="empty record (tombstone)")
    try:
        event = ev.decode(value)
    except ev.InvalidEvent as exc:
        return Item(topic, partition, offset, key, value, reason=exc.reason)
    if key is not None and key != event.clinic_id.encode():
        return Item(topic, partition, offset, key, value, reason=(
            f"key {key.decode('utf-8', 'replace')!r} is not the event's clinic_id "
            f"{event.clinic_id!r}: events are keyed by clinic"))
    on_estimates = topic == estimates_topic
    if on_estimates != isinstance(event.payload, ev.WaitEstimated):
        where = "the estimates topic" if on_estimates else "the floor topic"
        return Item(topic, partition, offset, key, value,
                    reason=f"{event.event_type} does not belong on {where}")
    return Item(topic, partition, offset, key, value, event=event)


def plan_batch(items: Sequence[Item], offsets: dict[tuple[str, int], int | None],
               visits: dict[tuple[str, str], VisitView], zone: ZoneInfo,
               result: BatchResult) -> ProjectionWrites:
    """What a batch changes (pure): visits, arrival and no-show marks, new offsets.
    Records at or below their partition's stored offset were applied before: skipped."""
    writes = ProjectionWrites()
    current = dict(visits)
    for item in items:
        done = offsets.get(item.tp)
        if done is not None and item.offset <= done:
            result.already_applied += 1
            continue
        writes.offsets[item.tp] = max(item.offset, writes.offsets.get(item.tp, -1))
        event = item.event
        if event is None:
            continue  # dead-lettered
        result.applied += 1
        payload = event.payload
        before = None
        if isinstance(payload, VISIT_EVENTS):
            ref = (event.clinic_id, payload.visit_id)
            before = current.get(ref)
            after = evolve_visit(before, event, zone)
            if after is not None and after != before:
                current[ref] = after
                writes.visits[ref] = after
        if (isinstance(payload, ev.PatientArrived) and payload.appointment_id is not None
                and (before is None or before.appointment_id is None)):
            # a visit checkin saved itself was marked when it was checked in; only a
            # rebuild (Redis lost; the visit unknown, or known only from an estimate) marks
            # it here. Marking it again could undo a later "entered in error" that freed
            # the appointment for the right patient.
            writes.arrivals.append((event.clinic_id, payload.appointment_id, payload.visit_id,
                                    True))
        elif (isinstance(payload, ev.ArrivalCancelled) and payload.reason == "entered_in_error"
              and before is not None and before.appointment_id is not None):
            writes.arrivals.append((event.clinic_id, before.appointment_id, payload.visit_id,
                                    False))
        elif isinstance(payload, ev.PatientNoShow):
            writes.no_shows.append((event.clinic_id, payload.appointment_id,
                                    payload.scheduled_at, clinic_day(payload.scheduled_at, zone)))
    return writes


class ProjectionConsumer(RedisPositioned):
    """Keeps checkin's view of waiting visits and estimates, exactly once per record."""

    def __init__(self, runtime: ServiceRuntime, store: CheckinStore, *, estimates_topic: str,
                 dead_letter_topic: str, zone: ZoneInfo) -> None:
        super().__init__()
        self.runtime = runtime
        self.store = store
        self.estimates_topic = estimates_topic
        self.dead_letter_topic = dead_letter_topic
        self.zone = zone
        self.lock = asyncio.Lock()
        self.applied_total = 0

    # ------------------------------------------------------------- wiring

    async def stored_offset(self, topic: str, partition: int) -> int | None:
        return await self.store.stored_offset(topic, partition)

    # ------------------------------------------------------------ batches

    async def handle(self, raw_records: Sequence[Any]) -> BatchResult:
        """Apply one Kafka batch (aiokafka ``ConsumerRecord`` objects)."""
        items = [read_record(r.topic, r.partition, r.offset, r.key, r.value,
                             estimates_topic=self.estimates_topic) for r in raw_records]
        result = BatchResult()
        async with self.lock:
            items = await self._without_gaps(items)
            if not items:
                return result
            await self._dead_letter(items, result)
            partitions = sorted({i.tp for i in items})
            refs = sorted({(i.event.clinic_id, i.event.payload.visit_id) for i in items
                           if i.event is not None and isinstance(i.event.payload, VISIT_EVENTS)})

            def plan(offsets: dict[tuple[str, int], int | None],
                     visits: dict[tuple[str, str], VisitView]) -> ProjectionWrites:
                nonlocal result
                fresh = BatchResult(dead_letters=result.dead_letters)
                writes = plan_batch(items, offsets, visits, self.zone, fresh)
                result = fresh
                return writes

            # on an error nothing of the batch is in Redis, and the subscriber's
            # NACK_ON_ERROR seeks it back to be read again
            await self.store.apply_batch(partitions, refs, plan)
        self._observe(result, items)
        return result

    async def _dead_letter(self, items: list[Item], result: BatchResult) -> None:
        bad = [i for i in items if i.reason is not None]
        stored: dict[tuple[str, int], int | None] = {}
        for item in bad:
            if item.tp not in stored:
                stored[item.tp] = await self.store.stored_offset(*item.tp)
            done = stored[item.tp]
            if done is not None and item.offset <= done:
                continue
            reason = item.reason or "unreadable"
            await self.runtime.broker.publish(
                dead_letter_record(raw=item.value, reason=reason, consumer="checkin",
                                   source_topic=item.topic, partition=item.partition,
                                   offset=item.offset, key=item.key),
                self.dead_letter_topic, key=item.key)
            DEAD_LETTERS.labels("checkin", reason_kind(reason)).inc()
            result.dead_letters.append(item)
            log.warning("event dead-lettered", reason=reason, topic=item.topic,
                        partition=item.partition, offset=item.offset)

    async def _without_gaps(self, items: list[Item]) -> list[Item]:
        """Drop a partition's records when it did not resume where Redis says (the group's
        committed offset won over our seek): it is sought again."""
        skip = await self.off_course_partitions(items)
        return [i for i in items if i.tp not in skip] if skip else items

    def _observe(self, result: BatchResult, items: Sequence[Item]) -> None:
        if result.applied:
            EVENTS_CONSUMED.labels("checkin", "applied").inc(result.applied)
        if result.already_applied:
            EVENTS_CONSUMED.labels("checkin", "already_applied").inc(result.already_applied)
        if result.dead_letters:
            EVENTS_CONSUMED.labels("checkin", "dead_lettered").inc(len(result.dead_letters))
        self.applied_total += result.applied
        last: dict[tuple[str, int], int] = {}
        for item in items:
            last[item.tp] = max(item.offset, last.get(item.tp, -1))
        lag = lag_after(self.kafka_consumer, last)
        if lag is not None:
            CONSUMER_LAG.labels("checkin").set(lag)


async def pause_after_error(started: float, minimum: float = 1.0) -> None:
    """Keep a failing batch (Redis down) from being retried in a hot loop."""
    await asyncio.sleep(max(0.0, minimum - (time.monotonic() - started)))
