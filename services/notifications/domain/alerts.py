"""Nurse room-ready alerts: each ready room matched with who should be roomed next. Pure.

Each ready room (longest ready first) is matched with the next waiting patient in queue
order (urgent first, then appointment or arrival time) whose provider can take them: not
running late, and fewer than ``patients_roomed_per_provider`` of their patients already
roomed and waiting for them. Two ready rooms get two different patients. An alert is
withdrawn when the room is taken or who is next changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from services.notifications.domain.ids import digest
from services.notifications.domain.rules import Rules
from shared.floor.model import Clinic, RoomState, Visit, VisitStatus

WithdrawReason = Literal["room_taken", "room_unavailable", "next_patient_changed",
                         "nobody_to_room", "alerts_off"]


@dataclass(frozen=True, slots=True)
class Alert:
    """A room-ready alert for the nurses, in ids (its words are ``texts.alert_text``, made
    when it is shown or paged). ``raised_by`` names what raised it: the event whose
    applying did, or for the clock's tick ``tick|`` and the last event applied before it;
    None for one stored by a version before it was kept."""

    alert_id: str
    room_id: str
    visit_id: str
    ticket_code: str
    provider_id: str | None
    raised_at: datetime
    raised_by: str | None = None

    def to_dict(self) -> dict[str, Any]:
        kept = {"alert_id": self.alert_id, "room_id": self.room_id, "visit_id": self.visit_id,
                "ticket_code": self.ticket_code, "provider_id": self.provider_id,
                "raised_at": self.raised_at.isoformat()}
        return kept if self.raised_by is None else {**kept, "raised_by": self.raised_by}

    @property
    def raise_id(self) -> str:
        """This raising of the alert. ``alert_id`` names a ready room matched with a
        patient, and the same match can be withdrawn and raised again (the patient's
        provider ran late and the delay ended, the room still ready; or twice in one
        instant, as a batch of facts is applied): each raising is news for the nurses,
        with events and pages of its own, not a repeat of the first (whose ids a consumer
        or the store would take as the same and drop). Made of what raised it, never of
        the clock, so the same events raise it with the same ids again (a rebuild from
        Kafka). An alert stored before ``raised_by`` was kept keeps the ids it was raised
        with (the alert's own), so its withdrawal pairs with its raising."""
        if self.raised_by is None:
            return self.alert_id
        return digest(self.alert_id, self.raised_by)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Alert:
        """From ``to_dict`` (a ``text`` kept by a version before is not read)."""
        return cls(data["alert_id"], data["room_id"], data["visit_id"], data["ticket_code"],
                   data["provider_id"], datetime.fromisoformat(data["raised_at"]),
                   data.get("raised_by"))


def page_id(alert: Alert, action: Literal["raised", "withdrawn"]) -> str:
    """The notification id of a pager webhook for one raising of an alert."""
    return "p-" + digest(alert.raise_id, action)


class NurseAlerts:
    """The alerts standing at one clinic, by room."""

    def __init__(self, clinic_id: str) -> None:
        self.clinic_id = clinic_id
        self.standing: dict[str, Alert] = {}  # room_id -> active alert

    def desired(self, floor: Clinic, now: datetime, rules: Rules) -> dict[str, Visit]:
        """Ready rooms (longest ready first) matched with who should be roomed next."""
        if not rules.nurse_alerts:
            return {}
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
                if visit.visit_id in taken or not _can_take(floor, visit, roomed, now, rules):
                    continue
                matched[room.room_id] = visit
                taken.add(visit.visit_id)
                roomed[visit.provider_id] = roomed.get(visit.provider_id, 0) + 1
                break
        return matched

    def refresh(self, floor: Clinic, now: datetime, rules: Rules, trigger: str
                ) -> tuple[list[tuple[Alert, WithdrawReason]], list[tuple[Alert, Visit]]]:
        """Match the ready rooms again: the alerts withdrawn (with why) and the alerts
        raised (with the visit each is for), in that order. ``trigger``: what made it
        match again (``Alert.raised_by``)."""
        desired = self.desired(floor, now, rules)
        withdrawn: list[tuple[Alert, WithdrawReason]] = []
        for room_id, alert in list(self.standing.items()):
            visit = desired.get(room_id)
            if visit is not None and visit.visit_id == alert.visit_id:
                continue
            room = floor.rooms.get(room_id)
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
            del self.standing[room_id]
            withdrawn.append((alert, reason))
        raised: list[tuple[Alert, Visit]] = []
        for room_id, visit in desired.items():
            if room_id in self.standing:
                continue
            room = floor.rooms[room_id]
            alert = Alert(
                alert_id=digest("alert", self.clinic_id, room_id, room.since.isoformat(),
                                visit.visit_id),
                room_id=room_id, visit_id=visit.visit_id, ticket_code=visit.ticket_code,
                provider_id=visit.provider_id, raised_at=now, raised_by=trigger,
            )
            self.standing[room_id] = alert
            raised.append((alert, visit))
        return withdrawn, raised

    def delays_ending(self, floor: Clinic, after: datetime) -> list[datetime]:
        """When a provider's delay ends while a room stands ready (the match may change
        then, with no event to say so)."""
        if not any(r.state is RoomState.READY for r in floor.rooms.values()):
            return []
        return [d.until for d in floor.delays.values() if d.until > after]


def _can_take(floor: Clinic, visit: Visit, roomed: dict[str | None, int], now: datetime,
              rules: Rules) -> bool:
    delay = floor.delay_for(visit.provider_id)
    if delay is not None and delay.until > now:
        return False  # running late: not ready for another patient
    if visit.provider_id is None:
        return True  # first available provider
    return roomed.get(visit.provider_id, 0) < rules.patients_roomed_per_provider
