"""What a batch of floor and estimate records, or a tick of the clock, changes: pure.

``NotifierPlan`` is the ``plan`` of the notifier's ``RedisProjection``
(shared/projection.py). It is given the readable records not applied before and the
state the store read for them (``NotifierState``: the touched clinics' notifiers,
their patients' preferences, the time), and returns the ``NotificationChanges`` to
store with the offsets, how many records took effect, and the records the floor
refused (dead letters, with the reason). No I/O: Redis is store.py's business.

Each clinic's floor events and flow's estimates are applied in time order: the two
topics are merged by ``occurred_at``, each partition keeping its own order, and a floor
fact goes before an estimate made at the same instant (flow made the estimate after
applying the fact). A tick is the same plan with no records: the clinics whose notifier
has something due (``NotifierState.ticking``) act on the clock.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import orjson

from services.notifications import records
from services.notifications.domain import (
    ClinicNotifier,
    Names,
    NotApplicable,
    Outcome,
    Preferences,
    RuleBook,
    contact_hold,
)
from services.notifications.domain.rules import hold_span
from services.notifications.records import NewNotification
from shared import events as ev
from shared.projection import DeadLetter, Inbound, Partition, Planned

# (raise | withdraw, clinic, room, the alert's JSON when raised)
AlertChange = tuple[str, str, str, bytes | None]
# (notification id, clinic, visit, kept until at most): a message deferred past the
# contact's own expiry keeps it (``contact_hold``) until it is sent, fails or is cancelled
ContactHold = tuple[str, str, str, datetime]


def waiting_visits(notifier: ClinicNotifier) -> set[str]:
    """The visits waiting to be roomed on the notifier's floor of a clinic."""
    return {visit for visit in notifier.floor.visits
            if notifier.visit_status(visit) == "waiting"}


@dataclass(slots=True)
class NotifierState:
    """What a batch (or a tick) is planned from."""

    now: datetime  # when it is applied: the service's clock, or the tick's time
    notifiers: dict[str, ClinicNotifier]  # every clinic the records or the tick touch
    preferences: dict[str, dict[str, Preferences]]  # clinic -> visit -> preferences
    ticking: tuple[str, ...] = ()  # clinics whose notifier acts on the clock at ``now``


@dataclass(slots=True)
class NotificationChanges:
    """Everything one batch (or tick) changes, stored in one transaction with the offsets
    (``NotificationStore.queue_changes``); ``decisions`` and ``alerts`` are counted in
    the metrics once it is stored."""

    finished_at: str = ""
    states: dict[str, bytes] = field(default_factory=dict)
    timers: dict[str, float | None] = field(default_factory=dict)
    notifications: list[NewNotification] = field(default_factory=list)
    cancels: list[tuple[str, str]] = field(default_factory=list)  # (id, reason)
    # deferred messages keep their patient's contact past its expiry, until this at most
    contact_holds: list[ContactHold] = field(default_factory=list)
    alert_changes: list[AlertChange] = field(default_factory=list)
    live: list[tuple[str, bytes]] = field(default_factory=list)  # (clinic, message)
    outbox: list[bytes] = field(default_factory=list)
    estimates: dict[str, dict[str, bytes]] = field(default_factory=dict)
    # visits no longer waiting (roomed, gone): their estimate leaves the clinic's list
    estimates_gone: dict[str, set[str]] = field(default_factory=dict)
    decisions: list[tuple[str, str]] = field(default_factory=list)  # (kind, outcome)
    alerts: list[tuple[str, str]] = field(default_factory=list)  # (clinic, raised|withdrawn)


@dataclass(frozen=True, slots=True)
class NotifierPlan:
    """The notifier's pure ``plan(records, state)`` for one deployment's rules. ``names``
    words the ``nurse_alert.raised`` events it publishes (nothing it stores holds a
    name)."""

    rules: RuleBook
    floor_topic: str
    paging: bool  # a paging webhook is configured: alerts are paged too
    names: Callable[[str], Names] = field(default=lambda _clinic_id: Names())
    # how long past its due time a deferred message keeps its contact (the sender's retries)
    hold: timedelta = field(default_factory=hold_span)

    def __call__(self, records: list[Inbound], state: NotifierState
                 ) -> Planned[NotificationChanges]:
        wall = state.now
        changes = NotificationChanges(finished_at=wall.isoformat())
        planned = Planned(changes)
        streams = self._streams(records)
        for clinic_id in sorted(set(streams) | set(state.ticking)):
            notifier = state.notifiers[clinic_id]
            # the domain reads quiet hours on the clinic's clock: its zone as NameBook says
            rules = self.rules.for_clinic(clinic_id).model_copy(
                update={"timezone": self.names(clinic_id).zone.key})
            prefs = state.preferences.get(clinic_id, {})
            waiting_before = waiting_visits(notifier)
            estimated: dict[str, bytes] = {}
            on_floor: set[str] = set()  # visits the batch's floor facts name
            for record in heapq.merge(*streams.get(clinic_id, []), key=occurred_at):
                event = record.event
                assert event is not None
                payload = event.payload
                at, event_id = event.occurred_at, event.envelope.event_id
                try:
                    if isinstance(payload, ev.WaitEstimated):
                        estimated[payload.visit_id] = orjson.dumps(
                            {**payload.model_dump(mode="json"), "estimated_at": at.isoformat()})
                        outcome = notifier.on_estimate(payload, at=at, event_id=event_id,
                                                       rules=rules, prefs=prefs, wall=wall)
                    else:
                        outcome = notifier.on_floor(payload, at=at, event_id=event_id,
                                                    rules=rules, prefs=prefs, wall=wall)
                        visit_id = getattr(payload, "visit_id", None)
                        if visit_id is not None:
                            on_floor.add(visit_id)
                except NotApplicable as exc:
                    planned.dead_letters.append(DeadLetter(record, exc.reason))
                    continue
                planned.applied += 1
                self._effects(clinic_id, outcome, wall, changes)
            self._estimates(clinic_id, notifier, waiting_before | on_floor, estimated,
                            changes)
            if clinic_id in state.ticking:
                self._effects(clinic_id, notifier.tick(now=wall, rules=rules, prefs=prefs),
                              wall, changes)
            self._effects(clinic_id, notifier.recall(now=wall, rules=rules, prefs=prefs),
                          wall, changes)
            notifier.housekeeping(notifier.clock or wall)
            changes.states[clinic_id] = orjson.dumps(notifier.to_dict())
            due = notifier.next_due()
            changes.timers[clinic_id] = None if due is None else due.timestamp()
        return planned

    @staticmethod
    def _estimates(clinic_id: str, notifier: ClinicNotifier, known: set[str],
                   estimated: dict[str, bytes], changes: NotificationChanges) -> None:
        """The clinic's list of estimates follows its waiting visits as the batch leaves
        them (``known``: the visits waiting before it and those its floor facts name):
        the latest estimate of each visit still waiting, or not known yet (its arrival
        may come later on the other topic), is kept; a visit that left the line (roomed,
        gone, its arrival undone) leaves the list, and an estimate made before it left
        and read after does not put it back."""
        waiting_after = waiting_visits(notifier)
        kept = {visit: estimate for visit, estimate in estimated.items()
                if visit in waiting_after
                or (visit not in known and notifier.visit_status(visit) is None)}
        gone = (known - waiting_after) | (estimated.keys() - kept.keys())
        if kept:
            changes.estimates[clinic_id] = kept
        if gone:
            changes.estimates_gone[clinic_id] = gone

    def _streams(self, records: list[Inbound]) -> dict[str, list[list[Inbound]]]:
        return clinic_streams(records, self.floor_topic)

    def _effects(self, clinic_id: str, outcome: Outcome, wall: datetime,
                 changes: NotificationChanges) -> None:
        for message in outcome.messages:
            changes.notifications.append(records.message_record(message, clinic_id, wall))
            if message.not_before is not None:  # deferred (quiet hours): keep its contact
                changes.contact_holds.append((
                    message.notification_id, clinic_id, message.visit_id,
                    contact_hold(max(wall, message.not_before), self.hold)))
        for alert, reason, page in outcome.withdrawn:
            changes.alert_changes.append(("withdraw", clinic_id, alert.room_id, None))
            changes.live.append((clinic_id, records.live_message("withdrawn", alert, reason)))
            changes.outbox.append(records.alert_withdrawn(alert, reason, clinic_id,
                                                          max(alert.raised_at, wall)))
            if page and self.paging:
                changes.notifications.append(
                    records.page_record(alert, "withdrawn", clinic_id, wall, reason))
            changes.alerts.append((clinic_id, "withdrawn"))
        for alert, page in outcome.raised:
            changes.alert_changes.append(("raise", clinic_id, alert.room_id,
                                          orjson.dumps(alert.to_dict())))
            changes.live.append((clinic_id, records.live_message("raised", alert)))
            changes.outbox.append(records.alert_raised(alert, clinic_id,
                                                       self.names(clinic_id)))
            if page and self.paging:
                changes.notifications.append(
                    records.page_record(alert, "raised", clinic_id, wall))
            changes.alerts.append((clinic_id, "raised"))
        for _visit_id, ids in outcome.cancelled:
            changes.cancels.extend((i, "the patient was roomed or left first") for i in ids)
        changes.decisions.extend(outcome.decisions)


def clinic_streams(records: list[Inbound], floor_topic: str
                   ) -> dict[str, list[list[Inbound]]]:
    """Each clinic's records by partition, the floor's partitions first (so a floor fact
    goes before a record of another topic made at the same instant): merged by
    ``occurred_at`` (``heapq.merge``), each partition keeps its order."""
    by_clinic: dict[str, dict[Partition, list[Inbound]]] = {}
    for record in records:
        if record.event is not None:
            by_clinic.setdefault(record.event.clinic_id, {}).setdefault(
                record.tp, []).append(record)
    return {clinic_id: [stream for _tp, stream in sorted(
                partitions.items(), key=lambda entry: (entry[0][0] != floor_topic, entry[0]))]
            for clinic_id, partitions in by_clinic.items()}


def occurred_at(record: Inbound) -> datetime:
    assert record.event is not None
    return record.event.occurred_at
