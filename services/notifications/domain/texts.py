"""What patients and nurses read: the clinic's own names for its providers and rooms, wait
ranges, message texts. No names of patients, ever: a ticket code at most. Pure.

What the notifier decides is kept with ids only (a ``Wording``: the kind of message, the
ticket, whose delay, the range, the room); the words are made from it when the message is
sent or shown (``render``), with the clinic's ``Names`` as configured then: a name changed
in the configuration reaches the next message, and nothing stored ever holds a name.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, time
from typing import Any
from zoneinfo import ZoneInfo

from services.notifications.domain.notes import PatientKind

UTC_ZONE = ZoneInfo("UTC")


@dataclass(frozen=True, slots=True)
class Names:
    """How one clinic's people and places are called, and its clock: the clinic's name
    (``""``: none), its providers' and rooms' display names by id, its IANA zone."""

    clinic: str = ""
    providers: Mapping[str, str] = field(default_factory=dict)
    rooms: Mapping[str, str] = field(default_factory=dict)
    zone: ZoneInfo = UTC_ZONE

    def provider(self, provider_id: str | None) -> str:
        """A provider as patients and nurses know them: the configured name, else read from
        the id (``dr-lee`` reads "Dr. Lee"); nobody in particular is "the first available
        provider"."""
        if provider_id is None:
            return "the first available provider"
        return self.providers.get(provider_id) or _read_id(provider_id)

    def room(self, room_id: str) -> str:
        """A room as nurses and patients know it: the configured name ("Exam 5"), else
        read from the id (``room-4`` and ``r4`` read "Room 4"; others "Room <id>")."""
        named = self.rooms.get(room_id)
        if named:
            return named
        match = (re.fullmatch(r"(?i)room[-_ ]?(.+)", room_id)
                 or re.fullmatch(r"(?i)r[-_]?([0-9]+)", room_id))
        return f"Room {match.group(1) if match else room_id}"

    def local(self, at: datetime) -> datetime:
        """An instant on the clinic's clock."""
        return at.astimezone(self.zone)

    def day_start(self, at: datetime) -> datetime:
        """The first instant of the clinic's calendar day at ``at`` (its midnight)."""
        return datetime.combine(self.local(at).date(), time(0), tzinfo=self.zone)


def _read_id(provider_id: str) -> str:
    parts = [p for p in re.split(r"[-_.\s]+", provider_id) if p]
    if parts and parts[0].lower() in ("dr", "doctor"):
        return "Dr. " + " ".join(p.capitalize() for p in parts[1:]) if parts[1:] else "Dr."
    return " ".join(p.capitalize() for p in parts) or provider_id


@dataclass(frozen=True, slots=True)
class Wording:
    """A patient message as decided, in ids and numbers: what ``render`` makes words of.

    ``provider_id`` is whose delay or slip it is (None: the clinic's, or a patient for the
    first available provider); ``delay_minutes`` the announced delay (None: the estimate
    slipped); ``low``/``high`` the range quoted; ``position`` the place in line;
    ``room_id`` the room that is ready; ``wait`` the point estimate the range was made
    around (recorded as told, never worded)."""

    kind: PatientKind
    ticket_code: str
    provider_id: str | None = None
    delay_minutes: int | None = None
    low: float | None = None
    high: float | None = None
    position: int = 0
    room_id: str | None = None
    wait: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "ticket": self.ticket_code, "provider": self.provider_id,
                "delay": self.delay_minutes, "low": self.low, "high": self.high,
                "position": self.position, "room": self.room_id, "wait": self.wait}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Wording:
        return cls(d["kind"], d["ticket"], d.get("provider"), d.get("delay"), d.get("low"),
                   d.get("high"), int(d.get("position", 0)), d.get("room"), d.get("wait"))


def shown_range(low: float, high: float) -> tuple[int, int]:
    """A range to the nearest five minutes, as a patient reads it (``format_range``)."""
    lo = max(0, math.floor(low / 5 + 0.5) * 5)
    return lo, max(lo + 5, math.floor(high / 5 + 0.5) * 5)


def format_range(low: float, high: float) -> str:
    """A range to the nearest five minutes, as a patient reads it: "30–40 minutes"."""
    lo, hi = shown_range(low, high)
    if lo == 0:
        return f"up to {hi} minutes"
    return f"{lo}\u2013{hi} minutes"


def render(wording: Wording, names: Names, link: str | None = None) -> tuple[str, str]:
    """(subject, text) of a patient message, in the clinic's words. ``link``: the
    feedback form's signed address, given only when the message is sent to the patient
    (a listing for staff shows where it goes, not the link)."""
    clinic = names.clinic
    subject_prefix = f"{clinic}: " if clinic else ""
    wait = (format_range(wording.low, wording.high)
            if wording.low is not None and wording.high is not None else None)
    if wording.kind == "delay_warning":
        subject = "your wait is longer"
        who = (names.provider(wording.provider_id) if wording.provider_id is not None
               else clinic or "The clinic")
        if wording.delay_minutes is not None:
            text = (f"{who} is running about {wording.delay_minutes} minutes behind; "
                    f"your new estimated wait is {wait}.")
        else:
            text = f"{who} is running behind; your new estimated wait is {wait}."
        if clinic and not text.startswith(clinic):
            text = f"{clinic}: {text}"
    elif wording.kind == "come_back_now":
        subject = "please come back now"
        lead = "you are next" if wording.position == 1 else "you will be called soon"
        text = (f"Please come back now, {lead} (ticket {wording.ticket_code}); "
                f"estimated wait {wait}.")
    elif wording.kind == "feedback_request":
        subject = "how was your visit?"
        where = link or "(a link for the patient only)"
        text = (f"Thank you for coming in (ticket {wording.ticket_code}). How was your visit, "
                f"and was your wait about what we told you? One minute, no login: {where}")
    else:
        subject = "we are ready for you"
        where = f" {names.room(wording.room_id)} is ready." if wording.room_id else ""
        text = (f"We are ready for you (ticket {wording.ticket_code}): please come in now."
                f"{where}")
    return f"{subject_prefix}{subject}", text


def alert_text(room_id: str, ticket_code: str, provider_id: str | None, names: Names) -> str:
    """A nurse room-ready alert: "Exam 5 is ready for A-17 (Dr. Okafor)."."""
    return (f"{names.room(room_id)} is ready for {ticket_code} "
            f"({names.provider(provider_id)}).")

