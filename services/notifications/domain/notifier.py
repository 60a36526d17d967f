"""One clinic's notifier: its floor, what each waiting patient was told, and the nurse
alerts standing. Pure: no I/O, no clock reads (every call takes the time).

The floor is the one floor model flow keeps too (``shared.floor``): each floor fact goes
through ``ClinicFlow.apply``, so both services see the same clinic for the same events.
On top of it the notifier decides who to tell what (``warnings``) and which room to
offer the nurses for whom (``alerts``), and says what to do in an ``Outcome``.
"""

from __future__ import annotations

from collections import deque
from datetime import datetime
from typing import Any

from services.notifications.domain.alerts import Alert, NurseAlerts
from services.notifications.domain.feedback import feedback_request
from services.notifications.domain.notes import PatientNotes
from services.notifications.domain.outcome import Outcome
from services.notifications.domain.rules import NO_CONTACT, Preferences, Rules, stale
from services.notifications.domain.warnings import WaitingPatients
from shared import events as ev
from shared.floor.clinic_flow import ClinicFlow
from shared.floor.model import Clinic
from shared.floor.snapshot import dump_flow, load_flow

RECENT_EVENTS = 500  # floor event ids remembered per clinic: a re-sent fact changes nothing
SNAPSHOT_VERSION = 1


class ClinicNotifier:
    """One clinic's floor plus what each patient was told and the alerts standing."""

    def __init__(self, clinic_id: str) -> None:
        self.flow = ClinicFlow(clinic_id)
        self.patients = WaitingPatients(clinic_id)
        self.nurse_alerts = NurseAlerts(clinic_id)
        self.recent: deque[str] = deque(maxlen=RECENT_EVENTS)
        self.clock: datetime | None = None  # the latest time seen (events and ticks)

    @property
    def clinic_id(self) -> str:
        return self.flow.clinic_id

    @property
    def floor(self) -> Clinic:
        return self.flow.clinic

    @property
    def alerts(self) -> dict[str, Alert]:
        """The alerts standing, by room."""
        return self.nurse_alerts.standing

    # ----------------------------------------------------------- inputs

    def on_floor(self, payload: ev.Payload, *, at: datetime, event_id: str, rules: Rules,
                 prefs: dict[str, Preferences], wall: datetime) -> Outcome:
        """Apply one floor fact made at ``at`` and read at ``wall``. Raises
        ``NotApplicable`` when the floor cannot take it."""
        out = Outcome()
        if event_id and event_id in self.recent:
            return out  # the same fact sent twice
        leaving = (self.floor.visits.get(payload.visit_id)
                   if isinstance(payload, ev.PatientCheckedOut) else None)
        self.flow.apply(payload, at, event_id)
        if event_id:
            self.recent.append(event_id)
        now = self._advance(at)
        patients = self.patients
        if isinstance(payload, ev.PatientArrived):
            patients.arrived(payload, event_id=event_id, now=now, rules=rules, prefs=prefs,
                             wall=wall, out=out)
        elif isinstance(payload, ev.DelayAnnounced) and payload.minutes > 0:
            patients.delay_announced(payload, at=at, event_id=event_id, floor=self.floor,
                                     rules=rules, prefs=prefs, wall=wall, out=out)
        elif isinstance(payload, ev.DelayAnnounced | ev.DelayCleared):
            patients.delay_withdrawn(payload.provider_id)
        patients.settle_visits(self.floor, out)
        if leaving is not None and leaving.visit_id not in self.floor.visits:
            self._ask_for_feedback(leaving.visit_id, leaving.ticket_code, event_id, at,
                                   rules, prefs, wall, out)
        self._refresh_alerts(at, rules, prefs, wall, out, trigger=event_id)
        patients.release(self.floor, now, rules, prefs, wall, out)
        return out

    def on_estimate(self, estimate: ev.WaitEstimated, *, at: datetime, event_id: str,
                    rules: Rules, prefs: dict[str, Preferences], wall: datetime) -> Outcome:
        """Take flow's latest estimate for a waiting visit."""
        out = Outcome()
        visit_id = estimate.visit_id
        if visit_id in self.floor.closed_ids and visit_id not in self.floor.visits:
            return out  # made before the visit ended, read after
        now = self._advance(at)
        self.patients.estimated(estimate, at=at, event_id=event_id, floor=self.floor,
                                now=now, rules=rules, prefs=prefs, wall=wall, out=out)
        return out

    def tick(self, *, now: datetime, rules: Rules, prefs: dict[str, Preferences]) -> Outcome:
        """The clock moved on (no event): send what has settled or left its window, and
        match ready rooms again once a delay has run out."""
        out = Outcome()
        now = self._advance(now)
        last = self.recent[-1] if self.recent else ""
        self._refresh_alerts(now, rules, prefs, now, out, trigger=f"tick|{last}")
        self.patients.recall(self.floor, now, rules, prefs, now, out)
        self.patients.release(self.floor, now, rules, prefs, now, out)
        return out

    def recall(self, *, now: datetime, rules: Rules, prefs: dict[str, Preferences]) -> Outcome:
        """Call back the patients waiting outside whose range already reached the lead
        time (a contact given after their estimate was read): after every batch and tick."""
        out = Outcome()
        self.patients.recall(self.floor, self.clock or now, rules, prefs, now, out)
        return out

    def visit_status(self, visit_id: str) -> str | None:
        """Where a visit stands on this clinic's floor: its status while open (waiting,
        roomed, with_provider), "ended" for one that ended lately, None for one the
        floor does not know (never arrived here, or ended long ago)."""
        visit = self.floor.visits.get(visit_id)
        if visit is not None:
            return visit.status.value
        return "ended" if visit_id in self.floor.closed_ids else None

    def next_due(self) -> datetime | None:
        """When ``tick`` next has something to do (None: nothing is waiting)."""
        dues = self.patients.next_due()
        if self.clock is not None:
            dues.extend(self.nurse_alerts.delays_ending(self.floor, self.clock))
        return min(dues, default=None)

    def housekeeping(self, now: datetime) -> None:
        """Forget estimates of visits the floor never showed (their arrival was never read)."""
        self.patients.forget_orphans(self.floor, now)

    # ----------------------------------------------------------- helpers

    def _refresh_alerts(self, at: datetime, rules: Rules, prefs: dict[str, Preferences],
                        wall: datetime, out: Outcome, trigger: str) -> None:
        page = not stale(at, wall, rules)
        withdrawn, raised = self.nurse_alerts.refresh(self.floor, self.clock or at, rules,
                                                      trigger)
        out.withdrawn.extend((alert, reason, page) for alert, reason in withdrawn)
        for alert, visit in raised:
            out.raised.append((alert, page))
            self.patients.ready_for_you(visit, alert, rules, prefs, page, out)

    def _ask_for_feedback(self, visit_id: str, ticket_code: str, event_id: str,
                          at: datetime, rules: Rules, prefs: dict[str, Preferences],
                          wall: datetime, out: Outcome) -> None:
        """The visit was checked out: one message asking how it went (``feedback``)."""
        message, outcome = feedback_request(
            self.clinic_id, visit_id, ticket_code, trigger_id=event_id, at=at, wall=wall,
            rules=rules, preference=prefs.get(visit_id, NO_CONTACT))
        if message is not None:
            out.messages.append(message)
        out.decisions.append(("feedback_request", outcome))

    def _advance(self, at: datetime) -> datetime:
        self.clock = at if self.clock is None else max(self.clock, at)
        return self.clock

    # ---------------------------------------------------------- snapshot

    def to_dict(self) -> dict[str, Any]:
        """Everything needed to carry on where the clinic was (JSON-ready)."""
        return {
            "v": SNAPSHOT_VERSION,
            "floor": dump_flow(self.flow),
            "patients": [n.to_dict() for n in self.patients.notes.values()],
            "alerts": [a.to_dict() for a in self.alerts.values()],
            "recent": list(self.recent),
            "clock": None if self.clock is None else self.clock.isoformat(),
        }

    @classmethod
    def from_dict(cls, document: dict[str, Any]) -> ClinicNotifier:
        if document.get("v") != SNAPSHOT_VERSION:
            raise ValueError(f"unknown notifier snapshot version {document.get('v')!r}")
        flow = load_flow(document["floor"])
        notifier = cls(flow.clinic_id)
        notifier.flow = flow
        for values in document["patients"]:
            notes = PatientNotes.from_dict(values)
            notifier.patients.notes[notes.visit_id] = notes
        for values in document["alerts"]:
            alert = Alert.from_dict(values)
            notifier.alerts[alert.room_id] = alert
        notifier.recent.extend(document["recent"])
        clock = document["clock"]
        notifier.clock = None if clock is None else datetime.fromisoformat(clock)
        return notifier
