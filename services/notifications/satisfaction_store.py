"""The satisfaction projection's Redis side, its runner and the report's reading
(satisfaction.py is the pure part).

Keys (``P`` is ``CLINICFLOW_REDIS_PREFIX``)::

    P:applied:notifications-satisfaction:{topic}:{partition}
                                        the last offset applied (shared runner)
    P:notifications:satisfaction:visit:{clinic}:{visit}
                                        HASH arrived, booked, provider, roomed (epoch s),
                                        told ([epoch s, point]: the earliest told),
                                        rating, answer, raised, c:{complaint id} ->
                                        category; no text. 400 days
    P:notifications:satisfaction:roomed:{clinic}
                                        ZSET visit -> roomed at (epoch s): the report's
                                        index by the clinic's days

One consumer (``notifications-satisfaction``, group ``CLINICFLOW_NOTIFICATIONS_GROUP_ID``
+ ``-satisfaction``) reads the floor, told and notifications topics through the shared
``ProjectionRunner``; each batch is one ``RedisProjection`` transaction (the visits'
hashes watched) that also stores the complaints low ratings raise, with their
``complaint.logged`` events on the outbox. A flushed Redis rebuilds from the topics'
beginnings to the same rows, hence the same report.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from redis.asyncio import Redis

from services.notifications import metrics as m
from services.notifications.complaints_store import ComplaintStore
from services.notifications.satisfaction import Row, SatisfactionChanges, SatisfactionPlan
from shared import events as ev
from shared.floor.clinic_flow import FLOOR_FACTS
from shared.outbox import Outbox
from shared.projection import Inbound, ProjectionRunner, RecordReader, RedisProjection

CONSUMER = "notifications-satisfaction"
ROW_SECONDS = 400 * 24 * 3600


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class SatisfactionStore:
    """The key layout above; a ``ProjectionStore`` of the satisfaction projection."""

    def __init__(self, redis: Redis, prefix: str, complaints: ComplaintStore) -> None:
        self.redis = redis
        self.base = f"{prefix}:notifications:satisfaction"
        self.complaints = complaints

    def visit_key(self, clinic_id: str, visit_id: str) -> str:
        return f"{self.base}:visit:{clinic_id}:{visit_id}"

    def roomed_key(self, clinic_id: str) -> str:
        return f"{self.base}:roomed:{clinic_id}"

    @staticmethod
    def _visits(records: Sequence[Inbound]) -> list[tuple[str, str]]:
        return sorted({(r.event.clinic_id, r.event.payload.visit_id)  # type: ignore[attr-defined]
                       for r in records if r.event is not None
                       and getattr(r.event.payload, "visit_id", None)})

    def watched(self, records: Sequence[Inbound]) -> list[str]:
        return [self.visit_key(c, v) for c, v in self._visits(records)]

    async def read(self, pipe: Any, records: Sequence[Inbound]
                   ) -> dict[tuple[str, str], Row]:
        visits = self._visits(records)
        async with self.redis.pipeline(transaction=False) as reading:
            for clinic_id, visit_id in visits:
                reading.hgetall(self.visit_key(clinic_id, visit_id))
            raw = await reading.execute()
        return {key: {_text(k): _text(v) for k, v in found.items()}
                for key, found in zip(visits, raw, strict=True)}

    def write(self, pipe: Any, changes: SatisfactionChanges) -> None:
        for (clinic_id, visit_id), fields in changes.rows.items():
            key = self.visit_key(clinic_id, visit_id)
            pipe.hset(key, mapping=fields)
            pipe.expire(key, ROW_SECONDS)
        for (clinic_id, visit_id), at in changes.roomed.items():
            pipe.zadd(self.roomed_key(clinic_id), {visit_id: at})
            pipe.expire(self.roomed_key(clinic_id), ROW_SECONDS)
        for complaint in changes.raised:
            self.complaints.queue(pipe, complaint, "logged", complaint.logged_at, text="",
                                  unless_stored=True)

    async def known(self, clinic_id: str, visit_id: str) -> bool:
        """Whether the visit checked in at the clinic (its arrival was read)."""
        return bool(await self.redis.hexists(self.visit_key(clinic_id, visit_id), "arrived"))

    async def rows(self, clinic_id: str, start: datetime, end: datetime) -> list[Row]:
        """The rows of the visits roomed in [start, end)."""
        visits = await self.redis.zrangebyscore(self.roomed_key(clinic_id),
                                                start.timestamp(), f"({end.timestamp()}")
        async with self.redis.pipeline(transaction=False) as reading:
            for visit_id in visits:
                reading.hgetall(self.visit_key(clinic_id, _text(visit_id)))
            raw = await reading.execute()
        return [{_text(k): _text(v) for k, v in found.items()} for found in raw]


def satisfaction_reader(floor_topic: str, told_topic: str,
                        notifications_topic: str) -> RecordReader:
    """Floor facts, ``wait.told``, and any event of notifications' topic (the plan takes
    ``feedback.given`` and ``complaint.logged`` and passes over the others)."""
    return RecordReader({floor_topic: FLOOR_FACTS, told_topic: frozenset({ev.WaitTold}),
                         notifications_topic: None})


class SatisfactionProjection:
    """The satisfaction consumer: the runner and the projection."""

    def __init__(self, broker: Any, redis: Redis, outbox: Outbox, plan: SatisfactionPlan,
                 complaints: ComplaintStore, *, prefix: str, floor_topic: str,
                 told_topic: str, notifications_topic: str, group_id: str,
                 on_stored: Any = None, **subscriber_options: Any) -> None:
        self.store = SatisfactionStore(redis, prefix, complaints)
        self.projection = RedisProjection(redis, prefix, consumer=CONSUMER, store=self.store,
                                          plan=plan, outbox=outbox, after=self._stored,
                                          on_stored=on_stored)
        self.runner = ProjectionRunner(
            broker, self.projection,
            satisfaction_reader(floor_topic, told_topic, notifications_topic),
            service="notifications", consumer=CONSUMER,
            topics=[floor_topic, told_topic, notifications_topic], group_id=group_id,
            title="notifications.satisfaction",
            description="Floor facts, told waits, feedback and complaints -> waits and "
            "satisfaction side by side; low ratings -> complaints.",
            **subscriber_options)

    async def _stored(self, changes: SatisfactionChanges) -> None:
        for complaint in changes.raised:
            m.COMPLAINTS_LOGGED.labels(complaint.category, complaint.source).inc()
