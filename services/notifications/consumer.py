"""The clinics' notifiers, kept up to date from the floor, flow's estimates and the clock.

Records come in through the shared projection runner (shared/projection.py), one batch
subscriber on both topics (same key, same partition count: a clinic's floor and
estimates stay on one instance):

- a ``RecordReader`` whose table says what each topic carries: floor facts on the floor
  topic, ``wait.estimated`` only on the estimates topic; anything else is dead-lettered
  with the reason;
- a ``RedisProjection``: each batch is planned by the pure ``NotifierPlan`` (plan.py)
  from what ``NotifierStates`` (store.py) read under ``WATCH``, and stored with the
  offsets and the dead letters in one transaction.

The clock drives the same machinery: ``tick(now)`` plans the clinics whose notifier has
something due at ``now`` (a settled warning, a window that ended, a delay that ran out
while a room stands ready) as a batch with no records. The service runs it every
``CLINICFLOW_NOTIFICATIONS_TICK_SECONDS``; tests call it with the time they choose.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from services.notifications import metrics as m
from services.notifications.domain import RuleBook
from services.notifications.names import NameBook
from services.notifications.plan import NotificationChanges, NotifierPlan, NotifierState
from services.notifications.store import NotificationStore, NotifierStates
from shared import events as ev
from shared.clock import Clock
from shared.floor.clinic_flow import FLOOR_FACTS
from shared.projection import Partition, ProjectionRunner, RecordReader, RedisProjection

CONSUMER = "notifications"  # names the stored offsets, the metrics and the dead letters

Stored = Callable[[NotificationChanges], Awaitable[None]]


def notifier_reader(floor_topic: str, estimates_topic: str) -> RecordReader:
    """Floor facts on the floor topic, flow's ``wait.estimated`` on the estimates topic:
    anything else is dead-lettered ("... does not belong on <topic>")."""
    return RecordReader({floor_topic: FLOOR_FACTS,
                         estimates_topic: frozenset({ev.WaitEstimated})})


class NotifierRedisProjection(RedisProjection[NotifierState, NotificationChanges]):
    """The notifier's ``RedisProjection``, adopting on assignment the offsets a version
    before the shared runner stored (``NotificationStore.adopt_old_offsets``)."""

    def __init__(self, notifications: NotificationStore, states: NotifierStates,
                 plan: NotifierPlan, *, prefix: str, after: Stored) -> None:
        super().__init__(notifications.redis, prefix, consumer=CONSUMER, store=states,
                         plan=plan, outbox=notifications.outbox, after=after)
        self.notifications = notifications

    async def positions(self, partitions: Sequence[Partition]) -> dict[Partition, int | None]:
        stored = await super().positions(partitions)
        missing = [tp for tp in partitions if stored.get(tp) is None]
        if missing and await self.notifications.adopt_old_offsets(missing, self.offsets.key):
            stored = await super().positions(partitions)
        return stored


class NotifierProjection:
    """The floor and estimates consumer of the notifications service, and its ticker."""

    def __init__(self, broker: Any, store: NotificationStore, rules: RuleBook, clock: Clock, *,
                 names: NameBook, prefix: str, floor_topic: str, estimates_topic: str,
                 group_id: str, paging: bool, on_stored: Stored | None = None,
                 on_dead_letters: Callable[[], None] | None = None,
                 hold: timedelta | None = None, **subscriber_options: Any) -> None:
        self.store = store
        self.on_stored = on_stored
        self.names = names
        self.plan = NotifierPlan(rules, floor_topic=floor_topic, paging=paging, names=names,
                                 **({} if hold is None else {"hold": hold}))
        self.states = NotifierStates(store, clock)
        self.reader = notifier_reader(floor_topic, estimates_topic)
        self.prefix = prefix
        self.projection = self._projection(self.states)
        self.runner = ProjectionRunner(
            broker, self.projection, self.reader, service="notifications", consumer=CONSUMER,
            topics=[floor_topic, estimates_topic], group_id=group_id,
            on_dead_letters=on_dead_letters, **subscriber_options)

    def _projection(self, states: NotifierStates) -> NotifierRedisProjection:
        return NotifierRedisProjection(self.store, states, self.plan, prefix=self.prefix,
                                       after=self._stored)

    async def tick(self, now: datetime) -> int:
        """Let the clinics whose notifier has something due at ``now`` act on it (in one
        transaction, as a batch without records). Returns how many clinics ticked."""
        clinics = await self.store.due_clinics(now.timestamp())
        if clinics:
            await self._projection(self.states.ticking_at(clinics, now)).apply([])
        return len(clinics)

    async def _stored(self, changes: NotificationChanges) -> None:
        for kind, outcome in changes.decisions:
            m.DECISIONS.labels(kind, outcome).inc()
        for clinic_id, action in changes.alerts:
            # clinic ids come from events: only configured clinics get a series of their own
            m.NURSE_ALERTS.labels(m.clinic_label(clinic_id, self.names.configured),
                                  action).inc()
        if self.on_stored is not None:
            await self.on_stored(changes)
