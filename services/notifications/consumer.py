"""Floor and estimate records in; one Redis transaction per batch out.

One FastStream batch subscriber reads both the floor topic and the estimates
topic (both keyed by clinic). For each batch:

1. records are decoded; unreadable ones become dead-letter records;
2. the touched clinics' notifiers and the partitions' stored offsets are read
   under ``WATCH``; records at or below their partition's offset are skipped;
3. each clinic's floor events and estimates are applied in time order (the two
   topics are merged by ``occurred_at``, each partition keeping its own order);
4. states, offsets, new notification records, alert changes, live alert
   messages and outbox events are written in one ``MULTI``/``EXEC``. If
   another writer touched the same clinic meanwhile (another instance, the
   ticker), the batch is planned again from what is now stored.

Kafka's committed offsets follow the Redis ones and only serve lag
monitoring: on assignment each partition is positioned just after its stored
offset, or at the beginning when Redis has none (a flushed Redis rebuilds the
floor; old triggers are not sent again, see ``max_message_age_minutes``).
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from redis.exceptions import WatchError

from services.notifications import metrics as m
from services.notifications import records
from services.notifications.domain import (
    ClinicNotifier,
    NotApplicable,
    Outcome,
    Preferences,
    RuleBook,
)
from services.notifications.store import BatchWrites, NotificationStore, outbox_entry
from shared import events as ev
from shared.consumer import (
    RedisPositioned,
    commit_applied,
    first_offsets,
    lag_after,
    rewind,
)
from shared.kafka import dead_letter_record
from shared.logging import get_logger
from shared.metrics import CONSUMER_LAG, DEAD_LETTERS, EVENTS_CONSUMED, reason_kind
from shared.service import ServiceRuntime

log = get_logger("clinicflow.notifications.consumer")
RETRY_PAUSE_SECONDS = 0.5  # after a batch failed to apply (Redis unreachable)
MAX_CONFLICTS = 50


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
    dead_letters: list[str] = field(default_factory=list)
    decisions: list[tuple[str, str]] = field(default_factory=list)
    alerts: list[tuple[str, str]] = field(default_factory=list)  # (clinic, raised|withdrawn)
    notifications: int = 0


class NotificationConsumer(RedisPositioned):
    """Applies floor events and estimates to the clinics' notifiers, exactly once."""

    def __init__(self, runtime: ServiceRuntime, store: NotificationStore, rules: RuleBook, *,
                 floor_topic: str, estimates_topic: str, notifications_topic: str,
                 paging: bool, on_committed: Callable[[], None] = lambda: None) -> None:
        super().__init__()
        self.runtime = runtime
        self.store = store
        self.rules = rules
        self.floor_topic = floor_topic
        self.estimates_topic = estimates_topic
        self.notifications_topic = notifications_topic
        self.paging = paging
        self.on_committed = on_committed
        self.lock = asyncio.Lock()
        self.applied_total = 0

    # ------------------------------------------------------------- wiring

    async def stored_offset(self, topic: str, partition: int) -> int | None:
        return await self.store.stored_offset(topic, partition)

    # ------------------------------------------------------------ batches

    async def handle(self, raw_records: Sequence[Any]) -> BatchResult:
        """Apply one Kafka batch (aiokafka ``ConsumerRecord`` objects)."""
        started = time.perf_counter()
        items = [self._read(r.topic, r.partition, r.offset, r.key, r.value)
                 for r in raw_records]
        async with self.lock:
            items = await self._without_gaps(items)
            if not items:
                return BatchResult()
            try:
                writes, result = await self._apply(items, (), datetime.now(UTC))
            except Exception:
                # nothing of the batch is in Redis: deliver it again (after a pause, so
                # an unreachable Redis is not hammered)
                rewind(self.kafka_consumer, first_offsets(items))
                await asyncio.sleep(RETRY_PAUSE_SECONDS)
                raise
        self._observe(result)
        self.on_committed()
        await self._commit(writes.offsets)
        m.BATCH_SECONDS.observe(time.perf_counter() - started)
        return result

    async def tick(self, now: datetime | None = None) -> int:
        """Let clinics whose notifier has something due act on the clock. Returns how many."""
        wall = now or datetime.now(UTC)
        clinics = await self.store.due_clinics(wall.timestamp())
        if not clinics:
            return 0
        async with self.lock:
            _writes, result = await self._apply([], clinics, wall)
        self._observe(result)
        self.on_committed()
        return len(clinics)

    def _read(self, topic: str, partition: int, offset: int, key: bytes | None,
              value: bytes | None) -> Item:
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
        return Item(topic, partition, offset, key, value, event=event)

    async def _without_gaps(self, items: list[Item]) -> list[Item]:
        """Drop a partition's records when it did not resume where Redis says (the group's
        committed offset won over our seek): it is sought again."""
        skip = await self.off_course_partitions(items)
        return [i for i in items if i.tp not in skip] if skip else items

    # ------------------------------------------------------------- apply

    async def _apply(self, items: list[Item], tick_clinics: Sequence[str],
                     wall: datetime) -> tuple[BatchWrites, BatchResult]:
        by_clinic: dict[str, dict[tuple[str, int], list[Item]]] = {}
        for item in items:
            if item.event is not None:
                by_clinic.setdefault(item.event.clinic_id, {}).setdefault(item.tp, []).append(
                    item)
        clinics = sorted(set(by_clinic) | set(tick_clinics))
        tps = sorted({i.tp for i in items})
        prefs = await self.store.preferences(clinics)
        state_keys = [self.store.state_key(c) for c in clinics]
        offset_keys = [self.store.offset_key(*tp) for tp in tps]
        for _attempt in range(MAX_CONFLICTS):
            try:
                async with self.store.redis.pipeline(transaction=True) as pipe:
                    await pipe.watch(*state_keys, *offset_keys)
                    raw_offsets = await pipe.mget(offset_keys) if offset_keys else []
                    raw_states = await pipe.mget(state_keys) if state_keys else []
                    stored = {tp: None if raw is None else int(raw)
                              for tp, raw in zip(tps, raw_offsets, strict=True)}
                    states = dict(zip(clinics, raw_states, strict=True))
                    writes, result = self._plan(items, by_clinic, tick_clinics, stored, states,
                                                prefs, wall)
                    pipe.multi()
                    await self.store.queue_writes(pipe, writes)
                    await pipe.execute()
                return writes, result
            except WatchError:
                continue
        raise RuntimeError(f"gave up after {MAX_CONFLICTS} conflicting writes to clinics "
                           f"{clinics}")

    def _plan(self, items: list[Item],
              by_clinic: dict[str, dict[tuple[str, int], list[Item]]],
              tick_clinics: Sequence[str], stored: dict[tuple[str, int], int | None],
              states: dict[str, bytes | None], prefs: dict[str, dict[str, Preferences]],
              wall: datetime) -> tuple[BatchWrites, BatchResult]:
        """Apply the batch in memory and list what to write. No I/O."""
        writes = BatchWrites(finished_at=wall.isoformat())
        result = BatchResult()

        def new(item: Item) -> bool:
            done = stored.get(item.tp)
            return done is None or item.offset > done

        for item in items:
            if item.reason is not None and new(item):
                self._dead_letter(item, item.reason, writes, result)
        for clinic_id in sorted(set(by_clinic) | set(tick_clinics)):
            notifier = self._load(clinic_id, states.get(clinic_id))
            rules = self.rules.for_clinic(clinic_id)
            clinic_prefs = prefs.get(clinic_id, {})
            # floor facts before estimates made at the same instant (flow made them after)
            streams = [stream for tp, stream in sorted(
                by_clinic.get(clinic_id, {}).items(),
                key=lambda entry: (entry[0][0] != self.floor_topic, entry[0]))]
            for item in heapq.merge(*streams, key=_occurred_at):
                if not new(item):
                    result.already_applied += 1
                    continue
                assert item.event is not None
                try:
                    outcome = self._apply_one(notifier, item, rules, clinic_prefs, wall, writes)
                except NotApplicable as exc:
                    self._dead_letter(item, exc.reason, writes, result)
                    continue
                result.applied += 1
                self._effects(clinic_id, outcome, wall, writes, result)
            if clinic_id in tick_clinics:
                outcome = notifier.tick(now=wall, rules=rules, prefs=clinic_prefs)
                self._effects(clinic_id, outcome, wall, writes, result)
            notifier.housekeeping(notifier.clock or wall)
            writes.states[clinic_id] = orjson.dumps(notifier.to_dict())
            due = notifier.next_due()
            writes.timers[clinic_id] = None if due is None else due.timestamp()
        for item in items:
            if new(item) and item.offset > writes.offsets.get(item.tp, -1):
                writes.offsets[item.tp] = item.offset
        return writes, result

    def _apply_one(self, notifier: ClinicNotifier, item: Item, rules: Any,
                   prefs: dict[str, Preferences], wall: datetime, writes: BatchWrites) -> Outcome:
        event = item.event
        assert event is not None
        payload = event.payload
        at, event_id = event.occurred_at, event.envelope.event_id
        if isinstance(payload, ev.WaitEstimated):
            if item.topic != self.estimates_topic:
                raise NotApplicable("wait.estimated belongs on the estimates topic")
            writes.estimates.setdefault(event.clinic_id, {})[payload.visit_id] = orjson.dumps(
                payload.model_dump(mode="json"))
            return notifier.on_estimate(payload, at=at, event_id=event_id, rules=rules,
                                        prefs=prefs, wall=wall)
        if item.topic != self.floor_topic:
            raise NotApplicable(f"{event.event_type} does not belong on the estimates topic")
        return notifier.on_floor(payload, at=at, event_id=event_id, rules=rules, prefs=prefs,
                                 wall=wall)

    def _effects(self, clinic_id: str, outcome: Outcome, wall: datetime, writes: BatchWrites,
                 result: BatchResult) -> None:
        for message in outcome.messages:
            writes.notifications.append(records.message_record(message, clinic_id, wall))
        for alert, reason, page in outcome.withdrawn:
            writes.alert_changes.append(("withdraw", clinic_id, alert.room_id, None))
            writes.live.append((clinic_id, records.live_message("withdrawn", alert, reason)))
            writes.outbox.append(records.alert_withdrawn(alert, reason, clinic_id,
                                                         max(alert.raised_at, wall)))
            if page and self.paging:
                writes.notifications.append(
                    records.page_record(alert, "withdrawn", clinic_id, wall, reason))
            result.alerts.append((clinic_id, "withdrawn"))
        for alert, page in outcome.raised:
            writes.alert_changes.append(("raise", clinic_id, alert.room_id,
                                         orjson.dumps(alert.to_dict())))
            writes.live.append((clinic_id, records.live_message("raised", alert)))
            writes.outbox.append(records.alert_raised(alert, clinic_id))
            if page and self.paging:
                writes.notifications.append(records.page_record(alert, "raised", clinic_id, wall))
            result.alerts.append((clinic_id, "raised"))
        for _visit_id, ids in outcome.cancelled:
            writes.cancels.extend((i, "the patient was roomed or left first") for i in ids)
        result.decisions.extend(outcome.decisions)
        result.notifications += len(outcome.messages)

    def _dead_letter(self, item: Item, reason: str, writes: BatchWrites,
                     result: BatchResult) -> None:
        record = dead_letter_record(raw=item.value, reason=reason, consumer="notifications",
                                    source_topic=item.topic, partition=item.partition,
                                    offset=item.offset, key=item.key)
        key = item.key.decode("utf-8", "replace") if item.key else None
        writes.outbox.append(outbox_entry("deadletter", key, record))
        result.dead_letters.append(reason)

    def _load(self, clinic_id: str, raw: bytes | None) -> ClinicNotifier:
        if raw is None:
            return ClinicNotifier(clinic_id)
        try:
            return ClinicNotifier.from_dict(orjson.loads(raw))
        except (ValueError, KeyError, TypeError) as exc:
            # a snapshot from another version: start the clinic afresh rather than stop
            log.error("clinic state unreadable, starting afresh", clinic=clinic_id,
                      error=repr(exc))
            return ClinicNotifier(clinic_id)

    # ------------------------------------------------------------ kafka

    async def _commit(self, offsets: dict[tuple[str, int], int]) -> None:
        """Tell Kafka what Redis holds (for lag monitoring only)."""
        kafka = self.kafka_consumer
        await commit_applied(kafka, offsets)
        lag = lag_after(kafka, offsets)
        if lag is not None:
            CONSUMER_LAG.labels("notifications").set(lag)

    def _observe(self, result: BatchResult) -> None:
        EVENTS_CONSUMED.labels("notifications", "applied").inc(result.applied)
        if result.already_applied:
            EVENTS_CONSUMED.labels("notifications", "already_applied").inc(
                result.already_applied)
        for reason in result.dead_letters:
            EVENTS_CONSUMED.labels("notifications", "dead_lettered").inc()
            DEAD_LETTERS.labels("notifications", reason_kind(reason)).inc()
            log.warning("event dead-lettered", reason=reason)
        for kind, outcome in result.decisions:
            m.DECISIONS.labels(kind, outcome).inc()
        for clinic_id, action in result.alerts:
            m.NURSE_ALERTS.labels(clinic_id, action).inc()
        self.applied_total += result.applied


def _occurred_at(item: Item) -> datetime:
    assert item.event is not None
    return item.event.occurred_at
