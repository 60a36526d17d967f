"""A simulated clinic day, played live onto the floor topic (``make up``'s demo).

Three demo clinics (``DEMO_CLINICS``), each in its own IANA time zone and with the
names its people use for providers and rooms (``clinics_setting()`` is the
``CLINICFLOW_CLINICS`` every service is given). Each gets a simulated day
(``tools.simulate``) on today's date on its own clock: appointments, arrivals and
every other fact are times of that one clock, so a patient who came eight minutes
early for a 10:15 appointment arrived at 10:07 there, and only the patients the
simulator made late (about one scheduled patient in fifteen is more than ten minutes
late) are late.

So that the screens are full at once, whatever the hour, the day is slid along the
clinic's clock (``clock_shift``) to make it mid-morning there (10:30, the busiest part
of these days, whose seeds were picked for a busy morning), in whole quarter hours
(appointments stay on the quarter hour). A run in the clinic's evening or night plays
a day that crosses its midnight: appointments and arrivals are still times of the one
clock, dated as that clock says (the evening before, or the next morning). What is
already past is published at once with its own times; the rest follows in real time
(``speed`` plays it faster, appointments included).
``play`` puts every event straight onto the floor topic with ``source="simulator"``;
``make up`` plays the day with ``tools.ehr_sender.play_with_ehr`` instead, which does
that only for the past and does the rest as staff do, through the services' HTTP doors
(a step refused because someone got there first is skipped).

Pure except ``play``: ``demo_day`` and the functions it uses take ``now``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from aiokafka import AIOKafkaProducer

from shared import events as ev
from shared.clinics import ClinicDirectory
from shared.floor.model import LATE_GRACE
from shared.logging import get_logger
from tools.replay import BadRecord, to_fact
from tools.simulate import get_scenario, simulate_day

log = get_logger("clinicflow.demo")

# where in its simulated day the demo starts: well under way, the waiting room full
MID_MORNING = timedelta(hours=10, minutes=30)
SHIFT_STEP = timedelta(minutes=15)  # appointments stay on the quarter hour
# what the demo's providers bill at checkout, by visit type (codes of
# services/billing/fee_schedule.example.csv): the replay format has no codes, and a
# checkout without any charges nothing, which left billing's screens empty
DEMO_CPT_CODES: dict[str, tuple[str, ...]] = {
    "follow_up": ("99213",), "new_patient": ("99203",), "physical": ("99396",),
    "procedure": ("99213", "17110"), "urgent": ("99214", "87880"),
    "consultation": ("99204",),
}


@dataclass(frozen=True)
class DemoClinic:
    """One demo clinic: its simulated shape, zone, names, and ticket letter."""

    clinic_id: str
    scenario: str  # a tools.simulate scenario name
    name: str
    timezone: str  # IANA
    providers: tuple[str, ...]  # display names of p1, p2, ... (one per simulated provider)
    room_label: str  # rooms r1, r2, ... are "<label> 1", "<label> 2", ...
    ticket_letter: str
    seed: int  # the simulated day (picked for a busy mid-morning)

    def config(self) -> dict[str, Any]:
        """This clinic's entry in ``CLINICFLOW_CLINICS`` (shared/clinics.py)."""
        rooms = get_scenario(self.scenario).rooms
        return {
            "name": self.name,
            "timezone": self.timezone,
            "providers": {f"p{n}": name for n, name in enumerate(self.providers, start=1)},
            "rooms": {f"r{n}": f"{self.room_label} {n}" for n in range(1, rooms + 1)},
        }


DEMO_CLINICS: tuple[DemoClinic, ...] = (
    DemoClinic("north", "mixed", "Northside Family Practice", "America/New_York",
               ("Dr. Okafor", "Dr. Lindqvist", "Dr. Patel", "Dr. Moreno"), "Exam", "N", 276),
    DemoClinic("south", "walk_in_urgent_care", "Southside Urgent Care", "America/Chicago",
               ("Dr. Nakamura", "Dr. Haddad", "Dr. Brennan"), "Bay", "S", 519),
    DemoClinic("east", "room_bound", "Eastgate Health Center", "America/Denver",
               ("Dr. Adeyemi", "Dr. Kowalski", "Dr. Chen", "Dr. Ramirez", "Dr. Fischer",
                "Dr. Dubois"), "Room", "E", 49),
)


def clinics_setting(clinics: tuple[DemoClinic, ...] = DEMO_CLINICS) -> str:
    """``CLINICFLOW_CLINICS`` for the demo clinics (JSON)."""
    return json.dumps({c.clinic_id: c.config() for c in clinics})


@dataclass(frozen=True, slots=True)
class DemoEvent:
    at: datetime  # when it happens (UTC), today on its clinic's clock
    clinic_id: str
    payload: ev.Payload


@dataclass(frozen=True)
class ClinicDay:
    """One demo clinic's day as planned: its date and how far it was slid on its clock."""

    clinic_id: str
    zone: ZoneInfo
    day: date
    shift: timedelta
    records: list[dict[str, Any]]  # the simulator's log (replay format), already slid
    truth: dict[str, Any]


def time_of_day(at: datetime, zone: ZoneInfo) -> timedelta:
    """How far into its day an instant is on a clinic's clock (wall-clock time)."""
    local = at.astimezone(zone)
    return local.replace(tzinfo=None) - datetime.combine(local.date(), time(0))


def clock_shift(now: timedelta) -> timedelta:
    """How far to slide a simulated day along its clinic's clock: the whole quarter
    hours that make ``now`` (the clinic's time of day) ``MID_MORNING`` of the simulated
    day. Late in the clinic's evening the day runs into the next morning; just after
    its midnight it began the evening before."""
    return SHIFT_STEP * round((now - MID_MORNING) / SHIFT_STEP)


def clinic_day(clinic: DemoClinic, zone: ZoneInfo, now: datetime,
               day: date | None = None) -> ClinicDay:
    """The clinic's simulated day on today's date on its clock, slid so that ``now``
    is mid-morning there (``clock_shift``); given ``day``, that date's day as simulated,
    not slid (``clinicflow up --day``: the whole day, played on a warped clock)."""
    today = day or now.astimezone(zone).date()
    shift = timedelta(0) if day is not None else clock_shift(time_of_day(now, zone))
    simulated = simulate_day(clinic.scenario, clinic.seed, clinic_id=clinic.clinic_id,
                             date=today, zone=zone, clock_shift=shift)
    return ClinicDay(clinic.clinic_id, zone, today, shift, simulated.events, simulated.truth)


def demo_day(clinics: tuple[DemoClinic, ...] = DEMO_CLINICS,
             directory: ClinicDirectory | None = None, *, now: datetime,
             day: date | None = None) -> list[DemoEvent]:
    """Every demo clinic's day as floor facts, in time order (each clinic's own order
    kept). Zones come from ``directory`` (the services' ``CLINICFLOW_CLINICS``), else
    from the demo clinics themselves. ``day``: that date's days, not slid (``clinic_day``)."""
    directory = directory or ClinicDirectory.parse(clinics_setting(clinics))
    merged: list[DemoEvent] = []
    for clinic in clinics:
        planned = clinic_day(clinic, directory.zone(clinic.clinic_id), now, day)
        tickets: dict[str, str] = {}

        def ticket_for(_clinic: str, visit_id: str, letter: str = clinic.ticket_letter,
                       tickets: dict[str, str] = tickets) -> str:
            tickets.setdefault(visit_id, f"{letter}-{len(tickets) + 1}")
            return tickets[visit_id]

        previous: datetime | None = None
        visit_types: dict[str, str] = {}
        for record in planned.records:
            try:
                payload = to_fact(record, ticket_for)
            except BadRecord:  # the simulator writes valid logs; skip rather than stop
                continue
            at = datetime.fromisoformat(record["ts"]).astimezone(UTC)
            # a wall-clock time in a daylight-saving gap reads an hour late: keep the order
            if previous is not None and at < previous:
                at = previous
            previous = at
            if isinstance(payload, ev.PatientArrived):
                visit_types[payload.visit_id] = payload.visit_type
                if payload.scheduled_at is not None:
                    payload = payload.model_copy(
                        update={"late": at > payload.scheduled_at + LATE_GRACE})
            elif isinstance(payload, ev.PatientCheckedOut) and not payload.cpt_codes:
                payload = payload.model_copy(update={"cpt_codes": list(DEMO_CPT_CODES.get(
                    visit_types.get(payload.visit_id, ""), ("99213",)))})
            merged.append(DemoEvent(at, clinic.clinic_id, payload))
    merged.sort(key=lambda e: e.at)  # stable: each clinic's order is kept
    return merged


def day_span(day: date, clinics: tuple[DemoClinic, ...] = DEMO_CLINICS,
             directory: ClinicDirectory | None = None) -> tuple[datetime, datetime]:
    """When the demo clinics' whole ``day`` begins (the first fact of the earliest
    clinic, before its doors open) and ends (the last fact of the latest), UTC."""
    events = demo_day(clinics, directory, now=datetime.combine(day, time(0), UTC), day=day)
    return events[0].at, events[-1].at


def warp(at: datetime, started: datetime, speed: float) -> datetime:
    """When a moment of the day is played: the past as it was, the future ``speed``
    times sooner (appointment times too, so arrivals stay early or late as simulated)."""
    return at if at <= started else started + (at - started) / speed


def played(event: DemoEvent, started: datetime, speed: float) -> DemoEvent:
    """The event as played at ``speed`` from ``started``: its time and its appointment
    time warped alike."""
    if speed == 1.0 or event.at <= started:
        return event
    payload = event.payload
    if isinstance(payload, ev.PatientArrived) and payload.scheduled_at is not None:
        payload = payload.model_copy(
            update={"scheduled_at": warp(payload.scheduled_at, started, speed)})
    return DemoEvent(warp(event.at, started, speed), event.clinic_id, payload)


def _utcnow() -> datetime:
    return datetime.now(UTC)


async def play(bootstrap: str, floor_topic: str, *, speed: float = 1.0,
               stop: asyncio.Event | None = None, producer_kwargs: dict[str, Any] | None = None,
               clinics: tuple[DemoClinic, ...] = DEMO_CLINICS,
               directory: ClinicDirectory | None = None,
               clock: Callable[[], datetime] = _utcnow,
               on_caught_up: Callable[[int], None] | None = None) -> int:
    """Publish the demo day: what is already past at once (then ``on_caught_up`` is
    called with how many events that was), the rest when it happens. Returns how many
    events were sent before ``stop``."""
    if speed <= 0:
        raise ValueError("speed must be positive")
    stop = stop or asyncio.Event()
    started = clock()
    events = [played(e, started, speed)
              for e in demo_day(clinics, directory, now=started)]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                enable_idempotence=True, linger_ms=5, **(producer_kwargs or {}))
    await producer.start()
    sent = 0

    async def send(event: DemoEvent, occurred: datetime) -> None:
        envelope = ev.make_event(event.payload, clinic_id=event.clinic_id, source="simulator",
                                 occurred_at=occurred,
                                 correlation_id=getattr(event.payload, "visit_id", None))
        await producer.send(floor_topic, ev.encode(envelope), key=event.clinic_id.encode())

    try:
        past = [e for e in events if e.at <= started]
        for event in past:
            await send(event, event.at)
        await producer.flush()
        sent = len(past)
        if on_caught_up is not None:
            on_caught_up(sent)
        for event in events[len(past):]:
            wait = (event.at - clock()).total_seconds()
            if wait > 0:
                try:
                    await asyncio.wait_for(stop.wait(), timeout=wait)
                except TimeoutError:
                    pass
            if stop.is_set():
                break
            await send(event, min(event.at, clock()))
            sent += 1
        await producer.flush()
    finally:
        await producer.stop()
    log.info("demo day published", events=sent)
    return sent
