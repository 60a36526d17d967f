"""Checkin's projection of the floor and of flow's estimates: which visits still wait,
their ticket codes and their latest estimate (for the kiosk and the status lookup), and
the arrival and no-show marks of appointments (a rebuild after Redis was lost).

The shared runner (``shared/projection.py``) does the Kafka and Redis side: it reads
each record with ``checkin_reader`` (records it cannot apply go to the dead-letter topic
with the reason), skips what Redis holds as applied, and stores a batch's changes, its
offsets and its dead letters in one transaction. What is here decides, without I/O,
what a batch changes: ``plan_visits``. Each clinic's days are its own zone's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from zoneinfo import ZoneInfo

from services.checkin.domain import Appointment, VisitView, clinic_day, evolve_visit, undo_arrival
from shared import events as ev
from shared.projection import Inbound, Planned, RecordReader

# (clinic, visit)
VisitRef = tuple[str, str]
# (clinic, event id) of a ``patient.arrived``
ArrivalEventRef = tuple[str, str]
# (clinic, appointment)
AppointmentRef = tuple[str, str]
# a clinic's IANA zone (its days: tickets, follow-up lists)
ZoneOf = Callable[[str], ZoneInfo]
VISIT_EVENTS = (ev.PatientArrived, ev.PatientRoomed, ev.ArrivalCancelled, ev.PatientCheckedOut,
                ev.WaitEstimated)
# the floor topic carries every floor fact; flow's estimates have a topic of their own
FLOOR_EVENTS = frozenset(set(ev.EVENT_TYPES.values()) - {ev.WaitEstimated})
ESTIMATE_EVENTS: frozenset[type[ev.Payload]] = frozenset({ev.WaitEstimated})


def checkin_reader(floor_topic: str, estimates_topic: str) -> RecordReader:
    """The record reader of checkin's consumer: any floor fact on the floor topic, only
    ``wait.estimated`` on the estimates topic (anything else is dead-lettered)."""
    return RecordReader({floor_topic: FLOOR_EVENTS, estimates_topic: ESTIMATE_EVENTS})


@dataclass(slots=True)
class ProjectionState:
    """What is stored of a batch's visits, which visit each arrival event an
    ``action.undone`` of the batch names belongs to, and the appointments an arrival
    undone or entered in error may free (``freed_appointments``)."""

    visits: dict[VisitRef, VisitView] = field(default_factory=dict)
    arrival_events: dict[ArrivalEventRef, str] = field(default_factory=dict)
    appointments: dict[AppointmentRef, Appointment] = field(default_factory=dict)


@dataclass(slots=True)
class CheckinChanges:
    """What one batch changes, written in one transaction with its offsets."""

    visits: dict[VisitRef, VisitView] = field(default_factory=dict)
    # (clinic, appointment, visit, True) marks the appointment arrived as that visit;
    # (..., False) frees it again if that visit holds it (an arrival entered in error or
    # undone). In the order of the records: an arrival, its undoing and the right one
    # may share a batch
    arrivals: list[tuple[str, str, str, bool]] = field(default_factory=list)
    # booked appointments whose arrival checkin saved itself (marked arrived then): off
    # the no-show sweep's list, written before ``arrivals`` (a freeing later in the batch
    # puts its appointment back)
    arrived_off_list: list[AppointmentRef] = field(default_factory=list)
    # a booked appointment freed that way waits for its patient again: back on the
    # no-show sweep's list at its time (written with its freeing, in the same order)
    reopened: dict[AppointmentRef, datetime] = field(default_factory=dict)
    # (clinic, appointment, scheduled at, the clinic's day of it)
    no_shows: list[tuple[str, str, datetime, date]] = field(default_factory=list)
    # (clinic, arrival event id, visit, the clinic's day of the arrival)
    arrival_events: list[tuple[str, str, str, date]] = field(default_factory=list)


def visit_refs(records: list[Inbound]) -> list[VisitRef]:
    """The visits a batch's records are about (sorted, each once)."""
    return sorted({(r.event.clinic_id, r.event.payload.visit_id) for r in records
                   if r.event is not None and isinstance(r.event.payload, VISIT_EVENTS)})


def undone_refs(records: list[Inbound]) -> list[ArrivalEventRef]:
    """The events the batch's ``action.undone`` records name (arrivals among them undo a
    visit), sorted, each once."""
    return sorted({(r.event.clinic_id, r.event.payload.undone_event_id) for r in records
                   if r.event is not None and isinstance(r.event.payload, ev.ActionUndone)})


def freed_appointments(records: list[Inbound],
                       visits: dict[VisitRef, VisitView]) -> list[AppointmentRef]:
    """The appointments a batch may free (sorted, each once): with an ``action.undone`` or
    an arrival cancelled as entered in error among its records, those of its stored
    ``visits`` and of its arrivals; none otherwise."""
    if not any(r.event is not None and (
            isinstance(r.event.payload, ev.ActionUndone)
            or (isinstance(r.event.payload, ev.ArrivalCancelled)
                and r.event.payload.reason == "entered_in_error")) for r in records):
        return []
    wanted = {(clinic, view.appointment_id)
              for (clinic, _), view in visits.items() if view.appointment_id is not None}
    wanted |= {(r.event.clinic_id, r.event.payload.appointment_id) for r in records
               if r.event is not None and isinstance(r.event.payload, ev.PatientArrived)
               and r.event.payload.appointment_id is not None}
    return sorted(wanted)


def plan_visits(records: list[Inbound], state: ProjectionState,
                zone_of: ZoneOf) -> Planned[CheckinChanges]:
    """What a batch changes (pure): visits, arrival and no-show marks.

    ``records`` are the batch's readable records not applied before, in order; ``state``
    what is stored of the visits they touch (``visit_refs``) and of the arrivals their
    undos name (``undone_refs``); ``zone_of`` each clinic's zone (the day of a ticket or
    a no-show). Every record takes effect (``applied``); none is refused here (the
    reader refused the rest)."""
    changes = CheckinChanges()
    current = dict(state.visits)
    arrival_events = dict(state.arrival_events)
    applied = 0
    for record in records:
        event = record.event
        if event is None:
            continue
        applied += 1
        payload = event.payload
        zone = zone_of(event.clinic_id)
        before = None
        if isinstance(payload, VISIT_EVENTS):
            ref = (event.clinic_id, payload.visit_id)
            before = current.get(ref)
            after = evolve_visit(before, event, zone)
            if after is not None and after != before:
                current[ref] = after
                changes.visits[ref] = after
        if isinstance(payload, ev.PatientArrived):
            arrival = (event.clinic_id, event.envelope.event_id)
            if arrival not in arrival_events:
                arrival_events[arrival] = payload.visit_id
                changes.arrival_events.append((*arrival, payload.visit_id,
                                               clinic_day(event.occurred_at, zone)))
        if (isinstance(payload, ev.PatientArrived) and payload.appointment_id is not None
                and (before is None or before.appointment_id is None)):
            # a visit checkin saved itself was marked when it was checked in; only a
            # rebuild (Redis lost; the visit unknown, or known only from an estimate) marks
            # it here. Marking it again could undo a later "entered in error" that freed
            # the appointment for the right patient.
            changes.arrivals.append((event.clinic_id, payload.appointment_id,
                                     payload.visit_id, True))
        elif isinstance(payload, ev.PatientArrived) and payload.appointment_id is not None:
            changes.arrived_off_list.append((event.clinic_id, payload.appointment_id))
        elif (isinstance(payload, ev.ArrivalCancelled) and payload.reason == "entered_in_error"
              and before is not None and before.appointment_id is not None):
            _free(changes, state, event.clinic_id, before.appointment_id, payload.visit_id)
        elif isinstance(payload, ev.PatientNoShow):
            changes.no_shows.append((event.clinic_id, payload.appointment_id,
                                     payload.scheduled_at, clinic_day(payload.scheduled_at, zone)))
        elif isinstance(payload, ev.ActionUndone):
            _undo(changes, state, current, arrival_events, event, payload)
    return Planned(changes, applied)


def _free(changes: CheckinChanges, state: ProjectionState, clinic_id: str,
          appointment_id: str, visit_id: str) -> None:
    """The appointment is no longer ``visit_id``'s arrival: freed for the right one, and,
    while booked, watched for a no-show again (as the desk's ``reopen_appointment``)."""
    changes.arrivals.append((clinic_id, appointment_id, visit_id, False))
    appointment = state.appointments.get((clinic_id, appointment_id))
    if appointment is not None and appointment.status == "booked":
        changes.reopened[(clinic_id, appointment_id)] = appointment.scheduled_at


def _undo(changes: CheckinChanges, state: ProjectionState,
          current: dict[VisitRef, VisitView], arrival_events: dict[ArrivalEventRef, str],
          event: ev.Event, payload: ev.ActionUndone) -> None:
    """Flow undid an arrival: the visit no longer waits (and cannot be cancelled), and its
    appointment is free for the right arrival. Undos of other events change nothing here
    (an undone rooming shows as flow's next estimate of the visit)."""
    visit_id = arrival_events.get((event.clinic_id, payload.undone_event_id))
    if visit_id is None:
        return
    ref = (event.clinic_id, visit_id)
    before = current.get(ref)
    if before is None:
        return
    after = undo_arrival(before, event.occurred_at)
    if after == before:
        return
    current[ref] = changes.visits[ref] = after
    if before.appointment_id is not None:
        _free(changes, state, event.clinic_id, before.appointment_id, visit_id)
