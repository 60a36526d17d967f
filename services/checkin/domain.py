"""Check-in's clinic rules: the schedule, arrivals, no-shows and what a waiting patient
is told. Pure: no I/O, no clock reads (time is always an argument), no globals.

The words are the front desk's: an *appointment* is on the day's schedule, with a short
*kiosk code* the patient types; an *arrival* turns it (or a walk-in) into a *visit* with a
*ticket code* that screens show instead of a name; a booked appointment with no arrival
long enough after its time is a *no-show*; a waiting patient sees their *place in line*
and a *range*. Every day is the clinic's own (its IANA zone): a zone comes in with the
clinic, never from the server.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from shared import events as ev
from shared.errors import Conflict, NotFound

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
TICKET_LETTERS = "ABCDEFGHJKLMNPRSTUVWXYZ"  # no I, O, Q: not mistaken for 1 and 0
TICKETS_PER_LETTER = 9999
_TICKET_INPUT = re.compile(r"^\s*([A-Za-z])\s*[-‐–]?\s*0*([0-9]{1,4})\s*$")

# "ehr": an EHR feed (HL7 v2 ADT, FHIR Encounter) registered the arrival; checked as the
# front desk is
Channel = Literal["front_desk", "kiosk", "ehr"]
# "undone": flow undid the arrival itself (``action.undone`` naming it): the floor no
# longer knows the visit
VisitStatus = Literal["waiting", "roomed", "cancelled", "checked_out", "undone"]

# The kiosk takes the clinic's appointments of today, and across midnight those this close
# to now: a patient checking in at 23:55 for 00:05, or at 00:10 for 23:50 (late).
KIOSK_ACROSS_MIDNIGHT = timedelta(hours=2)

# Kiosk codes: six characters a patient types from a confirmation, with no 0/O, 1/I/L
# to mistake for each other (31 symbols: about 887 million codes per clinic day).
KIOSK_CODE_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
KIOSK_CODE_LENGTH = 6


# ---------------------------------------------------------------- small rules


def ticket_code(number: int) -> str:
    """The ``number``-th ticket of a clinic's day: A-1 ... A-9999, then B-1 ..."""
    if number < 1:
        raise ValueError("ticket numbers start at 1")
    letter = TICKET_LETTERS[(number - 1) // TICKETS_PER_LETTER % len(TICKET_LETTERS)]
    return f"{letter}-{(number - 1) % TICKETS_PER_LETTER + 1}"


def ticket_number(code: str) -> int | None:
    """The number a printed ticket code was handed out as (``ticket_code``'s inverse, in
    its first round of letters), or None for text that is not a printed code."""
    letter, _, digits = code.partition("-")
    if len(letter) != 1 or letter not in TICKET_LETTERS or not digits.isdigit():
        return None
    number = int(digits)
    if not 1 <= number <= TICKETS_PER_LETTER:
        return None
    return TICKET_LETTERS.index(letter) * TICKETS_PER_LETTER + number


def normalize_ticket_code(text: str) -> str | None:
    """A ticket code as typed (``a17``, ``A 17``, ``A-017``) in its printed form, or None."""
    match = _TICKET_INPUT.match(text)
    if match is None:
        return None
    letter, number = match.group(1).upper(), int(match.group(2))
    if letter not in TICKET_LETTERS or number < 1:
        return None
    return f"{letter}-{number}"


def clinic_day(at: datetime, zone: ZoneInfo) -> date:
    """The clinic's calendar day at an instant (ticket codes and no-show lists are per day)."""
    return at.astimezone(zone).date()


# how far from the clinic's today an appointment may be booked: a date further away (a
# birth date in the start field, 1900-01-01, a year typed 2062) is a mistake to refuse
PLAUSIBLE_DAYS = 366


def implausible_day(scheduled_at: datetime, now: datetime, zone: ZoneInfo) -> str | None:
    """Why an appointment at ``scheduled_at`` cannot be booked at ``now``: its day (on the
    clinic's clock) more than ``PLAUSIBLE_DAYS`` from the clinic's today; None when it
    can."""
    today = clinic_day(now, zone)
    try:
        day = clinic_day(scheduled_at, zone)
    except (OverflowError, ValueError):
        day = None
    if day is not None and abs((day - today).days) <= PLAUSIBLE_DAYS:
        return None
    shown = day.isoformat() if day is not None else scheduled_at.date().isoformat()
    return (f"the appointment's date {shown} is more than {PLAUSIBLE_DAYS} days from the "
            f"clinic's today ({today.isoformat()}): a mistyped date?")


def kiosk_days(now: datetime, zone: ZoneInfo) -> list[date]:
    """The clinic days whose appointments the kiosk may take at ``now``: today first, then
    the neighbouring day when midnight is less than ``KIOSK_ACROSS_MIDNIGHT`` away."""
    today = clinic_day(now, zone)
    days = [today]
    for moment in (now + KIOSK_ACROSS_MIDNIGHT, now - KIOSK_ACROSS_MIDNIGHT):
        day = clinic_day(moment, zone)
        if day not in days:
            days.append(day)
    return days


def kiosk_takes(scheduled_at: datetime, now: datetime, zone: ZoneInfo) -> bool:
    """Whether the kiosk takes an appointment at ``scheduled_at`` now: the clinic's today
    (early or late), or the neighbouring day within ``KIOSK_ACROSS_MIDNIGHT`` of now."""
    if clinic_day(scheduled_at, zone) == clinic_day(now, zone):
        return True
    return abs(scheduled_at - now) <= KIOSK_ACROSS_MIDNIGHT


def is_late(arrived_at: datetime, scheduled_at: datetime | None, late_after: timedelta) -> bool:
    """Late: arrived more than ``late_after`` after the appointment (a walk-in never is)."""
    return scheduled_at is not None and arrived_at > scheduled_at + late_after


def normalize_initials(text: str) -> str | None:
    """Initials as letters only, upper case (``j.s.`` -> ``JS``); None unless 1-4 letters."""
    letters = "".join(ch for ch in text if ch.isalpha()).upper()
    return letters if 1 <= len(letters) <= 4 else None


# what ``patient_pseudonym`` makes: a reference in this form is already a pseudonym
PSEUDONYM = re.compile(r"^pt-[0-9a-f]{24}$")


def patient_pseudonym(secret: bytes, clinic_id: str, ehr_id: str) -> str:
    """The pseudonymous ``patient_ref`` of a patient known to the EHR as ``ehr_id`` (a FHIR
    ``Patient.id``, an MRN): HMAC-SHA256 keyed by the identity secret, per clinic. The
    same patient gets the same reference at every import; the EHR identifier itself is
    never stored or published, and cannot be read back from the reference."""
    message = f"patient|{clinic_id}|{ehr_id}".encode()
    return "pt-" + hmac.new(secret, message, hashlib.sha256).hexdigest()[:24]


def kiosk_code(secret: bytes, clinic_id: str, appointment_id: str, day: date,
               attempt: int = 0) -> str:
    """The short code a patient types at the kiosk for an appointment on ``day``: keyed by
    the identity secret (not guessable from the appointment id), the same at every
    import; ``attempt`` > 0 gives another one when two appointments of a day collide."""
    message = f"kiosk|{clinic_id}|{appointment_id}|{day.isoformat()}|{attempt}".encode()
    number = int.from_bytes(hmac.new(secret, message, hashlib.sha256).digest()[:8], "big")
    symbols = []
    for _ in range(KIOSK_CODE_LENGTH):
        number, index = divmod(number, len(KIOSK_CODE_ALPHABET))
        symbols.append(KIOSK_CODE_ALPHABET[index])
    return "".join(symbols)


def normalize_kiosk_code(text: str) -> str | None:
    """A kiosk code as typed (``k7p 4qx``, ``K7P-4QX``) in its stored form, or None."""
    letters = "".join(ch for ch in text.upper() if ch not in " -‐–.")
    if len(letters) != KIOSK_CODE_LENGTH or any(ch not in KIOSK_CODE_ALPHABET
                                               for ch in letters):
        return None
    return letters


def printed_kiosk_code(code: str) -> str:
    """A kiosk code as printed on a confirmation: ``K7P-4QX``."""
    half = KIOSK_CODE_LENGTH // 2
    return f"{code[:half]}-{code[half:]}"


def identity_digest(secret: bytes, clinic_id: str, birth_date: date, initials: str) -> str:
    """The salted hash under which the kiosk's date-of-birth + initials check is kept.

    HMAC-SHA256 keyed by a secret from the settings; the clinic is part of the message,
    so one clinic's digests say nothing about another's. The plain values are never kept.
    """
    message = f"{clinic_id}|{birth_date.isoformat()}|{initials}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


# ---------------------------------------------------------------- visit types

# Appointment-type codes and the visit types the estimator knows (its priors, the
# simulator's mix): HL7 v2 table 0276 (FHIR's appointmentType binding) and common codes.
# Keys are normalized (``visit_type_key``); a deployment adds or overrides its own
# (CLINICFLOW_CHECKIN_VISIT_TYPES). A code not in the map keeps its normalized form.
DEFAULT_VISIT_TYPES: dict[str, str] = {
    # HL7 v2 table 0276
    "routine": "follow_up", "walkin": "walk_in", "checkup": "physical",
    "followup": "follow_up", "emergency": "urgent",
    # common codes and words
    "follow_up": "follow_up", "fu": "follow_up", "return": "follow_up",
    "return_visit": "follow_up", "established": "follow_up",
    "new": "new_patient", "new_patient": "new_patient", "np": "new_patient",
    "consult": "consultation", "consultation": "consultation",
    "physical": "physical", "annual": "physical", "annual_physical": "physical",
    "wellness": "physical", "well_visit": "physical", "preventive": "physical",
    "procedure": "procedure", "minor_procedure": "minor_procedure",
    "urgent": "urgent", "acute": "urgent", "sick": "urgent", "same_day": "urgent",
    "walk_in": "walk_in",
}  # fmt: skip


def visit_type_key(code: str) -> str:
    """A code as the map knows it: lower case, runs of spaces, dashes and dots as ``_``."""
    return re.sub(r"[\s\-./]+", "_", code.strip().lower()).strip("_")


def map_visit_type(code: str, table: Mapping[str, str]) -> str:
    """The clinic's visit type for an appointment-type code (``FOLLOWUP``, ``Follow-up``,
    ``follow_up`` are all ``follow_up``); a code the table does not know keeps its
    normalized form, so the estimator still learns it as one type."""
    key = visit_type_key(code)
    return table.get(key, key or code.strip())[:40]


def known_visit_type(code: str, table: Mapping[str, str]) -> str | None:
    """The clinic's visit type for a code, strictly: one of the table's visit types, or a
    code the table maps to one; None for anything else (a code that would be published
    as a new "type")."""
    key = visit_type_key(code)
    return table.get(key) or (key if key in set(table.values()) else None)


def visit_types_named(table: Mapping[str, str]) -> str:
    """The visit types of a table, for a refusal's message."""
    return ", ".join(sorted(set(table.values())))


def visit_type_table(overrides: Mapping[str, str]) -> dict[str, str]:
    """The default map with a deployment's own codes over it (keys normalized)."""
    table = dict(DEFAULT_VISIT_TYPES)
    table.update({visit_type_key(code): visit_type.strip()
                  for code, visit_type in overrides.items()})
    return table


# -------------------------------------------------------------- the schedule


@dataclass(frozen=True, slots=True)
class Appointment:
    """One appointment of the schedule, as imported. ``identity`` is a digest or None."""

    appointment_id: str
    patient_ref: str
    provider_id: str
    visit_type: str
    scheduled_at: datetime
    duration_minutes: int | None = None
    status: Literal["booked", "cancelled"] = "booked"
    identity: str | None = None
    kiosk_code: str | None = None  # set at import (``assign_kiosk_codes``), never published

    def payload(self) -> ev.AppointmentScheduled:
        """The ``appointment.scheduled`` payload (never the identity digest or kiosk code)."""
        return ev.AppointmentScheduled(
            appointment_id=self.appointment_id,
            patient_ref=self.patient_ref,
            provider_id=self.provider_id,
            visit_type=self.visit_type,
            scheduled_at=self.scheduled_at,
            duration_minutes=self.duration_minutes,
            status=self.status,
        )

    def published_fields(self) -> tuple[object, ...]:
        """What the floor knows of this appointment: a change here is an update."""
        return (self.patient_ref, self.provider_id, self.visit_type, self.scheduled_at,
                self.duration_minutes, self.status)


@dataclass(frozen=True, slots=True)
class ImportPlan:
    """What an import does: publish ``created`` and ``updated``, store those and
    ``restored`` (identity digest or kiosk code changed only); ``unchanged`` publishes
    nothing."""

    created: tuple[Appointment, ...]
    updated: tuple[Appointment, ...]
    unchanged: tuple[Appointment, ...]
    restored: tuple[Appointment, ...]

    @property
    def to_publish(self) -> tuple[Appointment, ...]:
        return self.created + self.updated

    @property
    def to_store(self) -> tuple[Appointment, ...]:
        return self.created + self.updated + self.restored


def plan_import(incoming: list[Appointment], stored: dict[str, Appointment]) -> ImportPlan:
    """Compare an import with what is stored. Re-importing the same schedule changes nothing;
    an appointment missing from the import is left alone (cancel it with ``status``)."""
    created, updated, unchanged, restored = [], [], [], []
    for appointment in incoming:
        before = stored.get(appointment.appointment_id)
        if before is None:
            created.append(appointment)
        elif before.published_fields() != appointment.published_fields():
            updated.append(appointment)
        elif ((before.identity != appointment.identity and appointment.identity is not None)
              or before.kiosk_code != appointment.kiosk_code):
            restored.append(appointment)
        else:
            unchanged.append(appointment)
    return ImportPlan(tuple(created), tuple(updated), tuple(unchanged), tuple(restored))


def assign_kiosk_codes(incoming: list[Appointment], stored: Mapping[str, Appointment],
                      taken: Mapping[date, Mapping[str, str]], *, secret: bytes,
                      clinic_id: str, zone: ZoneInfo) -> list[Appointment]:
    """Every imported appointment with its kiosk code: the one it has for its day, else a
    new one unique among the day's codes (``taken``: code -> appointment, per day)."""
    used: dict[date, dict[str, str]] = {day: dict(codes) for day, codes in taken.items()}
    coded = []
    for appointment in incoming:
        day = clinic_day(appointment.scheduled_at, zone)
        codes = used.setdefault(day, {})
        before = stored.get(appointment.appointment_id)
        code = before.kiosk_code if before is not None else None
        if (code is None or before is None or clinic_day(before.scheduled_at, zone) != day
                or codes.get(code, appointment.appointment_id) != appointment.appointment_id):
            attempt = 0
            code = kiosk_code(secret, clinic_id, appointment.appointment_id, day)
            while codes.get(code, appointment.appointment_id) != appointment.appointment_id:
                attempt += 1
                code = kiosk_code(secret, clinic_id, appointment.appointment_id, day, attempt)
        codes[code] = appointment.appointment_id
        coded.append(replace(appointment, kiosk_code=code))
    return coded


# ----------------------------------------------------------------- arrivals


def check_provider(provider_id: str | None, known: Iterable[str], clinic_id: str) -> None:
    """Raise ``NotFound`` for a provider the clinic does not know. ``known``: the providers
    of its configuration, its imported schedules and FHIR Practitioners; a clinic that
    knows none yet (nothing configured or imported) takes any id. None: first available."""
    names = set(known)
    if provider_id is None or not names or provider_id in names:
        return
    listed = ", ".join(sorted(names)[:12]) + (", ..." if len(names) > 12 else "")
    raise NotFound(f"no provider {provider_id!r} at clinic {clinic_id!r} (known: {listed})",
                   "unknown_provider")


@dataclass(frozen=True, slots=True)
class AppointmentState:
    """An appointment with what has happened to it: its arrival (visit) and no-show."""

    appointment: Appointment
    arrived_visit: str | None = None
    no_show: bool = False


def check_scheduled_arrival(state: AppointmentState, *, channel: Channel, now: datetime,
                            zone: ZoneInfo) -> None:
    """Raise ``Conflict`` when this appointment cannot be checked in now.

    The front desk may check in any booked appointment not yet arrived, including one
    already marked a no-show (the patient came after all) or on another day. The kiosk
    only takes the clinic's today's appointments (and, across midnight, those within
    ``KIOSK_ACROSS_MIDNIGHT`` of now) that are neither no-shows nor arrived, and never
    says more than "see the front desk" about someone else's appointment.
    """
    appointment = state.appointment
    name = appointment.appointment_id
    if appointment.status == "cancelled":
        raise Conflict(f"appointment {name!r} was cancelled", "cancelled")
    if state.arrived_visit is not None:
        if channel == "kiosk":
            raise Conflict("this appointment is already checked in; please see the front desk",
                           "already_arrived")
        raise Conflict(f"appointment {name!r} is already checked in "
                       f"(visit {state.arrived_visit})", "already_arrived")
    if channel == "kiosk":
        if not kiosk_takes(appointment.scheduled_at, now, zone):
            day = clinic_day(appointment.scheduled_at, zone)
            raise Conflict(f"this appointment is on {day:%A %B} {day.day}, {day.year}, not "
                           "today; please come then or see the front desk", "other_day")
        if state.no_show:
            raise Conflict("this appointment was marked as missed; please see the front desk",
                           "no_show")


def choose_kiosk_appointment(candidates: list[AppointmentState], *, now: datetime,
                             zone: ZoneInfo) -> AppointmentState:
    """The appointment a date-of-birth + initials match at the kiosk checks in.

    Only the booked appointments the kiosk takes now count (``kiosk_takes``: the clinic's
    today, and across midnight the nearby ones). Two different patients sharing a birth
    date and initials are sent to the front desk; one patient with several appointments
    checks in the earliest not yet arrived. Raises ``NotFound`` (no booked appointment
    today) or ``Conflict`` (ambiguous, already checked in).
    """
    todays = [c for c in candidates if c.appointment.status == "booked"
              and kiosk_takes(c.appointment.scheduled_at, now, zone)]
    if not todays:
        raise NotFound("we could not find an appointment today for that date of birth and "
                       "initials; please see the front desk", "not_found")
    if len({c.appointment.patient_ref for c in todays}) > 1:
        raise Conflict("we could not tell your appointment apart from another; please see "
                       "the front desk", "ambiguous")
    open_ones = sorted((c for c in todays if c.arrived_visit is None),
                       key=lambda c: c.appointment.scheduled_at)
    if not open_ones:
        raise Conflict("this appointment is already checked in; please see the front desk",
                       "already_arrived")
    return open_ones[0]


# ----------------------------------------------------------------- no-shows

NoShowVerdict = Literal["due", "not_yet", "too_old", "settled"]


def no_show_verdict(state: AppointmentState, now: datetime, after: timedelta,
                    horizon: timedelta) -> NoShowVerdict:
    """Whether a no-show is to be published for this appointment now.

    ``settled``: cancelled, arrived or already a no-show. ``too_old``: more than
    ``horizon`` ago (an old schedule imported late never floods the follow-up list).
    """
    appointment = state.appointment
    if appointment.status != "booked" or state.arrived_visit is not None or state.no_show:
        return "settled"
    if now - appointment.scheduled_at > horizon:
        return "too_old"
    if now < appointment.scheduled_at + after:
        return "not_yet"
    return "due"


# ------------------------------------------------------- waiting patients


@dataclass(frozen=True, slots=True)
class VisitView:
    """What checkin knows of one visit: its ticket, whether it still waits, flow's
    latest estimate. ``status_at`` orders facts from the floor and estimates topics."""

    clinic_id: str
    visit_id: str
    ticket_code: str
    day: date
    status: VisitStatus
    status_at: datetime
    appointment_id: str | None = None
    position: int | None = None
    wait_minutes: float | None = None
    low: float | None = None
    high: float | None = None
    estimated_at: datetime | None = None
    provider_id: str | None = None  # whom it waits for (None: the first available)


ENDED: dict[str, VisitStatus] = {
    "patient.roomed": "roomed",
    "arrival.cancelled": "cancelled",
    "patient.checked_out": "checked_out",
}


def undo_arrival(view: VisitView, at: datetime) -> VisitView:
    """The visit once flow undid its arrival (an ``action.undone`` naming the arrival's
    event): the floor no longer knows it, so it no longer waits and cannot be cancelled.
    Flow undoes an arrival only while nothing else happened to the visit: a visit that
    no longer waits here is left as it is."""
    if view.status != "waiting" or at < view.status_at:
        return view
    return replace(view, status="undone", status_at=at)


def evolve_visit(view: VisitView | None, event: ev.Event, zone: ZoneInfo) -> VisitView | None:
    """The visit after one floor event or estimate (None: nothing known, nothing to keep).

    A visit stops waiting when it is roomed, cancelled or checked out. An estimate made
    after that means flow has it waiting again (an undone rooming); an older one, read
    late from the other topic, changes nothing.
    """
    payload, at = event.payload, event.occurred_at
    match payload:
        case ev.PatientArrived():
            if view is not None:
                if view.appointment_id is None and payload.appointment_id is not None:
                    # known so far only from an estimate (read first from the other topic)
                    return replace(view, appointment_id=payload.appointment_id)
                return view
            return VisitView(clinic_id=event.clinic_id, visit_id=payload.visit_id,
                             ticket_code=payload.ticket_code, day=clinic_day(at, zone),
                             status="waiting", status_at=at,
                             appointment_id=payload.appointment_id,
                             provider_id=payload.provider_id)
        case ev.PatientRoomed() | ev.ArrivalCancelled() | ev.PatientCheckedOut():
            if view is None or at < view.status_at:
                return view
            return replace(view, status=ENDED[event.event_type], status_at=at)
        case ev.WaitEstimated():
            if view is None:
                view = VisitView(clinic_id=event.clinic_id, visit_id=payload.visit_id,
                                 ticket_code=payload.ticket_code, day=clinic_day(at, zone),
                                 status="waiting", status_at=at)
            if view.status != "waiting" and at <= view.status_at:
                return view
            if view.estimated_at is not None and at < view.estimated_at:
                return view
            status_at = at if view.status != "waiting" else view.status_at
            return replace(view, status="waiting", status_at=status_at,
                           position=payload.position, wait_minutes=payload.wait_minutes,
                           low=payload.low, high=payload.high, estimated_at=at,
                           provider_id=payload.provider_id)
    return view


@dataclass(frozen=True, slots=True)
class WaitStatus:
    """What a waiting patient is told: place in line and a range in whole minutes."""

    ticket_code: str
    waiting: bool
    position: int | None
    low_minutes: int | None
    high_minutes: int | None
    # what was told, for the told record (shared/told.py): never in an answer
    visit_id: str | None = None
    provider_id: str | None = None
    wait_minutes: float | None = None


def provider_queue_place(view: VisitView, others: Iterable[VisitView]) -> int | None:
    """The visit's place in its provider's queue, as the nurse station lists them:
    flow's estimates give each waiting visit its place in the clinic's queue order; the
    visits waiting for the same provider (the first-available ones among themselves) that
    are ahead of it there are ahead of it in line. None until flow has estimated it."""
    if view.position is None:
        return None
    ahead = sum(1 for other in others
                if other.visit_id != view.visit_id and other.status == "waiting"
                and other.provider_id == view.provider_id and other.position is not None
                and other.position < view.position)
    return ahead + 1


def wait_status(view: VisitView, now: datetime) -> WaitStatus:
    """The visit's place in line and range now. Flow publishes an estimate only when it
    changes more than the clock explains, so the last one is aged by the time since."""
    if view.status != "waiting":
        return WaitStatus(view.ticket_code, False, None, None, None)
    if view.low is None or view.high is None or view.estimated_at is None:
        return WaitStatus(view.ticket_code, True, view.position, None, None)
    elapsed = max(0.0, (now - view.estimated_at).total_seconds() / 60.0)
    low = math.floor(max(0.0, view.low - elapsed))
    high = max(low, math.ceil(max(0.0, view.high - elapsed)))
    point = None if view.wait_minutes is None else max(0.0, view.wait_minutes - elapsed)
    return WaitStatus(view.ticket_code, True, view.position, low, high, view.visit_id,
                      view.provider_id, point)
