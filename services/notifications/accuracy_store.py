"""The accuracy projection's Redis side and its runner: told records and floor facts in,
figures out (accuracy.py is the pure part).

Keys (``P`` is ``CLINICFLOW_REDIS_PREFIX``)::

    P:applied:notifications-accuracy:{topic}:{partition}
                                        the last floor / told offset applied (shared runner)
    P:notifications:accuracy:visit:{clinic}:{visit}
                                        HASH arrived (epoch s), ended (roomed|left:epoch s),
                                        t:{event id} a told record waiting for the end,
                                        s:{event id} a told record counted (3 days)
    P:notifications:accuracy:recent:{clinic}
                                        JSON [[roomed at, wait minutes], ...]: the clinic's
                                        last finished waits, for the rolling average (3 days)
    P:notifications:accuracy:day:{clinic}:{YYYY-MM-DD}
                                        HASH hour|channel|provider|metric -> integer
                                        (metric: n, in, err and ref in ms, left); 400 days

One consumer (``notifications-accuracy``, group ``CLINICFLOW_NOTIFICATIONS_GROUP_ID`` +
``-accuracy``) reads the floor and told topics through the shared ``ProjectionRunner``:
each batch is one ``RedisProjection`` transaction (the visits' hashes and the clinics'
recent waits watched, the figures incremented, offsets and dead letters stored with
them). A flushed Redis rebuilds from both topics' beginnings, to the same figures.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import date, datetime
from typing import Any

import orjson
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from redis.asyncio import Redis

from services.notifications import metrics as m
from services.notifications.accuracy import (
    AccuracyChanges,
    AccuracyPlan,
    AccuracyState,
    VisitState,
    summarize,
)
from shared import events as ev
from shared.clock import Clock
from shared.floor.clinic_flow import FLOOR_FACTS
from shared.logging import get_logger
from shared.outbox import Outbox
from shared.projection import Inbound, ProjectionRunner, RecordReader, RedisProjection

log = get_logger("clinicflow.notifications.accuracy")

CONSUMER = "notifications-accuracy"
VISIT_SECONDS = 3 * 24 * 3600
DAY_SECONDS = 400 * 24 * 3600
_VISIT_EVENTS = (ev.WaitTold, ev.PatientArrived, ev.PatientRoomed, ev.ArrivalCancelled)


class AccuracyStore:
    """The key layout above; a ``ProjectionStore`` of the accuracy projection."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.base = f"{prefix}:notifications:accuracy"

    def visit_key(self, clinic_id: str, visit_id: str) -> str:
        return f"{self.base}:visit:{clinic_id}:{visit_id}"

    def recent_key(self, clinic_id: str) -> str:
        return f"{self.base}:recent:{clinic_id}"

    def day_key(self, clinic_id: str, day: date) -> str:
        return f"{self.base}:day:{clinic_id}:{day.isoformat()}"

    @staticmethod
    def _visits(records: Sequence[Inbound]) -> list[tuple[str, str]]:
        return sorted({(r.event.clinic_id, r.event.payload.visit_id)  # type: ignore[attr-defined]
                       for r in records
                       if r.event is not None and isinstance(r.event.payload, _VISIT_EVENTS)})

    @staticmethod
    def _clinics(records: Sequence[Inbound]) -> list[str]:
        return sorted({r.event.clinic_id for r in records if r.event is not None})

    def watched(self, records: Sequence[Inbound]) -> list[str]:
        return [*(self.visit_key(c, v) for c, v in self._visits(records)),
                *(self.recent_key(c) for c in self._clinics(records))]

    async def read(self, pipe: Any, records: Sequence[Inbound]) -> AccuracyState:
        # read in one round trip on another connection: the keys are watched already
        visits, clinics = self._visits(records), self._clinics(records)
        async with self.redis.pipeline(transaction=False) as reading:
            for clinic_id, visit_id in visits:
                reading.hgetall(self.visit_key(clinic_id, visit_id))
            for clinic_id in clinics:
                reading.get(self.recent_key(clinic_id))
            raw = await reading.execute()
        state = AccuracyState(
            visits={key: VisitState.from_hash(found)
                    for key, found in zip(visits, raw[:len(visits)], strict=True)},
            recent={clinic_id: [(float(a), float(w)) for a, w in orjson.loads(found)]
                    for clinic_id, found in zip(clinics, raw[len(visits):], strict=True)
                    if found})
        return state

    def write(self, pipe: Any, changes: AccuracyChanges) -> None:
        for (clinic_id, visit_id), change in changes.visits.items():
            key = self.visit_key(clinic_id, visit_id)
            if change.delete:
                pipe.hdel(key, *change.delete)
            if change.set:
                pipe.hset(key, mapping=change.set)
            pipe.expire(key, VISIT_SECONDS)
        for clinic_id, recent in changes.recent.items():
            pipe.set(self.recent_key(clinic_id), orjson.dumps(recent), ex=VISIT_SECONDS)
        for (clinic_id, day), counts in changes.counts.items():
            key = self.day_key(clinic_id, day)
            for name, amount in counts.items():
                pipe.hincrby(key, name, amount)
            pipe.expire(key, DAY_SECONDS)

    async def figures(self, clinic_id: str, day: date) -> dict[str, Any]:
        """A clinic's figures of one of its days (``accuracy.summarize``)."""
        raw = await self.redis.hgetall(self.day_key(clinic_id, day))
        return summarize({k.decode() if isinstance(k, bytes) else k: int(v)
                          for k, v in raw.items()})


def accuracy_reader(floor_topic: str, told_topic: str) -> RecordReader:
    """Floor facts on the floor topic, ``wait.told`` only on the told topic."""
    return RecordReader({floor_topic: FLOOR_FACTS, told_topic: frozenset({ev.WaitTold})})


class AccuracyProjection:
    """The accuracy consumer of the notifications service: the runner, the projection,
    and the gauges of today's figures it refreshes after each batch."""

    def __init__(self, broker: Any, redis: Redis, outbox: Outbox, plan: AccuracyPlan,
                 clock: Clock, *, prefix: str, floor_topic: str, told_topic: str,
                 group_id: str, configured: Callable[[str], bool],
                 on_dead_letters: Callable[[], None] | None = None,
                 **subscriber_options: Any) -> None:
        self.store = AccuracyStore(redis, prefix)
        self.plan = plan
        self.clock = clock
        self.configured = configured
        self.gauged: set[str] = set()  # clinics whose gauges this instance sets
        self.projection = RedisProjection(redis, prefix, consumer=CONSUMER, store=self.store,
                                          plan=plan, outbox=outbox, after=self._stored)
        self.runner = ProjectionRunner(
            broker, self.projection, accuracy_reader(floor_topic, told_topic),
            service="notifications", consumer=CONSUMER, topics=[floor_topic, told_topic],
            group_id=group_id, on_dead_letters=on_dead_letters,
            partition_assignment_strategy=(RangePartitionAssignor,),
            title="notifications.accuracy",
            description="Told records and floor facts -> how right the told waits were.",
            **subscriber_options)

    def today(self, clinic_id: str, now: datetime | None = None) -> date:
        return (now or self.clock.now()).astimezone(self.plan.zone(clinic_id)).date()

    async def figures(self, clinic_id: str, day: date,
                      now: datetime | None = None) -> dict[str, Any]:
        """A clinic's figures of a day; today's (as of ``now``) also set its gauges."""
        figures = await self.store.figures(clinic_id, day)
        if day == self.today(clinic_id, now):
            self._gauge(clinic_id, figures)
        return figures

    async def tick(self, now: datetime) -> int:
        """Refresh today's gauges of the clinics this instance has figures of (a new day
        starts them again at 0 scored); returns how many."""
        for clinic_id in sorted(self.gauged):
            await self.figures(clinic_id, self.today(clinic_id, now), now)
        return len(self.gauged)

    def _gauge(self, clinic_id: str, figures: dict[str, Any]) -> None:
        self.gauged.add(clinic_id)
        label = m.clinic_label(clinic_id, self.configured)
        m.TOLD_SCORED_TODAY.labels(label).set(figures["scored"])
        # none scored yet today: no share (NaN), rather than yesterday's
        share = figures["share_inside_range"]
        m.TOLD_SHARE_INSIDE.labels(label).set(float("nan") if share is None else share)

    async def _stored(self, changes: AccuracyChanges) -> None:
        for score in changes.scores:
            m.TOLD_ERROR.labels(m.clinic_label(score.clinic_id, self.configured),
                                score.channel).observe(score.error_minutes)
        try:
            for clinic_id in sorted({c for c, _day in changes.counts}):
                if (clinic_id, self.today(clinic_id)) in changes.counts:
                    await self.figures(clinic_id, self.today(clinic_id))
        except Exception as exc:  # the batch is stored: the gauge catches up next time
            log.warning("accuracy gauges not refreshed", error=repr(exc))
