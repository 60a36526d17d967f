"""Floor event -> domain -> effects. No Kafka or Redis here: the live service and
``clinicflow replay`` both call ``ClinicFlow.apply`` and ``ClinicFlow.estimates``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, ClassVar

from shared import events as ev
from shared.floor.day_stats import DayStats
from shared.floor.estimator import WaitEstimate, WaitEstimator
from shared.floor.model import Change, Clinic, NotApplicable, Visit

RECORD_EVERY_SECONDS = 300


class ClinicFlow:
    """One clinic's floor and its estimator, kept in step."""

    # the method that applies each kind of fact, by the payload's type (a subclass that
    # overrides one of them gets its own: ``__init_subclass__``)
    _facts: ClassVar[dict[type[ev.Payload], Callable[[Any, Any, datetime, str], Change]]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._facts = {kind: getattr(cls, name) for kind, name in _FACT_METHODS.items()}

    def __init__(self, clinic_id: str) -> None:
        self.clinic = Clinic(clinic_id)
        self.estimator = WaitEstimator()
        self.day = DayStats()
        # when each provider last finished a patient (None: with a patient now)
        self.provider_free_since: dict[str | None, datetime | None] = {}
        self.last_tick = -1  # the five-minute period the estimator last recorded in
        self.last_event_at: datetime | None = None

    @property
    def clinic_id(self) -> str:
        return self.clinic.clinic_id

    def apply(self, payload: ev.Payload, at: datetime, event_id: str = "") -> Change:
        """Apply one floor fact. Raises ``NotApplicable`` for what the floor cannot apply."""
        fact = self._facts.get(type(payload))
        if fact is None:
            raise NotApplicable(f"flow does not handle {type(payload).__name__}")
        if type(payload) in BOOKKEEPING:
            # nothing on the floor moves: an EHR booking through the night neither keeps
            # the clinic's day going nor starts one, nor samples its queues (a replay
            # log has no such lines: the live estimator sees what a replay sees)
            return fact(self, payload, at, event_id)
        tick = int(at.timestamp() // RECORD_EVERY_SECONDS)
        if tick != self.last_tick:
            self._new_period(at)
        change = fact(self, payload, at, event_id)
        for stage in change.stages:
            self.estimator.observe_stage(stage)
        if not change.duplicate:
            self.day.observe(change, self.clinic, at)
            if tick != self.last_tick:
                self.estimator.record(self.clinic, at)
                self.last_tick = tick
        self.last_event_at = at
        return change

    def _new_period(self, at: datetime) -> None:
        """The first fact of a new five-minute period is about to be applied (a fact
        after a quiet spell always is one): ``RememberingFlow`` starts its days here."""

    # one method per kind of fact (looked up by the payload's type: no chain of checks)

    def _arrived(self, p: ev.PatientArrived, at: datetime, event_id: str) -> Change:
        return self.clinic.arrive(
            at=at, visit_id=p.visit_id, ticket_code=p.ticket_code, provider_id=p.provider_id,
            visit_type=p.visit_type, scheduled_at=p.scheduled_at, priority=p.priority,
            event_id=event_id,
        )

    def _room_ready(self, p: ev.RoomReady, at: datetime, event_id: str) -> Change:
        return self.clinic.room_ready(at=at, room_id=p.room_id, event_id=event_id)

    def _room_out(self, p: ev.RoomOutOfService, at: datetime, event_id: str) -> Change:
        return self.clinic.room_out_of_service(at=at, room_id=p.room_id, event_id=event_id)

    def _applied_to(self, change: Change, visit_id: str) -> Visit | None:
        """The open visit a fact just changed (None: a duplicate, or the visit is gone)."""
        return None if change.duplicate else self.clinic.visits.get(visit_id)

    def _roomed(self, p: ev.PatientRoomed, at: datetime, event_id: str) -> Change:
        change = self.clinic.patient_roomed(at=at, visit_id=p.visit_id, room_id=p.room_id,
                                            event_id=event_id)
        visit = self._applied_to(change, p.visit_id)
        if visit is not None:
            self.estimator.observe_rooming(self.clinic, visit)
        return change

    def _provider_in(self, p: ev.ProviderIn, at: datetime, event_id: str) -> Change:
        change = self.clinic.provider_in(at=at, visit_id=p.visit_id, provider_id=p.provider_id,
                                         event_id=event_id)
        visit = self._applied_to(change, p.visit_id)
        if visit is not None:
            provider = visit.provider_id
            self.estimator.observe_provider_in(
                provider, visit.roomed_at, self.provider_free_since.get(provider), at)
            self.provider_free_since[provider] = None
        return change

    def _checked_out(self, p: ev.PatientCheckedOut, at: datetime, event_id: str) -> Change:
        seen_by = self.clinic.visits.get(p.visit_id)
        change = self.clinic.checked_out(at=at, visit_id=p.visit_id, event_id=event_id)
        if seen_by is not None and not change.duplicate and seen_by.provider_in_at:
            self.provider_free_since[seen_by.provider_id] = at
        self.estimator.forget(p.visit_id)
        return change

    def _cancelled(self, p: ev.ArrivalCancelled, at: datetime, event_id: str) -> Change:
        change = self.clinic.cancelled(at=at, visit_id=p.visit_id, reason=p.reason,
                                       event_id=event_id)
        self.estimator.forget(p.visit_id)
        return change

    def _delay(self, p: ev.DelayAnnounced, at: datetime, event_id: str) -> Change:
        return self.clinic.delay_announced(at=at, provider_id=p.provider_id, minutes=p.minutes,
                                           reason=p.reason, event_id=event_id)

    def _delay_cleared(self, p: ev.DelayCleared, at: datetime, event_id: str) -> Change:
        return self.clinic.delay_announced(at=at, provider_id=p.provider_id, minutes=0,
                                           event_id=event_id)

    def _undone(self, p: ev.ActionUndone, at: datetime, event_id: str) -> Change:
        return self.clinic.action_undone(at=at, undone_event_id=p.undone_event_id,
                                         event_id=event_id)

    def _scheduling(self, p: ev.Payload, at: datetime, event_id: str) -> Change:
        return Change("schedule", queue_changed=False)

    def _no_show(self, p: ev.PatientNoShow, at: datetime, event_id: str) -> Change:
        return Change("schedule", queue_changed=False)

    def estimates(self, now: datetime) -> list[WaitEstimate]:
        """Current estimates for every waiting visit, in queue order."""
        return self.estimator.estimate(self.clinic, now)


_FACT_METHODS: dict[type[ev.Payload], str] = {
    ev.PatientArrived: "_arrived",
    ev.RoomReady: "_room_ready",
    ev.RoomOutOfService: "_room_out",
    ev.PatientRoomed: "_roomed",
    ev.ProviderIn: "_provider_in",
    ev.PatientCheckedOut: "_checked_out",
    ev.ArrivalCancelled: "_cancelled",
    ev.DelayAnnounced: "_delay",
    ev.DelayCleared: "_delay_cleared",
    ev.ActionUndone: "_undone",
    ev.AppointmentScheduled: "_scheduling",
    ev.PatientNoShow: "_no_show",
}
ClinicFlow._facts = {kind: getattr(ClinicFlow, name) for kind, name in _FACT_METHODS.items()}
# facts of the schedule, not of the floor: a booking, a no-show
BOOKKEEPING: frozenset[type[ev.Payload]] = frozenset({ev.AppointmentScheduled,
                                                     ev.PatientNoShow})

# the payloads a clinic's floor applies: every floor fact (a wait.estimated is flow's own
# output, never a floor fact)
FLOOR_FACTS: frozenset[type[ev.Payload]] = frozenset(_FACT_METHODS)
