"""Who to tell what, and when: the notification rules of one clinic, as plain Python.

Pure: no I/O, no clock reads (every call takes the time), no globals. The
adapters feed it floor events, flow's wait estimates and clock ticks, and carry
out what comes back (queue a message, raise or withdraw a nurse alert).

The rules, in the clinic's words (each threshold is per clinic, see ``Rules``):

* **Delay warnings.** A patient is warned when a delay is announced for their
  provider (or the whole clinic), or when their estimate slips well beyond
  what they were last told: the time they expect to be called moved later by
  ``warn_after_growth_minutes``. What they were "last told" starts as the
  first estimate (the one on their ticket and the screen) and becomes each
  warning's estimate. A warning waits ``settle_seconds`` for the other half of
  the story: a delay waits for flow's fresh estimate (so the message says the
  new wait), a jump in the estimate waits for the delay that may explain it.
* **At most one warning per patient per ``min_minutes_between_messages``.** A
  warning inside that window is held and goes out when the window ends, if it
  is still true then. "Come back now" and "we are ready for you" are never
  held back (each goes out at most once per visit) but do count as messages.
* **Never after roomed**, never to a patient who left, never to one who opted
  out or gave no contact, never for a trigger older than
  ``max_message_age_minutes`` (a replay after an outage is not news).
* **Wait anywhere.** A patient waiting outside is told "please come back now"
  when the low end of their estimate (the early edge of the 80% range: nine in
  ten patients are back before they are called) drops to
  ``come_back_lead_minutes``, and "we are ready for you" when a room is ready
  for them.
* **Nurse alerts.** Each ready room is matched with the next waiting patient
  (queue order: urgent first, then appointment or arrival time) whose
  provider can take them: not running late, and fewer than
  ``patients_roomed_per_provider`` of their patients already roomed and
  waiting for them. Two ready rooms get two different patients. An alert is
  withdrawn when the room is taken or who is next changes.

Notification ids are derived from the ids of the events that triggered them,
so the same trigger always names the same notification: the store refuses a
second one (exactly once, with the offsets kept in the same transaction).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from shared import events as ev
from shared.floor.clinic_flow import ClinicFlow
from shared.floor.model import Clinic, NotApplicable, RoomState, Visit, VisitStatus
from shared.floor.snapshot import dump_flow, load_flow

PatientKind = Literal["delay_warning", "come_back_now", "ready_for_you"]
Channel = Literal["email", "sms", "log"]
RECENT_EVENTS = 500  # floor event ids remembered per clinic: a re-sent fact changes nothing
ORPHAN_NOTES = timedelta(hours=2)  # estimates for visits the floor never showed are dropped
INTENTS_PER_VISIT = 8

__all__ = [
    "Alert", "ClinicNotifier", "Message", "NotApplicable", "Outcome", "Preferences", "RuleBook",
    "Rules", "WithdrawReason", "backoff_seconds", "contact_expiry", "format_range",
    "notification_id", "page_id", "provider_label", "room_label",
]  # fmt: skip


# ------------------------------------------------------------------- rules


class Rules(BaseModel):
    """One clinic's notification rules. Defaults suit a typical outpatient clinic."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    delay_warnings: bool = Field(True, description="warn waiting patients of delays")
    warn_after_growth_minutes: float = Field(
        15, ge=1, le=240,
        description="warn when the expected call time moved this much later than last told")
    announce_delays_from_minutes: int = Field(
        10, ge=1, le=600, description="announced delays shorter than this are not sent")
    min_minutes_between_messages: float = Field(
        20, ge=0, le=600, description="at most one delay warning per patient per window")
    wait_anywhere: bool = Field(True, description="'come back now' / 'we are ready for you'")
    come_back_lead_minutes: float = Field(
        15, ge=1, le=180, description="call back when the low end of the range reaches this")
    nurse_alerts: bool = Field(True, description="room-ready alerts to the nurse station")
    patients_roomed_per_provider: int = Field(
        2, ge=1, le=10, description="a provider with this many patients roomed and waiting "
        "for them is not offered another room")
    settle_seconds: float = Field(
        5, ge=0, le=120, description="how long a warning waits for the rest of the story")
    max_message_age_minutes: float = Field(
        30, ge=1, le=1440, description="triggers older than this are not sent (replays)")
    clinic_name: str = Field("", max_length=60, description="prefix of patient messages")
    provider_names: dict[str, str] = Field(
        default_factory=dict, description='display names, e.g. {"dr-lee": "Dr. Lee"}')
    timezone: str = Field("UTC", description="the clinic's zone: contacts expire at midnight")

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value


class RuleBook(BaseModel):
    """Default rules plus per-clinic overrides (``CLINICFLOW_NOTIFICATIONS_RULES``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    default: Rules = Field(default_factory=Rules)
    clinics: dict[str, Rules] = Field(default_factory=dict)

    @classmethod
    def parse(cls, document: dict[str, Any]) -> RuleBook:
        """Build from ``{"default": {...}, "clinics": {"north": {...}}}``; a clinic's
        overrides are merged over the defaults. Raises ``ValueError`` naming the bad rule."""
        try:
            base = Rules.model_validate(document.get("default", {}))
            unknown = set(document) - {"default", "clinics"}
            if unknown:
                raise ValueError(f"unknown keys {sorted(unknown)} (use 'default' and 'clinics')")
            clinics = {}
            for clinic_id, override in (document.get("clinics") or {}).items():
                merged = {**base.model_dump(), **override}
                if "provider_names" in override:
                    merged["provider_names"] = {**base.provider_names,
                                                **override["provider_names"]}
                try:
                    clinics[clinic_id] = Rules.model_validate(merged)
                except ValidationError as exc:
                    raise ValueError(f"clinics.{clinic_id}.{_first_error(exc)}") from None
            return cls(default=base, clinics=clinics)
        except ValidationError as exc:
            raise ValueError(f"default.{_first_error(exc)}") from None

    def for_clinic(self, clinic_id: str) -> Rules:
        return self.clinics.get(clinic_id, self.default)


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(p) for p in error["loc"]) or "(root)"
    return f"{where}: {error['msg']}"


@dataclass(frozen=True, slots=True)
class Preferences:
    """What the front desk recorded for a visit, minus the contact details themselves."""

    channel: Channel | None = None  # None: no contact on file
    delay_updates: bool = True
    wait_anywhere: bool = False
    opted_out: bool = False

    @property
    def reachable(self) -> bool:
        return self.channel is not None and not self.opted_out

    def to_dict(self) -> dict[str, Any]:
        return {"channel": self.channel, "delay_updates": self.delay_updates,
                "wait_anywhere": self.wait_anywhere, "opted_out": self.opted_out}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preferences:
        return cls(data.get("channel"), bool(data.get("delay_updates", True)),
                   bool(data.get("wait_anywhere", False)), bool(data.get("opted_out", False)))


NO_CONTACT = Preferences()


# ---------------------------------------------------------------- outputs


@dataclass(frozen=True, slots=True)
class Message:
    """A patient message to queue: who (by visit), what, and why."""

    notification_id: str
    visit_id: str
    ticket_code: str
    kind: PatientKind
    subject: str
    text: str
    trigger_ids: tuple[str, ...]
    decided_at: datetime
    channel: Channel


@dataclass(frozen=True, slots=True)
class Alert:
    """A room-ready alert for the nurses."""

    alert_id: str
    room_id: str
    visit_id: str
    ticket_code: str
    provider_id: str | None
    text: str
    raised_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {"alert_id": self.alert_id, "room_id": self.room_id, "visit_id": self.visit_id,
                "ticket_code": self.ticket_code, "provider_id": self.provider_id,
                "text": self.text, "raised_at": self.raised_at.isoformat()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Alert:
        return cls(data["alert_id"], data["room_id"], data["visit_id"], data["ticket_code"],
                   data["provider_id"], data["text"], datetime.fromisoformat(data["raised_at"]))


WithdrawReason = Literal["room_taken", "room_unavailable", "next_patient_changed",
                         "nobody_to_room", "alerts_off"]


@dataclass(slots=True)
class Outcome:
    """What one event (or tick) asks the adapters to do."""

    messages: list[Message] = field(default_factory=list)
    raised: list[tuple[Alert, bool]] = field(default_factory=list)  # (alert, page the pager)
    withdrawn: list[tuple[Alert, WithdrawReason, bool]] = field(default_factory=list)
    cancelled: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)  # visit, ids
    decisions: list[tuple[str, str]] = field(default_factory=list)  # (kind, outcome): metrics

    def extend(self, other: Outcome) -> None:
        self.messages.extend(other.messages)
        self.raised.extend(other.raised)
        self.withdrawn.extend(other.withdrawn)
        self.cancelled.extend(other.cancelled)
        self.decisions.extend(other.decisions)


# ------------------------------------------------------------ patient notes


@dataclass(slots=True)
class Estimate:
    """A wait estimate: minutes from ``at`` until roomed, and its 80% range."""

    at: datetime
    wait: float
    low: float
    high: float
    position: int = 0

    def expected_call(self) -> datetime:
        return self.at + timedelta(minutes=self.wait)

    def aged(self, now: datetime) -> Estimate:
        """The same estimate seen from ``now``: the clock ran down since it was made."""
        gone = max(0.0, (now - self.at).total_seconds() / 60.0)
        return Estimate(now, max(0.0, self.wait - gone), max(0.0, self.low - gone),
                        max(0.0, self.high - gone), self.position)


@dataclass(slots=True)
class Pending:
    """A delay warning waiting to go out (settling, or held by the rate limit)."""

    reason: Literal["delay", "estimate"]
    trigger_ids: tuple[str, ...]
    armed_at: datetime
    due_at: datetime
    expires_at: datetime
    delay_minutes: int = 0
    delay_provider: str | None = None  # whose delay (None: the clinic's)
    fresh: bool = False  # flow's estimate made after the delay has arrived


@dataclass(slots=True)
class PatientNotes:
    """What the notifier remembers about one waiting patient."""

    visit_id: str
    ticket_code: str
    provider_id: str | None
    told: Estimate | None = None
    estimate: Estimate | None = None
    last_message_at: datetime | None = None
    pending: Pending | None = None
    come_back_sent: bool = False
    ready_sent: bool = False
    intents: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- notifier


class ClinicNotifier:
    """One clinic's floor (flow's ``Clinic``, reused) plus what each patient was told."""

    def __init__(self, clinic_id: str) -> None:
        self._flow = ClinicFlow(clinic_id)  # only its Clinic is driven: snapshots come free
        self.patients: dict[str, PatientNotes] = {}
        self.alerts: dict[str, Alert] = {}  # room_id -> active alert
        self.recent: deque[str] = deque(maxlen=RECENT_EVENTS)
        self.clock: datetime | None = None

    @property
    def clinic_id(self) -> str:
        return self.floor.clinic_id

    @property
    def floor(self) -> Clinic:
        return self._flow.clinic

    # ----------------------------------------------------------- inputs

    def on_floor(self, payload: ev.Payload, *, at: datetime, event_id: str, rules: Rules,
                 prefs: dict[str, Preferences], wall: datetime) -> Outcome:
        """Apply one floor fact. Raises ``NotApplicable`` when the floor cannot take it."""
        out = Outcome()
        if event_id and event_id in self.recent:
            return out  # the same fact sent twice
        self._apply_to_floor(payload, at, event_id)
        if event_id:
            self.recent.append(event_id)
        now = self._advance(at)
        match payload:
            case ev.PatientArrived():
                notes = self._notes(payload.visit_id, payload.ticket_code, payload.provider_id)
                notes.ticket_code, notes.provider_id = payload.ticket_code, payload.provider_id
                if notes.estimate is not None:  # flow's estimate was read before the arrival
                    self._consider_come_back(
                        notes, notes.estimate.aged(now), event_id, now,
                        prefs.get(payload.visit_id, NO_CONTACT), rules, wall, out)
            case ev.DelayAnnounced() if payload.minutes > 0:
                self._arm_delay(payload, at, event_id, rules, prefs, wall, out)
            case ev.DelayAnnounced() | ev.DelayCleared():
                self._drop_delay_warnings(payload.provider_id)
        self._settle_visits(out)
        self._refresh_alerts(at, rules, prefs, wall, out)
        self._release(now, rules, prefs, wall, out)
        return out

    def on_estimate(self, estimate: ev.WaitEstimated, *, at: datetime, event_id: str,
                    rules: Rules, prefs: dict[str, Preferences], wall: datetime) -> Outcome:
        """Take flow's latest estimate for a waiting visit."""
        out = Outcome()
        visit_id = estimate.visit_id
        if visit_id in self.floor.closed_ids and visit_id not in self.floor.visits:
            return out  # made before the visit ended, read after
        now = self._advance(at)
        notes = self._notes(visit_id, estimate.ticket_code, estimate.provider_id)
        new = Estimate(at, estimate.wait_minutes, estimate.low, estimate.high, estimate.position)
        if notes.estimate is not None and notes.estimate.at > at:
            return out  # an older estimate read late
        notes.estimate = new
        if notes.told is None:
            notes.told = new  # what the ticket and the screen showed them first
        visit = self.floor.visits.get(visit_id)
        waiting = visit is not None and visit.status is VisitStatus.WAITING
        preference = prefs.get(visit_id, NO_CONTACT)
        if waiting:
            pending = notes.pending
            if pending is not None and pending.reason == "delay" and at >= pending.armed_at:
                pending.fresh = True
            slip = (new.expected_call() - notes.told.expected_call()).total_seconds() / 60.0
            if pending is None and slip >= rules.warn_after_growth_minutes and \
                    rules.delay_warnings:
                if preference.reachable and preference.delay_updates:
                    due = _settled(at, wall, rules)
                    notes.pending = Pending("estimate", (event_id,), at, due,
                                            _expires(at, due, rules))
                else:
                    out.decisions.append(("delay_warning", _quiet_reason(preference)))
            self._consider_come_back(notes, new, event_id, now, preference, rules, wall, out)
        self._release(now, rules, prefs, wall, out)
        return out

    def _consider_come_back(self, notes: PatientNotes, estimate: Estimate, trigger: str,
                            now: datetime, preference: Preferences, rules: Rules,
                            wall: datetime, out: Outcome) -> None:
        """Call a patient waiting outside back once their range reaches the lead time."""
        if not (rules.wait_anywhere and preference.wait_anywhere) or notes.come_back_sent \
                or estimate.low > rules.come_back_lead_minutes:
            return
        notes.come_back_sent = True
        if not preference.reachable:
            out.decisions.append(("come_back_now", _quiet_reason(preference)))
        elif _stale(estimate.at, wall, rules):
            out.decisions.append(("come_back_now", "stale"))
        else:
            self._send(notes, "come_back_now", (trigger,), now, preference, rules, estimate,
                       out)

    def tick(self, *, now: datetime, rules: Rules, prefs: dict[str, Preferences]) -> Outcome:
        """The clock moved on (no event): send what has settled or left its window, and
        match ready rooms again once a delay has run out."""
        out = Outcome()
        now = self._advance(now)
        self._refresh_alerts(now, rules, prefs, now, out)
        self._release(now, rules, prefs, now, out)
        return out

    def next_due(self) -> datetime | None:
        """When ``tick`` next has something to do (None: nothing is waiting)."""
        dues = [n.pending.due_at for n in self.patients.values() if n.pending is not None]
        if self.clock is not None and any(
                r.state is RoomState.READY for r in self.floor.rooms.values()):
            dues.extend(d.until for d in self.floor.delays.values() if d.until > self.clock)
        return min(dues, default=None)

    def housekeeping(self, now: datetime) -> None:
        """Forget estimates of visits the floor never showed (their arrival was never read)."""
        for visit_id in [v for v, n in self.patients.items()
                         if v not in self.floor.visits
                         and (n.estimate is None or now - n.estimate.at > ORPHAN_NOTES)]:
            del self.patients[visit_id]

    # ------------------------------------------------------------ floor

    def _apply_to_floor(self, payload: ev.Payload, at: datetime, event_id: str) -> None:
        floor = self.floor
        match payload:
            case ev.PatientArrived():
                floor.arrive(at=at, visit_id=payload.visit_id, ticket_code=payload.ticket_code,
                             provider_id=payload.provider_id, visit_type=payload.visit_type,
                             scheduled_at=payload.scheduled_at, priority=payload.priority,
                             event_id=event_id)
            case ev.RoomReady():
                floor.room_ready(at=at, room_id=payload.room_id, event_id=event_id)
            case ev.RoomOutOfService():
                floor.room_out_of_service(at=at, room_id=payload.room_id, event_id=event_id)
            case ev.PatientRoomed():
                floor.patient_roomed(at=at, visit_id=payload.visit_id, room_id=payload.room_id,
                                     event_id=event_id)
            case ev.ProviderIn():
                floor.provider_in(at=at, visit_id=payload.visit_id,
                                  provider_id=payload.provider_id, event_id=event_id)
            case ev.PatientCheckedOut():
                floor.checked_out(at=at, visit_id=payload.visit_id, event_id=event_id)
            case ev.ArrivalCancelled():
                floor.cancelled(at=at, visit_id=payload.visit_id, reason=payload.reason,
                                event_id=event_id)
            case ev.DelayAnnounced():
                floor.delay_announced(at=at, provider_id=payload.provider_id,
                                      minutes=payload.minutes, reason=payload.reason,
                                      event_id=event_id)
            case ev.DelayCleared():
                floor.delay_announced(at=at, provider_id=payload.provider_id, minutes=0,
                                      event_id=event_id)
            case ev.ActionUndone():
                floor.action_undone(at=at, undone_event_id=payload.undone_event_id,
                                    event_id=event_id)
            case ev.AppointmentScheduled() | ev.PatientNoShow():
                pass
            case _:
                raise NotApplicable(f"not a floor event: {type(payload).__name__}")

    def _settle_visits(self, out: Outcome) -> None:
        """Patients no longer waiting are never messaged: drop what was queued for them."""
        for visit_id in list(self.patients):
            notes = self.patients[visit_id]
            visit = self.floor.visits.get(visit_id)
            if visit is not None and visit.status is VisitStatus.WAITING:
                continue
            if visit is None and visit_id not in self.floor.closed_ids:
                continue  # not on the floor yet: its arrival is still to be read
            if notes.pending is not None:
                out.decisions.append(("delay_warning", "roomed" if visit else "left"))
                notes.pending = None
            if notes.intents:
                out.cancelled.append((visit_id, tuple(notes.intents)))
                notes.intents.clear()
            if visit is None:
                del self.patients[visit_id]

    # ------------------------------------------------------------ delays

    def _arm_delay(self, delay: ev.DelayAnnounced, at: datetime, event_id: str, rules: Rules,
                   prefs: dict[str, Preferences], wall: datetime, out: Outcome) -> None:
        if not rules.delay_warnings or delay.minutes < rules.announce_delays_from_minutes:
            return
        for visit in self.floor.waiting():
            if delay.provider_id is not None and visit.provider_id != delay.provider_id:
                continue
            preference = prefs.get(visit.visit_id, NO_CONTACT)
            if not (preference.reachable and preference.delay_updates):
                out.decisions.append(("delay_warning", _quiet_reason(preference)))
                continue
            notes = self._notes(visit.visit_id, visit.ticket_code, visit.provider_id)
            before = notes.pending
            triggers = (*(before.trigger_ids if before else ()), event_id)
            due = _settled(at, wall, rules)
            if before and before.reason == "estimate":
                due = min(before.due_at, due)
            notes.pending = Pending(
                "delay", triggers, at, due, _expires(at, due, rules),
                delay.minutes, delay.provider_id,
                fresh=notes.estimate is not None and notes.estimate.at >= at,
            )

    def _drop_delay_warnings(self, provider_id: str | None) -> None:
        """A delay cleared (or set to 0) before it was told: nobody needs to hear of it."""
        for notes in self.patients.values():
            pending = notes.pending
            if pending is not None and pending.reason == "delay" and \
                    pending.delay_provider == provider_id:
                notes.pending = None

    # ----------------------------------------------------------- release

    def _release(self, now: datetime, rules: Rules, prefs: dict[str, Preferences],
                 wall: datetime, out: Outcome) -> None:
        for notes in self.patients.values():
            pending = notes.pending
            if pending is None:
                continue
            if not (pending.fresh or pending.due_at <= now):
                continue
            visit = self.floor.visits.get(notes.visit_id)
            preference = prefs.get(notes.visit_id, NO_CONTACT)
            drop: str | None = None
            if visit is None or visit.status is not VisitStatus.WAITING:
                drop = "roomed"
            elif not (preference.reachable and preference.delay_updates) or \
                    not rules.delay_warnings:
                drop = _quiet_reason(preference)
            elif wall > pending.expires_at:
                drop = "stale"
            if drop is not None:
                out.decisions.append(("delay_warning", drop))
                notes.pending = None
                continue
            window_ends = (notes.last_message_at + timedelta(
                minutes=rules.min_minutes_between_messages)
                if notes.last_message_at is not None else None)
            if window_ends is not None and now < window_ends:
                # held: goes out when the window ends, if it is still true then
                pending.due_at = window_ends
                pending.fresh = False
                pending.expires_at = max(pending.expires_at, window_ends + timedelta(
                    minutes=rules.max_message_age_minutes))
                out.decisions.append(("delay_warning", "held"))
                continue
            estimate = self._estimate_to_tell(notes, pending, now)
            if pending.reason == "estimate" and (
                    estimate is None or notes.told is None or
                    (estimate.expected_call() - notes.told.expected_call()).total_seconds() / 60
                    < rules.warn_after_growth_minutes):
                out.decisions.append(("delay_warning", "recovered"))
                notes.pending = None
                continue
            notes.pending = None
            self._send(notes, "delay_warning", pending.trigger_ids, now, preference, rules,
                       estimate, out, pending)

    def _estimate_to_tell(self, notes: PatientNotes, pending: Pending,
                          now: datetime) -> Estimate | None:
        """The estimate a warning quotes: flow's latest, aged to ``now``. A delay whose
        fresh estimate never came (flow saw no change, or is behind) is at least the
        delay itself."""
        if notes.estimate is None:
            if pending.reason != "delay":
                return None
            return Estimate(now, pending.delay_minutes, pending.delay_minutes,
                            pending.delay_minutes + 10)
        estimate = notes.estimate.aged(now)
        if pending.reason == "delay" and notes.estimate.at < pending.armed_at:
            width = estimate.high - estimate.low
            low = max(estimate.low, float(pending.delay_minutes))
            estimate = Estimate(now, max(estimate.wait, low), low, max(estimate.high, low + width),
                                estimate.position)
        return estimate

    def _send(self, notes: PatientNotes, kind: PatientKind, triggers: tuple[str, ...],
              now: datetime, preference: Preferences, rules: Rules, estimate: Estimate | None,
              out: Outcome, pending: Pending | None = None) -> None:
        assert preference.channel is not None
        subject, text = compose(kind, rules, notes, estimate, pending, self._room_of(notes))
        message = Message(
            notification_id=notification_id(self.clinic_id, notes.visit_id, kind, triggers),
            visit_id=notes.visit_id, ticket_code=notes.ticket_code, kind=kind,
            subject=subject, text=text, trigger_ids=triggers, decided_at=now,
            channel=preference.channel,
        )
        out.messages.append(message)
        out.decisions.append((kind, "queued"))
        notes.last_message_at = now
        if kind == "delay_warning" and estimate is not None:
            notes.told = estimate
        notes.intents = [*notes.intents, message.notification_id][-INTENTS_PER_VISIT:]

    def _room_of(self, notes: PatientNotes) -> str | None:
        return next((room for room, alert in self.alerts.items()
                     if alert.visit_id == notes.visit_id), None)

    # ------------------------------------------------------------ alerts

    def desired_alerts(self, now: datetime, rules: Rules) -> dict[str, Visit]:
        """Ready rooms (longest ready first) matched with who should be roomed next."""
        if not rules.nurse_alerts:
            return {}
        floor = self.floor
        ready = sorted((r for r in floor.rooms.values() if r.state is RoomState.READY),
                       key=lambda r: (r.since, r.room_id))
        if not ready:
            return {}
        roomed: dict[str | None, int] = {}
        for visit in floor.visits.values():
            if visit.status is VisitStatus.ROOMED:
                roomed[visit.provider_id] = roomed.get(visit.provider_id, 0) + 1
        queue = floor.waiting()
        taken: set[str] = set()
        matched: dict[str, Visit] = {}
        for room in ready:
            for visit in queue:
                if visit.visit_id in taken or not self._can_take(visit, roomed, now, rules):
                    continue
                matched[room.room_id] = visit
                taken.add(visit.visit_id)
                roomed[visit.provider_id] = roomed.get(visit.provider_id, 0) + 1
                break
        return matched

    def _can_take(self, visit: Visit, roomed: dict[str | None, int], now: datetime,
                  rules: Rules) -> bool:
        delay = self.floor.delay_for(visit.provider_id)
        if delay is not None and delay.until > now:
            return False  # running late: not ready for another patient
        if visit.provider_id is None:
            return True  # first available provider
        return roomed.get(visit.provider_id, 0) < rules.patients_roomed_per_provider

    def _refresh_alerts(self, at: datetime, rules: Rules, prefs: dict[str, Preferences],
                        wall: datetime, out: Outcome) -> None:
        now = self.clock or at
        page = not _stale(at, wall, rules)
        desired = self.desired_alerts(now, rules)
        for room_id, alert in list(self.alerts.items()):
            visit = desired.get(room_id)
            if visit is not None and visit.visit_id == alert.visit_id:
                continue
            room = self.floor.rooms.get(room_id)
            reason: WithdrawReason
            if not rules.nurse_alerts:
                reason = "alerts_off"
            elif room is None or room.state is RoomState.OCCUPIED:
                reason = "room_taken"
            elif room.state is not RoomState.READY:
                reason = "room_unavailable"
            elif visit is not None:
                reason = "next_patient_changed"
            else:
                reason = "nobody_to_room"
            del self.alerts[room_id]
            out.withdrawn.append((alert, reason, page))
        for room_id, visit in desired.items():
            if room_id in self.alerts:
                continue
            room = self.floor.rooms[room_id]
            alert = Alert(
                alert_id=_digest("alert", self.clinic_id, room_id, room.since.isoformat(),
                                 visit.visit_id),
                room_id=room_id, visit_id=visit.visit_id, ticket_code=visit.ticket_code,
                provider_id=visit.provider_id,
                text=f"{room_label(room_id)} ready: next is {visit.ticket_code} for "
                     f"{provider_label(visit.provider_id, rules)}.",
                raised_at=now,
            )
            self.alerts[room_id] = alert
            out.raised.append((alert, page))
            self._ready_for_you(visit, alert, rules, prefs, page, out)

    def _ready_for_you(self, visit: Visit, alert: Alert, rules: Rules,
                       prefs: dict[str, Preferences], fresh: bool, out: Outcome) -> None:
        preference = prefs.get(visit.visit_id, NO_CONTACT)
        notes = self._notes(visit.visit_id, visit.ticket_code, visit.provider_id)
        if not (rules.wait_anywhere and preference.wait_anywhere) or notes.ready_sent:
            return
        notes.ready_sent = notes.come_back_sent = True
        if not preference.reachable:
            out.decisions.append(("ready_for_you", _quiet_reason(preference)))
        elif not fresh:
            out.decisions.append(("ready_for_you", "stale"))
        else:
            self._send(notes, "ready_for_you", (alert.alert_id,), alert.raised_at, preference,
                       rules, None, out)

    # ----------------------------------------------------------- helpers

    def _notes(self, visit_id: str, ticket_code: str, provider_id: str | None) -> PatientNotes:
        notes = self.patients.get(visit_id)
        if notes is None:
            notes = self.patients[visit_id] = PatientNotes(visit_id, ticket_code, provider_id)
        return notes

    def _advance(self, at: datetime) -> datetime:
        self.clock = at if self.clock is None else max(self.clock, at)
        return self.clock

    # ---------------------------------------------------------- snapshot

    def to_dict(self) -> dict[str, Any]:
        """Everything needed to carry on where the clinic was (JSON-ready)."""
        return {
            "v": 1,
            "floor": dump_flow(self._flow),
            "patients": [_dump_notes(n) for n in self.patients.values()],
            "alerts": [a.to_dict() for a in self.alerts.values()],
            "recent": list(self.recent),
            "clock": _t(self.clock),
        }

    @classmethod
    def from_dict(cls, document: dict[str, Any]) -> ClinicNotifier:
        if document.get("v") != 1:
            raise ValueError(f"unknown notifier snapshot version {document.get('v')!r}")
        floor = load_flow(document["floor"])
        notifier = cls(floor.clinic_id)
        notifier._flow = floor
        for values in document["patients"]:
            notes = _load_notes(values)
            notifier.patients[notes.visit_id] = notes
        for values in document["alerts"]:
            alert = Alert.from_dict(values)
            notifier.alerts[alert.room_id] = alert
        notifier.recent.extend(document["recent"])
        notifier.clock = _dt(document["clock"])
        return notifier


def _quiet_reason(preference: Preferences) -> str:
    if preference.opted_out:
        return "opted_out"
    if preference.channel is None:
        return "no_contact"
    return "declined"  # has a contact, but not for this kind of message


def _settled(at: datetime, wall: datetime, rules: Rules) -> datetime:
    """When a warning armed by a trigger made at ``at`` and read at ``wall`` stops waiting
    for the other half of its story. The wait counts from the reading: the other half
    comes on another topic, read by another consumer, so a notifier catching up on
    old events (``at`` long past) still gives it ``settle_seconds`` to arrive. A trigger
    already too old to be news when read is not waited for: it is dropped at once."""
    settle = timedelta(seconds=rules.settle_seconds)
    return at + settle if _stale(at, wall, rules) else max(at, wall) + settle


def _expires(at: datetime, due: datetime, rules: Rules) -> datetime:
    """When a warning armed by a trigger made at ``at`` is no longer news: its age limit,
    but never before its settle time ends (a trigger read just inside the limit would
    otherwise always be dropped while it waits)."""
    return max(at + timedelta(minutes=rules.max_message_age_minutes), due)


def _stale(at: datetime, wall: datetime, rules: Rules) -> bool:
    return wall - at > timedelta(minutes=rules.max_message_age_minutes)


# ---------------------------------------------------------------- texts


def provider_label(provider_id: str | None, rules: Rules) -> str:
    """How patients and nurses know a provider: ``dr-lee`` reads "Dr. Lee"."""
    if provider_id is None:
        return "the first available provider"
    if provider_id in rules.provider_names:
        return rules.provider_names[provider_id]
    parts = [p for p in re.split(r"[-_.\s]+", provider_id) if p]
    if parts and parts[0].lower() in ("dr", "doctor"):
        return "Dr. " + " ".join(p.capitalize() for p in parts[1:]) if parts[1:] else "Dr."
    return " ".join(p.capitalize() for p in parts) or provider_id


def room_label(room_id: str) -> str:
    """``room-4`` reads "Room 4"; other ids are kept as they are."""
    match = re.fullmatch(r"(?i)room[-_ ]?(.+)", room_id)
    return f"Room {match.group(1) if match else room_id}"


def format_range(low: float, high: float) -> str:
    """A range to the nearest five minutes, as a patient reads it: "30–40 minutes"."""
    lo = max(0, math.floor(low / 5 + 0.5) * 5)
    hi = max(lo + 5, math.floor(high / 5 + 0.5) * 5)
    if lo == 0:
        return f"up to {hi} minutes"
    return f"{lo}\u2013{hi} minutes"


def compose(kind: PatientKind, rules: Rules, notes: PatientNotes, estimate: Estimate | None,
            pending: Pending | None, room_id: str | None) -> tuple[str, str]:
    """(subject, text) of a patient message. No names: a ticket code at most."""
    clinic = rules.clinic_name
    subject_prefix = f"{clinic}: " if clinic else ""
    wait = format_range(estimate.low, estimate.high) if estimate is not None else None
    if kind == "delay_warning":
        assert wait is not None
        subject = "your wait is longer"
        if pending is not None and pending.reason == "delay":
            who = (provider_label(pending.delay_provider, rules)
                   if pending.delay_provider is not None else clinic or "The clinic")
            text = (f"{who} is running about {pending.delay_minutes} minutes behind; "
                    f"your new estimated wait is {wait}.")
        else:
            who = (provider_label(notes.provider_id, rules) if notes.provider_id
                   else clinic or "The clinic")
            text = f"{who} is running behind; your new estimated wait is {wait}."
    elif kind == "come_back_now":
        assert estimate is not None and wait is not None
        subject = "please come back now"
        lead = "you are next" if estimate.position == 1 else "you will be called soon"
        text = (f"Please come back now, {lead} (ticket {notes.ticket_code}); "
                f"estimated wait {wait}.")
    else:
        subject = "we are ready for you"
        where = f" {room_label(room_id)} is ready." if room_id else ""
        text = f"We are ready for you (ticket {notes.ticket_code}): please come in now.{where}"
    if clinic and kind == "delay_warning" and not text.startswith(clinic):
        text = f"{clinic}: {text}"
    return f"{subject_prefix}{subject}", text


# --------------------------------------------------------- ids and times


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:24]


def notification_id(clinic_id: str, visit_id: str, kind: str,
                    trigger_ids: tuple[str, ...]) -> str:
    """The id a message has whenever the same events trigger it (sorted, so the order in
    which a delay and an estimate were read does not matter)."""
    return "n-" + _digest(clinic_id, visit_id, kind, *sorted(trigger_ids))


def page_id(alert: Alert, action: Literal["raised", "withdrawn"]) -> str:
    """The notification id of a pager webhook for an alert."""
    return "p-" + _digest(alert.alert_id, action)


def backoff_seconds(attempt: int, base: float, cap: float) -> float:
    """Wait before retry number ``attempt`` (1-based): base, 2x, 4x, ... up to ``cap``."""
    return float(min(cap, base * (2 ** max(0, attempt - 1))))


def contact_expiry(now: datetime, timezone: str) -> datetime:
    """When contact details entered at ``now`` are deleted: the clinic's next local
    midnight, and never sooner than an hour (a late patient keeps theirs for the visit)."""
    zone = ZoneInfo(timezone)
    local = now.astimezone(zone)
    midnight = datetime.combine(local.date() + timedelta(days=1), datetime.min.time(), zone)
    return max(midnight.astimezone(UTC), now + timedelta(hours=1))


# -------------------------------------------------------------- snapshot


def _t(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _dt(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _dump_estimate(e: Estimate | None) -> list[Any] | None:
    return None if e is None else [e.at.isoformat(), e.wait, e.low, e.high, e.position]


def _load_estimate(values: list[Any] | None) -> Estimate | None:
    if values is None:
        return None
    at, wait, low, high, position = values
    return Estimate(datetime.fromisoformat(at), wait, low, high, position)


def _dump_notes(n: PatientNotes) -> dict[str, Any]:
    p = n.pending
    return {
        "visit_id": n.visit_id, "ticket_code": n.ticket_code, "provider_id": n.provider_id,
        "told": _dump_estimate(n.told), "estimate": _dump_estimate(n.estimate),
        "last_message_at": _t(n.last_message_at), "come_back_sent": n.come_back_sent,
        "ready_sent": n.ready_sent, "intents": n.intents,
        "pending": None if p is None else {
            "reason": p.reason, "triggers": list(p.trigger_ids), "armed_at": _t(p.armed_at),
            "due_at": _t(p.due_at), "expires_at": _t(p.expires_at),
            "delay_minutes": p.delay_minutes, "delay_provider": p.delay_provider,
            "fresh": p.fresh,
        },
    }


def _load_notes(d: dict[str, Any]) -> PatientNotes:
    p = d["pending"]
    pending = None if p is None else Pending(
        p["reason"], tuple(p["triggers"]), datetime.fromisoformat(p["armed_at"]),
        datetime.fromisoformat(p["due_at"]), datetime.fromisoformat(p["expires_at"]),
        p["delay_minutes"], p["delay_provider"], p["fresh"])
    return PatientNotes(
        d["visit_id"], d["ticket_code"], d["provider_id"], _load_estimate(d["told"]),
        _load_estimate(d["estimate"]), _dt(d["last_message_at"]), pending,
        d["come_back_sent"], d["ready_sent"], list(d["intents"]))
