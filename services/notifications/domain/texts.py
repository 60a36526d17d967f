"""What patients and nurses read: provider and room names, wait ranges, message texts.
No names of patients, ever: a ticket code at most. Pure."""

from __future__ import annotations

import math
import re

from services.notifications.domain.notes import PatientKind, PatientNotes, PendingWarning, WaitQuote
from services.notifications.domain.rules import Rules


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


def compose(kind: PatientKind, rules: Rules, notes: PatientNotes, estimate: WaitQuote | None,
            pending: PendingWarning | None, room_id: str | None) -> tuple[str, str]:
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
