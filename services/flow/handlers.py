"""Floor event -> domain -> effects. No Kafka or Redis here: the live service and
``clinicflow replay`` both call ``ClinicFlow.apply`` and ``ClinicFlow.estimates``.
"""

from __future__ import annotations

from datetime import datetime

from services.flow.domain import Change, Clinic, NotApplicable
from services.flow.estimator import Estimate, WaitEstimator
from services.flow.operations import DayStats
from shared import events as ev

RECORD_EVERY_SECONDS = 300


class ClinicFlow:
    """One clinic's floor and its estimator, kept in step."""

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
        clinic = self.clinic
        change: Change
        match payload:
            case ev.PatientArrived():
                change = clinic.arrive(
                    at=at, visit_id=payload.visit_id, ticket_code=payload.ticket_code,
                    provider_id=payload.provider_id, visit_type=payload.visit_type,
                    scheduled_at=payload.scheduled_at, priority=payload.priority,
                    event_id=event_id,
                )
            case ev.RoomReady():
                change = clinic.room_ready(at=at, room_id=payload.room_id, event_id=event_id)
            case ev.RoomOutOfService():
                change = clinic.room_out_of_service(at=at, room_id=payload.room_id,
                                                    event_id=event_id)
            case ev.PatientRoomed():
                change = clinic.patient_roomed(at=at, visit_id=payload.visit_id,
                                               room_id=payload.room_id, event_id=event_id)
                visit = clinic.visits.get(payload.visit_id)
                if visit is not None and not change.duplicate:
                    self.estimator.observe_rooming(clinic, visit)
            case ev.ProviderIn():
                change = clinic.provider_in(at=at, visit_id=payload.visit_id,
                                            provider_id=payload.provider_id, event_id=event_id)
                visit = clinic.visits.get(payload.visit_id)
                if visit is not None and not change.duplicate:
                    provider = visit.provider_id
                    self.estimator.observe_provider_in(
                        provider, visit.roomed_at, self.provider_free_since.get(provider), at)
                    self.provider_free_since[provider] = None
            case ev.PatientCheckedOut():
                seen_by = clinic.visits.get(payload.visit_id)
                change = clinic.checked_out(at=at, visit_id=payload.visit_id, event_id=event_id)
                if seen_by is not None and not change.duplicate and seen_by.provider_in_at:
                    self.provider_free_since[seen_by.provider_id] = at
                self.estimator.forget(payload.visit_id)
            case ev.ArrivalCancelled():
                change = clinic.cancelled(at=at, visit_id=payload.visit_id,
                                          reason=payload.reason, event_id=event_id)
                self.estimator.forget(payload.visit_id)
            case ev.DelayAnnounced():
                change = clinic.delay_announced(at=at, provider_id=payload.provider_id,
                                                minutes=payload.minutes, reason=payload.reason,
                                                event_id=event_id)
            case ev.DelayCleared():
                change = clinic.delay_announced(at=at, provider_id=payload.provider_id,
                                                minutes=0, event_id=event_id)
            case ev.ActionUndone():
                change = clinic.action_undone(at=at, undone_event_id=payload.undone_event_id,
                                              event_id=event_id)
            case ev.AppointmentScheduled() | ev.PatientNoShow():
                change = Change("schedule", queue_changed=False)
            case _:
                raise NotApplicable(f"flow does not handle {type(payload).__name__}")
        for stage in change.stages:
            self.estimator.observe_stage(stage)
        if not change.duplicate:
            self.day.observe(change, clinic, at)
            tick = int(at.timestamp() // RECORD_EVERY_SECONDS)
            if tick != self.last_tick:
                self.estimator.record(clinic, at)
                self.last_tick = tick
        self.last_event_at = at
        return change

    def estimates(self, now: datetime) -> list[Estimate]:
        """Current estimates for every waiting visit, in queue order."""
        return self.estimator.estimate(self.clinic, now)
