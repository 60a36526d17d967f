"""A clinic's floor as plain Python: visits, queues, rooms, providers, delays.

Pure: no I/O, no clock reads (every change takes the time it happened), no
globals. The live service and ``clinicflow replay`` both drive this module.
``Clinic.apply`` takes one floor fact and returns what changed; facts that
cannot be applied raise ``NotApplicable`` with the reason that goes to the
dead-letter topic.

How the floor handles odd orders (documented in docs/flow.md):

* duplicate facts (same arrival, same rooming) change nothing;
* rooming, provider-in or checkout for an unknown visit cannot be applied;
* rooming into a room that holds another patient cannot be applied, nor can marking
  such a room ready or out of service;
* provider-in before rooming cannot be applied: a visit with its provider and no room
  would be on no screen (room the patient first);
* checkout of a visit never roomed is accepted: the visit ends (no stage time);
* a cancellation after rooming ends the visit and sends the room to cleaning;
* an undo restores the visit and room as they were before the named fact,
  unless later facts changed them since, or ended the visit (then it cannot be applied).

Status mapping to FHIR R4 (Encounter.status / Appointment.status):

======================  =====================  ======================
clinicflow status       Encounter.status       Appointment.status
======================  =====================  ======================
waiting (arrived)       arrived                arrived
roomed                  triaged                arrived
with_provider           in-progress            fulfilled
checked_out             finished               fulfilled
cancelled               cancelled              cancelled
left_without_being_seen cancelled              cancelled
no_show                 (none)                 noshow
======================  =====================  ======================
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Literal

LATE_GRACE = timedelta(minutes=10)
UNDO_MEMORY = 50  # facts per clinic that can still be undone
# ended visits remembered per clinic to recognise a re-sent fact about them; redelivered
# records are already skipped by offset, so this only needs to cover a short window
CLOSED_MEMORY = 300


class VisitStatus(StrEnum):
    WAITING = "waiting"
    ROOMED = "roomed"
    WITH_PROVIDER = "with_provider"
    CHECKED_OUT = "checked_out"
    CANCELLED = "cancelled"
    LEFT_WITHOUT_BEING_SEEN = "left_without_being_seen"
    NO_SHOW = "no_show"


OPEN_STATUSES = frozenset({VisitStatus.WAITING, VisitStatus.ROOMED, VisitStatus.WITH_PROVIDER})

FHIR_STATUS: dict[VisitStatus, tuple[str | None, str]] = {
    VisitStatus.WAITING: ("arrived", "arrived"),
    VisitStatus.ROOMED: ("triaged", "arrived"),
    VisitStatus.WITH_PROVIDER: ("in-progress", "fulfilled"),
    VisitStatus.CHECKED_OUT: ("finished", "fulfilled"),
    VisitStatus.CANCELLED: ("cancelled", "cancelled"),
    VisitStatus.LEFT_WITHOUT_BEING_SEEN: ("cancelled", "cancelled"),
    VisitStatus.NO_SHOW: (None, "noshow"),
}


class RoomState(StrEnum):
    READY = "ready"
    OCCUPIED = "occupied"
    NEEDS_CLEANING = "needs_cleaning"
    OUT_OF_SERVICE = "out_of_service"


class NotApplicable(ValueError):
    """A fact the floor cannot apply; ``reason`` is what the dead-letter record says."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(slots=True)
class Visit:
    """One patient's visit today, identified by ``visit_id``; shown as ``ticket_code``."""

    visit_id: str
    ticket_code: str
    provider_id: str | None  # None: first available provider
    visit_type: str
    priority: Literal["routine", "urgent"]
    scheduled_at: datetime | None
    arrived_at: datetime
    status: VisitStatus = VisitStatus.WAITING
    room_id: str | None = None
    roomed_at: datetime | None = None
    provider_in_at: datetime | None = None
    ended_at: datetime | None = None
    history: list[tuple[str, datetime]] = field(default_factory=list)
    # worked out once: what they derive from (priority, appointment, arrival) never changes
    _late: bool | None = field(default=None, repr=False, compare=False)
    _key: tuple[int, datetime, datetime, str] | None = field(default=None, repr=False,
                                                             compare=False)

    @property
    def late(self) -> bool:
        late = self._late
        if late is None:
            late = self._late = (self.scheduled_at is not None
                                 and self.arrived_at > self.scheduled_at + LATE_GRACE)
        return late

    @property
    def queue_time(self) -> datetime:
        """The time that orders the queue: the appointment if on time, else the arrival.

        A front desk keeps an on-time patient's slot, fits a late patient in
        as if they had walked in, and takes walk-ins in arrival order.
        """
        if self.scheduled_at is None or self.late:
            return self.arrived_at
        return self.scheduled_at

    def queue_key(self) -> tuple[int, datetime, datetime, str]:
        """Urgent first, then queue time, then arrival, then id (a total order)."""
        key = self._key
        if key is None:
            key = self._key = (0 if self.priority == "urgent" else 1, self.queue_time,
                               self.arrived_at, self.visit_id)
        return key

    def set_status(self, status: VisitStatus, at: datetime) -> None:
        self.status = status
        self.history.append((status._value_, at))  # ``.value`` is a slower property


@dataclass(slots=True)
class Room:
    room_id: str
    state: RoomState
    since: datetime
    visit_id: str | None = None


@dataclass(slots=True)
class Delay:
    """A provider (or the whole clinic: ``provider_id`` None) running late."""

    provider_id: str | None
    minutes: int
    announced_at: datetime
    reason: str = ""

    @property
    def until(self) -> datetime:
        return self.announced_at + timedelta(minutes=self.minutes)


@dataclass(slots=True)
class StageTime:
    """A finished stage, for metrics and learning: which stage, whose, how long."""

    stage: Literal["arrival_to_roomed", "roomed_to_provider", "provider_to_checkout",
                   "roomed_to_checkout", "room_turnover"]
    minutes: float
    provider_id: str | None
    visit_type: str | None


@dataclass(slots=True)
class Change:
    """What one applied fact changed."""

    kind: str
    visit_ids: tuple[str, ...] = ()
    room_ids: tuple[str, ...] = ()
    stages: list[StageTime] = field(default_factory=list)
    queue_changed: bool = True
    duplicate: bool = False


@dataclass(slots=True)
class _UndoRecord:
    event_id: str
    kind: str
    visits: dict[str, Visit | None]  # visit as it was before (None: did not exist)
    rooms: dict[str, Room | None]
    delays: dict[str | None, Delay | None] | None
    visit_marks: dict[str, int]  # len(history) right after the fact
    room_marks: dict[str, datetime]
    # a sealed record never changes: its checkpoint JSON is made once (snapshot.py)
    snapshot: str | None = None


class Clinic:
    """One clinic's live floor. Memory holds open visits only, plus a bounded undo window."""

    def __init__(self, clinic_id: str) -> None:
        self.clinic_id = clinic_id
        self.visits: dict[str, Visit] = {}  # open visits only
        self.rooms: dict[str, Room] = {}
        self.delays: dict[str | None, Delay] = {}
        self.closed_ids: deque[str] = deque(maxlen=CLOSED_MEMORY)  # recently ended: duplicates
        self._closed_set: set[str] = set()
        self._undo: deque[_UndoRecord] = deque(maxlen=UNDO_MEMORY)
        self.counts: dict[str, int] = {}  # outcomes today: checked_out, lwbs, ...
        # open visits per status, kept as facts apply (statistics read it after every fact)
        self.open_counts: dict[VisitStatus, int] = dict.fromkeys(OPEN_STATUSES, 0)

    # ------------------------------------------------------------------ queries

    def waiting(self) -> list[Visit]:
        """Waiting visits in queue order (urgent first, then queue time)."""
        waiting = VisitStatus.WAITING
        return sorted([v for v in self.visits.values() if v.status is waiting],
                      key=Visit.queue_key)

    def recount(self) -> None:
        """Count open visits per status afresh (after a restore or an undo)."""
        counts = dict.fromkeys(OPEN_STATUSES, 0)
        for visit in self.visits.values():
            counts[visit.status] += 1
        self.open_counts = counts

    def roomed(self) -> list[Visit]:
        return [v for v in self.visits.values() if v.status is not VisitStatus.WAITING]

    def delay_for(self, provider_id: str | None) -> Delay | None:
        """The larger of the provider's own delay and a clinic-wide one."""
        own = self.delays.get(provider_id) if provider_id is not None else None
        clinic = self.delays.get(None)
        if own is None:
            return clinic
        if clinic is None:
            return own
        return own if own.until >= clinic.until else clinic

    def providers(self) -> set[str]:
        known = {v.provider_id for v in self.visits.values() if v.provider_id}
        known.update(p for p in self.delays if p is not None)
        return known

    # ------------------------------------------------------------------- facts

    def arrive(
        self,
        *,
        at: datetime,
        visit_id: str,
        ticket_code: str,
        provider_id: str | None,
        visit_type: str,
        scheduled_at: datetime | None,
        priority: Literal["routine", "urgent"] = "routine",
        event_id: str = "",
    ) -> Change:
        if visit_id in self.visits or visit_id in self._closed_set:
            return Change("arrival", (visit_id,), (), [], False, True)
        record = self._remember(event_id, "arrival", visit_id)
        visit = Visit(visit_id, ticket_code, provider_id, visit_type, priority, scheduled_at, at)
        visit.history.append((VisitStatus.WAITING._value_, at))
        self.visits[visit_id] = visit
        self.open_counts[VisitStatus.WAITING] += 1
        self._seal(record)
        return Change("arrival", (visit_id,), (), [])

    def room_ready(self, *, at: datetime, room_id: str, event_id: str = "") -> Change:
        room = self.rooms.get(room_id)
        if room is not None and room.state is RoomState.READY:
            return Change("room_ready", (), (room_id,), [], False, True)
        if room is not None and room.state is RoomState.OCCUPIED:
            raise NotApplicable(f"room {room_id} holds visit {room.visit_id}; check the "
                                "patient out or room them elsewhere first")
        record = self._remember(event_id, "room_ready", None, room_id)
        stages: list[StageTime] = []
        if room is None:
            self.rooms[room_id] = Room(room_id, RoomState.READY, at)
        else:
            if room.state is RoomState.NEEDS_CLEANING:
                stages.append(StageTime("room_turnover", _minutes(at - room.since), None, None))
            room.state, room.since, room.visit_id = RoomState.READY, at, None
        self._seal(record)
        return Change("room_ready", (), (room_id,), stages)

    def room_out_of_service(self, *, at: datetime, room_id: str, event_id: str = "") -> Change:
        room = self.rooms.get(room_id)
        if room is not None and room.state is RoomState.OCCUPIED:
            raise NotApplicable(f"room {room_id} holds visit {room.visit_id}; room the patient "
                                "elsewhere or check them out first")
        record = self._remember(event_id, "room_out_of_service", None, room_id)
        if room is None:
            self.rooms[room_id] = Room(room_id, RoomState.OUT_OF_SERVICE, at)
        else:
            room.state, room.since, room.visit_id = RoomState.OUT_OF_SERVICE, at, None
        self._seal(record)
        return Change("room_out_of_service", (), (room_id,), [])

    def patient_roomed(
        self, *, at: datetime, visit_id: str, room_id: str, event_id: str = ""
    ) -> Change:
        visit = self._open_visit(visit_id, "roomed")
        if visit.status is not VisitStatus.WAITING:
            if visit.room_id == room_id:
                return Change("roomed", (visit_id,), (room_id,), [], False, True)
            raise NotApplicable(f"visit {visit_id} is already {visit.status.value} in room "
                                f"{visit.room_id}")
        room = self.rooms.get(room_id)
        if room is not None and room.state is RoomState.OCCUPIED and room.visit_id != visit_id:
            raise NotApplicable(f"room {room_id} already holds visit {room.visit_id}")
        record = self._remember(event_id, "roomed", visit_id, room_id)
        if room is None:
            room = self.rooms[room_id] = Room(room_id, RoomState.OCCUPIED, at, visit_id)
        room.state, room.since, room.visit_id = RoomState.OCCUPIED, at, visit_id
        visit.room_id = room_id
        visit.roomed_at = at
        self._move(visit, VisitStatus.ROOMED, at)
        self._seal(record)
        stage = StageTime("arrival_to_roomed", _minutes(at - visit.arrived_at), visit.provider_id,
                          visit.visit_type)
        return Change("roomed", (visit_id,), (room_id,), [stage])

    def provider_in(
        self, *, at: datetime, visit_id: str, provider_id: str | None = None, event_id: str = ""
    ) -> Change:
        visit = self._open_visit(visit_id, "provider in")
        if visit.status is VisitStatus.WITH_PROVIDER:
            return Change("provider_in", (visit_id,), (), [], False, True)
        if visit.status is VisitStatus.WAITING:
            raise NotApplicable(f"provider in for visit {visit_id}, which is waiting and not "
                                "roomed; room the patient first")
        record = self._remember(event_id, "provider_in", visit_id)
        stages = []
        if visit.roomed_at is not None:
            stages.append(StageTime("roomed_to_provider", _minutes(at - visit.roomed_at),
                                    provider_id or visit.provider_id, visit.visit_type))
        if provider_id is not None:
            visit.provider_id = provider_id
        visit.provider_in_at = at
        self._move(visit, VisitStatus.WITH_PROVIDER, at)
        self._seal(record)
        return Change("provider_in", (visit_id,), (), stages)

    def checked_out(self, *, at: datetime, visit_id: str, event_id: str = "") -> Change:
        if visit_id in self._closed_set and visit_id not in self.visits:
            return Change("checkout", (visit_id,), (), [], False, True)
        visit = self._open_visit(visit_id, "checkout")
        room_id = visit.room_id or None
        record = self._remember(event_id, "checkout", visit_id, room_id)
        stages = []
        if visit.provider_in_at is not None:
            stages.append(StageTime("provider_to_checkout", _minutes(at - visit.provider_in_at),
                                    visit.provider_id, visit.visit_type))
        elif visit.roomed_at is not None:
            stages.append(StageTime("roomed_to_checkout", _minutes(at - visit.roomed_at),
                                    visit.provider_id, visit.visit_type))
        self._release_room(visit, at)
        self._close(visit, VisitStatus.CHECKED_OUT, at)
        self._seal(record)
        return Change("checkout", (visit_id,), () if room_id is None else (room_id,), stages)

    def cancelled(
        self, *, at: datetime, visit_id: str, reason: str = "cancelled", event_id: str = ""
    ) -> Change:
        if visit_id in self._closed_set and visit_id not in self.visits:
            return Change("cancel", (visit_id,), (), [], False, True)
        visit = self._open_visit(visit_id, "cancel")
        room_id = visit.room_id or None
        record = self._remember(event_id, "cancel", visit_id, room_id)
        self._release_room(visit, at)
        status = (VisitStatus.LEFT_WITHOUT_BEING_SEEN if reason == "left_without_being_seen"
                  else VisitStatus.CANCELLED)
        self._close(visit, status, at)
        self._seal(record)
        return Change("cancel", (visit_id,), () if room_id is None else (room_id,), [])

    def delay_announced(
        self, *, at: datetime, provider_id: str | None, minutes: int, reason: str = "",
        event_id: str = "",
    ) -> Change:
        record = self._remember_delay(event_id, provider_id)
        if minutes <= 0:
            self.delays.pop(provider_id, None)
        else:
            self.delays[provider_id] = Delay(provider_id, minutes, at, reason)
        self._seal(record)
        return Change("delay", (), (), [])

    def action_undone(self, *, at: datetime, undone_event_id: str, event_id: str = "") -> Change:
        """Reverse a recent fact by restoring what it changed, if nothing changed it since."""
        record = next((r for r in self._undo if r.event_id == undone_event_id), None)
        if record is None:
            raise NotApplicable(f"event {undone_event_id} is unknown or too old to undo")
        blocker = self._undo_blocker(record)
        if blocker is not None:
            raise NotApplicable(f"{blocker} after event {undone_event_id}; undo the later "
                                "action first")
        for visit_id, before in record.visits.items():
            if before is None:
                self.visits.pop(visit_id, None)
            else:
                restored = _copy_visit(before)
                assert restored is not None
                restored.history.append((f"undo:{record.kind}", at))
                self.visits[visit_id] = restored
                self._closed_set.discard(visit_id)
        for room_id, room_before in record.rooms.items():
            if room_before is None:
                self.rooms.pop(room_id, None)
            else:
                self.rooms[room_id] = _copy_room(room_before)  # type: ignore[assignment]
        if record.delays is not None:
            for provider_id, delay_before in record.delays.items():
                if delay_before is None:
                    self.delays.pop(provider_id, None)
                else:
                    self.delays[provider_id] = _copy_delay(delay_before)  # type: ignore[assignment]
        self._undo.remove(record)
        self.recount()
        return Change("undo", tuple(record.visits), tuple(record.rooms))

    def undo_window(self) -> list[tuple[str, str, bool]]:
        """The facts an undo may still name, newest first: (event id, kind, whether it can
        be undone now). The board lists them and the API checks an undo against them, so
        an undo it accepts is never refused here."""
        # ``_undo_blocker(r) is None`` for each, without making the reasons nobody reads:
        # boards list the whole window after every fact
        visits, rooms = self.visits, self.rooms
        window = []
        for record in reversed(self._undo):
            undoable = True
            for visit_id, mark in record.visit_marks.items():
                current = visits.get(visit_id)
                if current is None or len(current.history) != mark:
                    undoable = False
                    break
            if undoable:
                for room_id, since in record.room_marks.items():
                    room = rooms.get(room_id)
                    if room is not None and room.since != since:
                        undoable = False
                        break
            window.append((record.event_id, record.kind, undoable))
        return window

    # ---------------------------------------------------------------- helpers

    def _undo_blocker(self, record: _UndoRecord) -> str | None:
        """Why a recorded fact can no longer be undone (None: it can): a later fact changed
        its visit or room, or ended its visit (a visit the fact left open that is no longer
        open: undoing an arrival then would leave its checkout standing alone). The same
        rule as ``undo_window``'s (a test holds them together)."""
        for visit_id, mark in record.visit_marks.items():
            current = self.visits.get(visit_id)
            if current is None:
                return f"visit {visit_id} ended"
            if len(current.history) != mark:
                return f"visit {visit_id} changed"
        for room_id, since in record.room_marks.items():
            room = self.rooms.get(room_id)
            if room is not None and room.since != since:
                return f"room {room_id} changed"
        return None

    def _open_visit(self, visit_id: str, what: str) -> Visit:
        visit = self.visits.get(visit_id)
        if visit is None:
            if visit_id in self._closed_set:
                raise NotApplicable(f"{what} for visit {visit_id}, which has already ended")
            raise NotApplicable(f"{what} for unknown visit {visit_id}")
        return visit

    def _release_room(self, visit: Visit, at: datetime) -> None:
        if visit.room_id is None:
            return
        room = self.rooms.get(visit.room_id)
        if room is not None and room.visit_id == visit.visit_id:
            room.state, room.since, room.visit_id = RoomState.NEEDS_CLEANING, at, None

    def _move(self, visit: Visit, status: VisitStatus, at: datetime) -> None:
        """An open visit's new status, kept in ``open_counts``."""
        counts = self.open_counts
        counts[visit.status] -= 1
        if status in OPEN_STATUSES:
            counts[status] += 1
        visit.set_status(status, at)

    def _close(self, visit: Visit, status: VisitStatus, at: datetime) -> None:
        self._move(visit, status, at)
        visit.ended_at = at
        del self.visits[visit.visit_id]
        if len(self.closed_ids) == self.closed_ids.maxlen:
            self._closed_set.discard(self.closed_ids[0])
        self.closed_ids.append(visit.visit_id)
        self._closed_set.add(visit.visit_id)
        self.counts[status.value] = self.counts.get(status.value, 0) + 1

    def _remember(
        self, event_id: str, kind: str, visit_id: str | None = None, room_id: str | None = None
    ) -> _UndoRecord | None:
        """The undo record of a fact about (at most) one visit and one room, holding them as
        they are before it (None: they did not exist). No event id, no record: nothing could
        name the fact to undo it."""
        if not event_id:
            return None
        return _UndoRecord(
            event_id,
            kind,
            {} if visit_id is None else {visit_id: _copy_visit(self.visits.get(visit_id))},
            {} if room_id is None else {room_id: _copy_room(self.rooms.get(room_id))},
            None,
            {},
            {},
        )

    def _remember_delay(self, event_id: str, provider_id: str | None) -> _UndoRecord | None:
        """``_remember`` for a delay: the provider's (or clinic's) delay before the fact."""
        if not event_id:
            return None
        return _UndoRecord(event_id, "delay", {}, {},
                           {provider_id: _copy_delay(self.delays.get(provider_id))}, {}, {})

    def _seal(self, record: _UndoRecord | None) -> None:
        """Mark what the fact left (to see later changes) and keep the record."""
        if record is None:
            return
        for visit_id in record.visits:
            visit = self.visits.get(visit_id)
            # a fact that closed the visit: a later re-open would change nothing to compare
            if visit is not None:
                record.visit_marks[visit_id] = len(visit.history)
        for room_id in record.rooms:
            room = self.rooms.get(room_id)
            if room is not None:
                record.room_marks[room_id] = room.since
        self._undo.append(record)


def _copy_visit(visit: Visit | None) -> Visit | None:
    """A copy that shares nothing mutable with the original (cheaper than deepcopy)."""
    if visit is None:
        return None
    return Visit(visit.visit_id, visit.ticket_code, visit.provider_id, visit.visit_type,
                 visit.priority, visit.scheduled_at, visit.arrived_at, visit.status,
                 visit.room_id, visit.roomed_at, visit.provider_in_at, visit.ended_at,
                 list(visit.history))


def _copy_room(room: Room | None) -> Room | None:
    if room is None:
        return None
    return Room(room.room_id, room.state, room.since, room.visit_id)


def _copy_delay(delay: Delay | None) -> Delay | None:
    if delay is None:
        return None
    return Delay(delay.provider_id, delay.minutes, delay.announced_at, delay.reason)


def _minutes(delta: timedelta) -> float:
    return delta.total_seconds() / 60.0
