"""``clinicflow simulate``: a clinic's day played out event by event, written as a visit log.

The log is exactly the replay format (docs/replay-format.md), so the wait
estimator can be backtested on days whose truth is known. The clinic is meant
to be plausible, not easy: providers have their own pace, visits run long,
patients come early, late or not at all, walk-ins and urgent patients cut in,
providers start late, rooms must be cleaned, and patients who wait too long
leave.

How the floor works here (one seeded ``random.Random``, so a seed is a day):

* Providers (``p1``...) each have a pace multiplier (lognormal around 1) and
  a room pool; rooms (``r1``...) are split round-robin into the pools.
* Each provider's schedule is a grid of slots in sessions; a booked slot gets
  a visit type whose block is its nominal minutes, some slots are
  double-booked, some stay empty. Scheduled patients mostly come a little
  early, some late, a few never (no-shows: in the truth file, not the log).
* Walk-ins arrive as a Poisson stream (busier mornings and evenings), with
  ``scheduled_at: null``, for a named provider or for whoever is free.
* A patient can be called a few minutes after arriving (check-in). They are
  roomed when a room of their provider's pool is free (cleaned, and the
  nurse has had a moment to call) and their provider has fewer than
  ``max_roomed_per_provider`` patients in rooms (``rooms_before_provider_arrives``
  while the provider is not in yet). Queue order per provider:
  urgent first, then appointment time (arrival time for walk-ins and for
  patients more than 10 minutes late), then arrival. A scheduled routine
  patient is not roomed more than ``earliest_rooming_minutes`` before the
  appointment.
* After intake (nurse work) the patient is ready for the provider, who sees
  one patient at a time: ``provider_in`` then, after the visit type's
  minutes x the provider's pace x lognormal noise, ``checkout``. The room is
  cleaned and announced ``room_ready``.
* Delays: late-starting providers may be announced before they arrive and
  cleared when they do; providers who announce it say when they run 15+
  minutes behind their schedule and clear it when they catch up; sometimes
  the whole clinic stops (``provider_id: null``) for an emergency.
* Waiting patients have a patience; past it they leave
  (``left_without_being_seen``). A few cancel while waiting.

Time runs in whole seconds since local midnight; timestamps carry the
clinic's UTC offset (the scenario's fixed ``utc_offset_hours``, or, given a
``zone``, the offset an IANA zone has at that wall-clock time, as a clinic's
own clock reads it). ``clock_shift`` moves the whole day along the clinic's
clock, appointments and arrivals alike (``make up``'s demo uses it so that the
day is under way when it starts). Pure: no clock reads, no I/O except
``write_log`` and ``write_truth``.
"""

from __future__ import annotations

import argparse
import heapq
import io
import math
import os
import random
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from datetime import date, datetime, time, timedelta, timezone, tzinfo
from typing import IO, Any, Literal

import orjson

Priority = Literal["routine", "urgent"]
Outcome = Literal["checked_out", "left_without_being_seen", "cancelled", "no_show"]

DEFAULT_DATE = date(2026, 3, 2)
TRUTH_FORMAT = "clinicflow-simulation-truth/1"
LATE_GRACE_SECONDS = 10 * 60  # as the floor: more than 10 minutes late queues as a walk-in
MINUTE = 60

# Nominal minutes of each visit type's block on the schedule.
VISIT_MINUTES: dict[str, int] = {
    "new_patient": 30,
    "follow_up": 15,
    "physical": 40,
    "procedure": 30,
    "urgent": 15,
    "consultation": 45,
}

# Walk-in intensity by hour of the local day (multiplies ``walk_ins_per_hour``):
# a morning rush, a lunchtime bump, an after-work rise.
WALK_IN_PROFILE: dict[int, float] = {
    7: 1.2, 8: 1.4, 9: 1.3, 10: 1.0, 11: 0.9, 12: 1.1, 13: 0.9,
    14: 0.8, 15: 0.8, 16: 0.9, 17: 1.2, 18: 1.2, 19: 0.9, 20: 0.6,
}  # fmt: skip


@dataclass(frozen=True)
class Scenario:
    """Everything that shapes a simulated clinic day, in one place.

    Minutes unless named otherwise; shares are probabilities in [0, 1].
    """

    name: str
    description: str
    # who and where
    providers: int = 4
    rooms: int = 8
    room_pools: int = 1  # providers and rooms split round-robin into this many pools
    max_roomed_per_provider: int = 2
    rooms_before_provider_arrives: int = 1  # patients roomed for a provider not yet in
    pace_sigma: float = 0.15  # spread of providers' pace multipliers (lognormal, mean 1)
    # the schedule
    sessions: tuple[tuple[str, str], ...] = (("08:00", "12:00"), ("13:00", "17:00"))
    slot_minutes: int = 15
    booking_fill: float = 0.85  # share of free slots that get booked
    double_book_share: float = 0.0  # share of booked slots that get a second patient
    visit_mix: dict[str, float] = field(default_factory=lambda: {
        "follow_up": 0.45, "new_patient": 0.2, "physical": 0.15, "procedure": 0.1, "urgent": 0.1,
    })  # fmt: skip
    visit_minutes: dict[str, int] = field(default_factory=lambda: dict(VISIT_MINUTES))
    urgent_share_scheduled: float = 0.02
    # scheduled patients' arrivals
    no_show_share: float = 0.08
    early_minutes_mean: float = 10.0  # most come this early (normal)...
    early_minutes_sd: float = 7.0
    late_share: float = 0.12  # ...some late (exponential)
    late_minutes_mean: float = 10.0
    earliest_rooming_minutes: int = 5  # before the appointment, for routine patients
    check_in_minutes: tuple[float, float] = (1.0, 4.0)  # arrival -> can be called (uniform)
    # walk-ins
    walk_ins_per_hour: float = 0.5
    walk_in_hours: tuple[str, str] = ("08:00", "16:30")
    walk_in_mix: dict[str, float] = field(default_factory=lambda: {
        "urgent": 0.6, "follow_up": 0.3, "procedure": 0.1,
    })  # fmt: skip
    walk_in_any_provider_share: float = 0.5  # the rest ask for a named provider
    urgent_share_walk_in: float = 0.2
    # the work itself
    provider_share_of_block: float = 0.9  # provider minutes / nominal block, on average
    visit_noise_sigma: float = 0.35
    intake_minutes_median: float = 5.0
    cleaning_minutes_median: float = 4.0
    call_lag_minutes_max: float = 2.5  # room ready -> nurse calls the next patient
    # delays
    late_start_share: float = 0.1
    late_start_minutes: tuple[int, int] = (5, 20)
    late_start_announced_share: float = 0.5
    running_behind_announced_share: float = 0.5  # providers who announce running behind
    running_behind_minutes: int = 15
    clinic_delay_chance: float = 0.1  # a whole-clinic stop once in the day
    clinic_delay_minutes: tuple[int, int] = (10, 25)
    # leaving
    patience_median_minutes: float = 75.0  # walk-ins; scheduled patients wait 25% longer
    patience_sigma: float = 0.5
    cancel_share: float = 0.01
    utc_offset_hours: int = -5


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            name="room_bound",
            description="six providers share seven rooms: patients wait for rooms, "
            "not for providers",
            providers=6,
            rooms=7,
            max_roomed_per_provider=2,
            booking_fill=0.8,
            walk_ins_per_hour=0.6,
            cleaning_minutes_median=5.0,
        ),
        Scenario(
            name="walk_in_urgent_care",
            description="urgent care: nearly all walk-ins for whoever is free, a quarter "
            "urgent, open 08:00-20:00",
            providers=3,
            rooms=6,
            max_roomed_per_provider=2,
            sessions=(("08:00", "20:00"),),
            booking_fill=0.06,
            visit_mix={"follow_up": 1.0},
            walk_ins_per_hour=8.5,
            walk_in_hours=("08:00", "19:30"),
            walk_in_mix={"urgent": 0.6, "procedure": 0.15, "follow_up": 0.15, "physical": 0.1},
            walk_in_any_provider_share=0.9,
            urgent_share_walk_in=0.25,
            patience_median_minutes=70.0,
        ),
        Scenario(
            name="overbooked",
            description="primary care with a third of slots double-booked against no-shows",
            providers=4,
            rooms=9,
            booking_fill=0.9,
            double_book_share=0.3,
            no_show_share=0.12,
            walk_ins_per_hour=0.5,
        ),
        Scenario(
            name="late_providers",
            description="most providers start 20-45 minutes late and the desk announces it",
            providers=4,
            rooms=8,
            late_start_share=0.75,
            late_start_minutes=(20, 45),
            late_start_announced_share=1.0,
            running_behind_announced_share=0.75,
            walk_ins_per_hour=0.5,
        ),
        Scenario(
            name="quiet_specialty",
            description="two specialists, long consultations and procedures, half-booked",
            providers=2,
            rooms=5,
            booking_fill=0.6,
            slot_minutes=15,
            visit_mix={"consultation": 0.4, "follow_up": 0.35, "procedure": 0.25},
            visit_minutes={**VISIT_MINUTES, "consultation": 60, "follow_up": 30,
                           "procedure": 45},
            urgent_share_scheduled=0.0,
            walk_ins_per_hour=0.1,
            walk_in_mix={"follow_up": 1.0},
            urgent_share_walk_in=0.0,
            no_show_share=0.05,
            visit_noise_sigma=0.3,
            patience_median_minutes=100.0,
        ),
        Scenario(
            name="mixed",
            description="family practice: two room pools, walk-ins, urgent add-ons, "
            "some late starts and a likely clinic-wide stop",
            providers=4,
            rooms=8,
            room_pools=2,
            booking_fill=0.8,
            double_book_share=0.05,
            walk_ins_per_hour=1.5,
            walk_in_any_provider_share=0.5,
            urgent_share_walk_in=0.2,
            late_start_share=0.2,
            late_start_minutes=(10, 30),
            clinic_delay_chance=0.35,
        ),
    )
}
SCENARIO_NAMES: tuple[str, ...] = tuple(SCENARIOS)


@dataclass
class SimulatedDay:
    """A simulated day: the replay-format log (time-ordered) and what really happened."""

    events: list[dict[str, Any]]
    truth: dict[str, Any]


# ---------------------------------------------------------------------- internals


@dataclass(slots=True)
class _Visit:
    visit_id: str
    provider_id: str | None  # None: first available provider
    visit_type: str
    priority: Priority
    scheduled_at: int | None  # seconds since local midnight; None: walk-in
    arrives_at: int | None  # None: no-show
    callable_at: int = 0  # checked in and can be called to a room
    patience: int = 0
    cancels_after: int | None = None
    state: Literal["expected", "waiting", "roomed", "with_provider", "ended"] = "expected"
    seen_by: str | None = None
    room_id: str | None = None
    roomed_at: int | None = None
    provider_in_at: int | None = None
    ended_at: int | None = None
    outcome: Outcome | None = None

    @property
    def late(self) -> bool:
        return (self.scheduled_at is not None and self.arrives_at is not None
                and self.arrives_at > self.scheduled_at + LATE_GRACE_SECONDS)

    def queue_key(self) -> tuple[int, int, int, str]:
        """Urgent first, then appointment (arrival if walk-in or late), arrival, id."""
        assert self.arrives_at is not None
        queue_time = (self.arrives_at if self.scheduled_at is None or self.late
                      else self.scheduled_at)
        return (0 if self.priority == "urgent" else 1, queue_time, self.arrives_at,
                self.visit_id)


@dataclass(slots=True)
class _Provider:
    provider_id: str
    order: int
    pace: float
    pool: int
    starts_at: int
    announces_running_behind: bool
    present: bool = False
    in_rooms: set[str] = field(default_factory=set)  # visits roomed for this provider
    ready: list[tuple[int, int, str]] = field(default_factory=list)  # heap: intake done
    with_patient: str | None = None
    announced_delay: int | None = None  # minutes of the delay now announced, if any


@dataclass(slots=True)
class _Room:
    room_id: str
    pool: int
    occupant: str | None = None
    available_at: int | None = None  # cleaned and callable from then; None: in use/cleaning


def _clock(text: str) -> int:
    hours, minutes = text.split(":")
    return int(hours) * 3600 + int(minutes) * MINUTE


def _round5(minutes: float) -> int:
    return max(5, int(5 * round(minutes / 5)))


@dataclass(frozen=True, slots=True)
class _Cast:
    """Who and what a clinic has on one of several consecutive days."""

    provider_ids: tuple[str, ...]  # one per provider of the scenario, in order
    paces: dict[str, float]  # each provider's own pace, kept from day to day
    rooms_out: frozenset[str]  # rooms out of service all day
    visit_prefix: str  # visit ids stay unique across the days


class _Day:
    """One clinic's day: built from the scenario and the seed, then run to the end."""

    def __init__(self, scenario: Scenario, seed: int, clinic_id: str, day: date,
                 zone: tzinfo | None = None, clock_shift: timedelta = timedelta(0),
                 cast: _Cast | None = None) -> None:
        if scenario.rooms < scenario.room_pools or scenario.providers < scenario.room_pools:
            raise ValueError(f"scenario {scenario.name}: every room pool needs a provider "
                             "and a room")
        self.scenario = scenario
        self.seed = seed
        self.clinic_id = clinic_id
        self.day = day
        self.cast = cast
        self.rng = random.Random(seed)
        self.midnight = datetime.combine(
            day, time(0), tzinfo=timezone(timedelta(hours=scenario.utc_offset_hours)))
        self.zone = zone
        self.clock_shift = clock_shift
        self.events: list[dict[str, Any]] = []
        self._heap: list[tuple[int, int, str, str]] = []
        self._seq = 0
        self.paused = False  # a whole-clinic delay stops rooming and new visits
        self.clinic_delay: dict[str, Any] | None = None
        self.visits: dict[str, _Visit] = {}
        self.waiting: dict[str | None, dict[str, _Visit]] = {}  # provider (None: any) -> queue
        self.providers = self._make_providers()
        self.rooms = [_Room(f"r{i + 1}", i % scenario.room_pools)
                      for i in range(scenario.rooms)]
        self._book_day()
        if cast is not None:  # the clinic's own providers keep their pace from day to day
            for provider in self.providers.values():
                provider.pace = cast.paces.get(provider.provider_id, provider.pace)

    # ------------------------------------------------------------------ set-up

    def _lognormal(self, median: float, sigma: float) -> float:
        return median * math.exp(self.rng.gauss(0.0, sigma))

    def _mean_one(self, sigma: float) -> float:
        """A lognormal multiplier with mean 1."""
        return math.exp(self.rng.gauss(-sigma * sigma / 2, sigma))

    def _pick(self, mix: dict[str, float]) -> str:
        names = list(mix)
        return self.rng.choices(names, weights=[mix[n] for n in names])[0]

    def _make_providers(self) -> dict[str, _Provider]:
        s = self.scenario
        opens = _clock(s.sessions[0][0])
        providers: dict[str, _Provider] = {}
        for i in range(s.providers):
            provider_id = f"p{i + 1}" if self.cast is None else self.cast.provider_ids[i]
            late = 0
            if self.rng.random() < s.late_start_share:
                late = self.rng.randint(*s.late_start_minutes) * MINUTE + self.rng.randint(0, 59)
            provider = _Provider(
                provider_id=provider_id,
                order=i,
                pace=self._mean_one(s.pace_sigma),
                pool=i % s.room_pools,
                starts_at=opens + late,
                announces_running_behind=self.rng.random() < s.running_behind_announced_share,
            )
            providers[provider_id] = provider
            self._push(provider.starts_at, "provider_starts", provider_id)
            if late and self.rng.random() < s.late_start_announced_share:
                announce_at = opens - self.rng.randint(0, 10) * MINUTE
                self._push(announce_at, "late_start_announced", provider_id)
            self.waiting[provider_id] = {}
        self.waiting[None] = {}
        return providers

    def _book_day(self) -> None:
        s = self.scenario
        rng = self.rng
        opens = _clock(s.sessions[0][0])
        doors_open = opens - 30 * MINUTE
        slot = s.slot_minutes * MINUTE
        visits: list[_Visit] = []
        for provider in self.providers.values():
            for start, end in s.sessions:
                cursor, session_end = _clock(start), _clock(end)
                while cursor < session_end:
                    if rng.random() >= s.booking_fill:
                        cursor += slot
                        continue
                    visit_type = self._pick(s.visit_mix)
                    block = math.ceil(s.visit_minutes.get(visit_type, 20) * MINUTE / slot) * slot
                    if cursor + block > session_end:
                        break
                    visits.append(self._scheduled(provider.provider_id, visit_type, cursor,
                                                  doors_open))
                    if rng.random() < s.double_book_share:
                        visits.append(self._scheduled(provider.provider_id,
                                                      self._pick(s.visit_mix), cursor, doors_open))
                    cursor += block
        visits.extend(self._walk_ins())
        # ids in the order patients come in; no-shows after them
        visits.sort(key=lambda v: (v.arrives_at is None, v.arrives_at or v.scheduled_at or 0))
        for number, visit in enumerate(visits, start=1):
            prefix = self.clinic_id if self.cast is None else self.cast.visit_prefix
            visit.visit_id = f"{prefix}-v{number:03d}"
            self.visits[visit.visit_id] = visit
            if visit.arrives_at is None:
                visit.state, visit.outcome = "ended", "no_show"
                continue
            median = s.patience_median_minutes * (1.25 if visit.scheduled_at is not None else 1.0)
            visit.patience = int(self._lognormal(median, s.patience_sigma) * MINUTE)
            visit.callable_at = visit.arrives_at + int(rng.uniform(*s.check_in_minutes) * MINUTE)
            if rng.random() < s.cancel_share:
                visit.cancels_after = rng.randint(5, 45) * MINUTE
            self._push(visit.arrives_at, "arrival", visit.visit_id)
        self._push(opens - 15 * MINUTE, "rooms_open", "")
        if rng.random() < s.clinic_delay_chance:
            last_end = _clock(s.sessions[-1][1])
            stops_at = rng.randint(opens + 60 * MINUTE, max(opens + 60 * MINUTE,
                                                            last_end - 120 * MINUTE))
            minutes = rng.randint(*s.clinic_delay_minutes)
            self.clinic_delay = {"starts_at": self._iso(stops_at), "minutes": minutes}
            self._push(stops_at, "clinic_delay_starts", str(minutes))
            self._push(stops_at + minutes * MINUTE, "clinic_delay_ends", "")

    def _scheduled(self, provider_id: str, visit_type: str, at: int, doors_open: int) -> _Visit:
        s, rng = self.scenario, self.rng
        priority: Priority = "urgent" if rng.random() < s.urgent_share_scheduled else "routine"
        arrives: int | None
        if rng.random() < s.no_show_share:
            arrives = None
        elif rng.random() < s.late_share:
            arrives = at + int((1 + rng.expovariate(1 / s.late_minutes_mean)) * MINUTE)
        else:
            early = min(45.0, rng.gauss(s.early_minutes_mean, s.early_minutes_sd))
            arrives = max(doors_open, at - int(early * MINUTE))
        return _Visit("", provider_id, visit_type, priority, at, arrives)

    def _walk_ins(self) -> list[_Visit]:
        s, rng = self.scenario, self.rng
        if s.walk_ins_per_hour <= 0:
            return []
        peak = s.walk_ins_per_hour * max(WALK_IN_PROFILE.values())
        at, until = float(_clock(s.walk_in_hours[0])), _clock(s.walk_in_hours[1])
        walk_ins: list[_Visit] = []
        while True:
            # thinning: candidates at the peak rate, kept in proportion to the hour's rate
            at += rng.expovariate(peak / 3600)
            if at >= until:
                return walk_ins
            rate = s.walk_ins_per_hour * WALK_IN_PROFILE.get(int(at) // 3600, 0.6)
            if rng.random() * peak > rate:
                continue
            provider_id = (None if rng.random() < s.walk_in_any_provider_share
                           else rng.choice(list(self.providers)))
            priority: Priority = "urgent" if rng.random() < s.urgent_share_walk_in else "routine"
            walk_ins.append(_Visit("", provider_id, self._pick(s.walk_in_mix), priority, None,
                                   int(at)))

    # ----------------------------------------------------------------- running

    def _push(self, at: int, kind: str, subject: str) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (at, self._seq, kind, subject))

    def _iso(self, at: int) -> str:
        if self.zone is None:
            return (self.midnight + timedelta(seconds=at) + self.clock_shift).isoformat()
        # wall-clock time on the clinic's clock: an 08:00 session is at 08:00 on a day
        # that changes to or from daylight-saving time too
        wall = datetime.combine(self.day, time(0)) + timedelta(seconds=at) + self.clock_shift
        return wall.replace(tzinfo=self.zone).isoformat()

    def _emit(self, at: int, kind: str, **fields: Any) -> None:
        self.events.append({"ts": self._iso(at), "type": kind, "clinic_id": self.clinic_id,
                            **fields})

    def run(self) -> SimulatedDay:
        while self._heap:
            at, _, kind, subject = heapq.heappop(self._heap)
            getattr(self, f"_on_{kind}")(at, subject)
        return SimulatedDay(self.events, self._truth())

    def _on_rooms_open(self, at: int, _: str) -> None:
        out = self.cast.rooms_out if self.cast is not None else frozenset()
        for room in self.rooms:
            if room.room_id in out:  # out of service today: never called into
                self._emit(at, "room_out_of_service", room_id=room.room_id)
                continue
            self._emit(at, "room_ready", room_id=room.room_id)
            room.available_at = at
        self._dispatch(at)

    def _on_arrival(self, at: int, visit_id: str) -> None:
        visit = self.visits[visit_id]
        visit.state = "waiting"
        self._emit(at, "arrival", visit_id=visit_id, provider_id=visit.provider_id,
                   visit_type=visit.visit_type,
                   scheduled_at=None if visit.scheduled_at is None
                   else self._iso(visit.scheduled_at),
                   priority=visit.priority)
        self.waiting[visit.provider_id][visit_id] = visit
        self._push(at + visit.patience, "patience_runs_out", visit_id)
        if visit.cancels_after is not None:
            self._push(at + visit.cancels_after, "patient_cancels", visit_id)
        gate = self._earliest_rooming(visit)
        if gate > at:
            self._push(gate, "recheck", "")
        self._dispatch(at)

    def _earliest_rooming(self, visit: _Visit) -> int:
        """When the patient can first be called: checked in and, if routine and
        scheduled, close enough to the appointment."""
        if visit.priority == "urgent" or visit.scheduled_at is None:
            return visit.callable_at
        return max(visit.callable_at,
                   visit.scheduled_at - self.scenario.earliest_rooming_minutes * MINUTE)

    def _dispatch(self, at: int) -> None:
        """Room patients while a provider can take one more and their pool has a free room."""
        if self.paused:
            return
        s = self.scenario
        while True:
            free_pools = {r.pool for r in self.rooms
                          if r.available_at is not None and r.available_at <= at}
            best: tuple[tuple[int, int, int, str], int, int, _Visit, _Provider] | None = None
            for provider in self.providers.values():
                cap = (s.max_roomed_per_provider if provider.present
                       else min(s.max_roomed_per_provider, s.rooms_before_provider_arrives))
                if len(provider.in_rooms) >= cap or provider.pool not in free_pools:
                    continue
                for queue in (self.waiting[provider.provider_id], self.waiting[None]):
                    for visit in queue.values():
                        if self._earliest_rooming(visit) > at:
                            continue
                        candidate = (visit.queue_key(), len(provider.in_rooms), provider.order,
                                     visit, provider)
                        if best is None or candidate[:3] < best[:3]:
                            best = candidate
            if best is None:
                return
            visit, provider = best[3], best[4]
            room = min((r for r in self.rooms if r.pool == provider.pool
                        and r.available_at is not None and r.available_at <= at),
                       key=lambda r: (r.available_at or 0, r.room_id))
            self._room(at, visit, provider, room)

    def _room(self, at: int, visit: _Visit, provider: _Provider, room: _Room) -> None:
        del self.waiting[visit.provider_id][visit.visit_id]
        visit.state, visit.seen_by, visit.room_id, visit.roomed_at = (
            "roomed", provider.provider_id, room.room_id, at)
        room.occupant, room.available_at = visit.visit_id, None
        provider.in_rooms.add(visit.visit_id)
        self._emit(at, "roomed", visit_id=visit.visit_id, room_id=room.room_id)
        intake = max(MINUTE, int(self._lognormal(self.scenario.intake_minutes_median, 0.4)
                                 * MINUTE))
        self._push(at + intake, "intake_done", visit.visit_id)

    def _on_intake_done(self, at: int, visit_id: str) -> None:
        visit = self.visits[visit_id]
        assert visit.seen_by is not None and visit.roomed_at is not None
        provider = self.providers[visit.seen_by]
        heapq.heappush(provider.ready,
                       (0 if visit.priority == "urgent" else 1, visit.roomed_at, visit_id))
        self._see_next(at, provider)

    def _see_next(self, at: int, provider: _Provider) -> None:
        if self.paused or not provider.present or provider.with_patient or not provider.ready:
            return
        _, _, visit_id = heapq.heappop(provider.ready)
        visit = self.visits[visit_id]
        visit.state, visit.provider_in_at = "with_provider", at
        provider.with_patient = visit_id
        self._emit(at, "provider_in", visit_id=visit_id, provider_id=provider.provider_id)
        s = self.scenario
        minutes = (s.visit_minutes.get(visit.visit_type, 20) * s.provider_share_of_block
                   * provider.pace * self._mean_one(s.visit_noise_sigma))
        self._push(at + max(2 * MINUTE, int(minutes * MINUTE)), "checkout", visit_id)
        self._say_how_far_behind(at, provider)

    def _on_checkout(self, at: int, visit_id: str) -> None:
        visit = self.visits[visit_id]
        assert visit.seen_by is not None and visit.room_id is not None
        provider = self.providers[visit.seen_by]
        self._emit(at, "checkout", visit_id=visit_id)
        visit.state, visit.ended_at, visit.outcome = "ended", at, "checked_out"
        provider.with_patient = None
        provider.in_rooms.discard(visit_id)
        cleaning = max(MINUTE, int(self._lognormal(self.scenario.cleaning_minutes_median, 0.4)
                                   * MINUTE))
        self._push(at + cleaning, "room_cleaned", visit.room_id)
        self._say_how_far_behind(at, provider)
        self._see_next(at, provider)
        self._dispatch(at)

    def _on_room_cleaned(self, at: int, room_id: str) -> None:
        room = next(r for r in self.rooms if r.room_id == room_id)
        room.occupant = None
        self._emit(at, "room_ready", room_id=room_id)
        lag = int(self.rng.uniform(0.2, self.scenario.call_lag_minutes_max) * MINUTE)
        room.available_at = at + lag
        self._push(at + lag, "recheck", "")

    def _on_recheck(self, at: int, _: str) -> None:
        self._dispatch(at)

    def _on_provider_starts(self, at: int, provider_id: str) -> None:
        provider = self.providers[provider_id]
        provider.present = True
        if provider.announced_delay is not None:
            self._say_how_far_behind(at, provider, fresh=True)
        self._see_next(at, provider)
        self._dispatch(at)  # a provider who is in may have more patients roomed

    def _on_late_start_announced(self, at: int, provider_id: str) -> None:
        provider = self.providers[provider_id]
        # the desk's guess: right within a few minutes
        minutes = _round5((provider.starts_at - at) / MINUTE + self.rng.gauss(0, 4))
        provider.announced_delay = minutes
        self._emit(at, "delay", provider_id=provider_id, minutes=minutes, reason="late_start")

    def _say_how_far_behind(self, at: int, provider: _Provider, fresh: bool = False) -> None:
        """Announce, update or clear a provider's running-behind delay.

        Behind = how long past their appointment the provider's most overdue
        on-time patient (waiting, or roomed and not yet seen) has been kept.
        """
        overdue = [v for v in self.waiting[provider.provider_id].values()
                   if v.scheduled_at is not None and not v.late]
        overdue += [self.visits[i] for i in provider.in_rooms
                    if self.visits[i].state == "roomed" and not self.visits[i].late]
        behind = max((at - v.scheduled_at for v in overdue if v.scheduled_at is not None),
                     default=0) / MINUTE
        threshold = self.scenario.running_behind_minutes
        if provider.announces_running_behind and behind >= threshold:
            minutes = _round5(behind)
            if (fresh or provider.announced_delay is None
                    or abs(minutes - provider.announced_delay) >= 10):
                provider.announced_delay = minutes
                self._emit(at, "delay", provider_id=provider.provider_id, minutes=minutes,
                           reason="running_behind")
        elif provider.announced_delay is not None and (
                fresh or behind < threshold / 2 or not provider.announces_running_behind):
            provider.announced_delay = None
            self._emit(at, "delay", provider_id=provider.provider_id, minutes=0,
                       reason="caught_up")

    def _on_clinic_delay_starts(self, at: int, minutes: str) -> None:
        self.paused = True
        announced = _round5(int(minutes) + self.rng.gauss(0, 3))
        self._emit(at, "delay", provider_id=None, minutes=announced, reason="clinic_emergency")

    def _on_clinic_delay_ends(self, at: int, _: str) -> None:
        self.paused = False
        self._emit(at, "delay", provider_id=None, minutes=0, reason="resolved")
        for provider in self.providers.values():
            self._see_next(at, provider)
        self._dispatch(at)

    def _on_patience_runs_out(self, at: int, visit_id: str) -> None:
        self._leave(at, visit_id, "left_without_being_seen")

    def _on_patient_cancels(self, at: int, visit_id: str) -> None:
        self._leave(at, visit_id, "cancelled")

    def _leave(self, at: int, visit_id: str, outcome: Outcome) -> None:
        visit = self.visits[visit_id]
        if visit.state != "waiting":
            return
        del self.waiting[visit.provider_id][visit_id]
        visit.state, visit.ended_at, visit.outcome = "ended", at, outcome
        self._emit(at, "cancel", visit_id=visit_id, reason=outcome)

    # ------------------------------------------------------------------- truth

    def _truth(self) -> dict[str, Any]:
        def iso(at: int | None) -> str | None:
            return None if at is None else self._iso(at)

        visits = [
            {
                "clinic_id": self.clinic_id,
                "visit_id": v.visit_id,
                "provider_id": v.provider_id,
                "seen_by": v.seen_by,
                "visit_type": v.visit_type,
                "priority": v.priority,
                "scheduled_at": iso(v.scheduled_at),
                "arrived_at": iso(v.arrives_at),
                "roomed_at": iso(v.roomed_at),
                "room_id": v.room_id,
                "provider_in_at": iso(v.provider_in_at),
                "ended_at": iso(v.ended_at),
                "outcome": v.outcome,
            }
            for v in sorted(self.visits.values(), key=lambda v: v.visit_id)
        ]
        clinic = {
            "clinic_id": self.clinic_id,
            "scenario": self.scenario.name,
            "seed": self.seed,
            "date": self.day.isoformat(),
            # as JSON has it (tuples become lists), so a written truth reads back equal
            "parameters": orjson.loads(orjson.dumps(asdict(self.scenario))),
            "providers": [
                {"provider_id": p.provider_id, "pace": round(p.pace, 3), "pool": p.pool,
                 "starts_at": self._iso(p.starts_at),
                 "announces_running_behind": p.announces_running_behind}
                for p in self.providers.values()
            ],
            "rooms": [{"room_id": r.room_id, "pool": r.pool} for r in self.rooms],
            "clinic_delay": self.clinic_delay,
        }
        if self.zone is not None:  # only then: a day on a fixed offset reads as before
            clinic["timezone"] = str(self.zone)
        if self.clock_shift:
            clinic["clock_shift_minutes"] = self.clock_shift.total_seconds() / 60
        return {"format": TRUTH_FORMAT, "scenario": self.scenario.name, "seed": self.seed,
                "date": self.day.isoformat(), "clinics": [clinic], "visits": visits}


# ------------------------------------------------------------------------- API


def get_scenario(name: str) -> Scenario:
    """The named scenario shape; ``KeyError`` names the known ones."""
    try:
        return SCENARIOS[name]
    except KeyError:
        raise KeyError(f"unknown scenario {name!r}; known: {', '.join(SCENARIO_NAMES)}") from None


def simulate_day(
    scenario: str | Scenario,
    seed: int,
    clinic_id: str = "c1",
    date: date = DEFAULT_DATE,
    zone: tzinfo | None = None,
    clock_shift: timedelta = timedelta(0),
) -> SimulatedDay:
    """Simulate one clinic's day. The same scenario and seed give the same day;
    ``clinic_id`` only labels it (and prefixes visit ids, which stay unique across
    clinics because the estimate format carries no clinic).

    ``zone`` (an IANA zone, e.g. ``ZoneInfo("America/New_York")``) puts the day on that
    clinic's clock instead of the scenario's fixed UTC offset; ``clock_shift`` moves
    every time of the day (appointments, arrivals, every event) by that much on the
    clinic's clock. Neither changes what happens, only when the clock says it did."""
    shape = get_scenario(scenario) if isinstance(scenario, str) else scenario
    return _Day(shape, seed, clinic_id, date, zone, clock_shift).run()


# Later days of a multi-day run: walk-ins and no-shows by weekday (Monday = 0)
WEEKDAY_WALK_INS = {0: 1.0, 1: 0.9, 2: 1.0, 3: 0.9, 4: 0.8, 5: 0.6, 6: 0.6}
WEEKDAY_NO_SHOWS = {0: 1.0, 1: 1.0, 2: 1.0, 3: 1.0, 4: 1.5, 5: 1.5, 6: 1.5}
SLOWER_DAY_PACE = 1.25  # a slower day: every visit takes this much longer...
SLOWER_DAY_NURSES = 1.3  # ...and intake and cleaning this much
ROOM_OUT_DAYS = 5  # a room out of service for a working week


def clinic_days(start: date, days: int) -> list[date]:
    """``days`` consecutive working days (Monday to Friday) from ``start`` on (``start``
    itself whatever day it is)."""
    dates = [start]
    while len(dates) < days:
        following = dates[-1] + timedelta(days=1)
        while following.weekday() >= 5:
            following += timedelta(days=1)
        dates.append(following)
    return dates


@dataclass(frozen=True)
class DriftPlan:
    """What changes over a clinic's consecutive days, drawn from the seed."""

    new_provider_day: int | None  # from this day (1-based) on, one provider is replaced
    leaving: str | None  # the provider who leaves
    joining_pace: float  # the newcomer's pace
    slower_day: int | None  # a day when everything runs slower
    room_out: str | None  # a room out of service ...
    room_out_days: tuple[int, ...]  # ... on these days


def drift_plan(shape: Scenario, seed: int, days: int) -> DriftPlan:
    """The drift of a run of ``days`` days: a new provider (from day 3 at the earliest), a
    slower day (day 2 or later), a room out for a working week (from day 2 or later).
    Day 1 never drifts. A room is taken out only from a pool that keeps another."""
    rng = random.Random(f"drift:{shape.name}:{seed}:{days}")
    new_day = rng.randint(3, max(3, days - 2)) if days >= 4 else None
    leaving = f"p{rng.randint(1, shape.providers)}"
    joining = min(1.5, max(0.7, math.exp(rng.gauss(0.0, max(0.25, 2 * shape.pace_sigma)))))
    slower = rng.randint(2, days) if days >= 2 else None
    pools = [i % shape.room_pools for i in range(shape.rooms)]
    candidates = [f"r{i + 1}" for i in range(shape.rooms) if pools.count(pools[i]) > 1]
    room_out: str | None = None
    out_days: tuple[int, ...] = ()
    if days >= 2 and candidates:
        room_out = rng.choice(candidates)
        first = rng.randint(2, max(2, days - ROOM_OUT_DAYS + 1))
        out_days = tuple(range(first, min(days, first + ROOM_OUT_DAYS - 1) + 1))
    return DriftPlan(new_day, leaving if new_day else None, joining, slower, room_out,
                     out_days)


def simulate_days(
    scenario: str | Scenario,
    seed: int,
    days: int,
    clinic_id: str = "c1",
    start: date = DEFAULT_DATE,
) -> SimulatedDay:
    """One clinic's ``days`` consecutive working days, in time order, with drift.

    Day 1 is exactly ``simulate_day(scenario, seed, clinic_id, start)``. The clinic
    keeps its providers (each with their own pace) and rooms from day to day, while
    each day has its own patients (day k's seed is ``seed * 1000 + k``, its visit ids
    ``<clinic_id>-d<k>-v...``). From day 2 on: walk-ins and no-shows follow the
    weekday (fewer walk-ins and more no-shows on Fridays), and ``drift_plan`` brings a
    new provider in place of one who leaves, one slower day, and a room out of service
    for a working week (the log says so at opening with ``room_out_of_service``).
    The truth lists every day's clinic and what drifted."""
    shape = get_scenario(scenario) if isinstance(scenario, str) else scenario
    if days < 1:
        raise ValueError("days must be at least 1")
    plan = drift_plan(shape, seed, days)
    first = _Day(shape, seed, clinic_id, start)
    paces = {p.provider_id: p.pace for p in first.providers.values()}
    ids = tuple(paces)
    runs = [first.run()]
    drift: list[list[str]] = [[]]
    for number, day in enumerate(clinic_days(start, days)[1:], start=2):
        notes: list[str] = []
        if plan.new_provider_day is not None and number >= plan.new_provider_day:
            joining = f"p{shape.providers + 1}"
            ids = tuple(joining if p == plan.leaving else p for p in ids)
            paces.setdefault(joining, plan.joining_pace)
            if number == plan.new_provider_day:
                notes.append(f"{plan.leaving} left; {joining} (pace "
                             f"{plan.joining_pace:.2f}) started")
        today = replace(
            shape,
            walk_ins_per_hour=shape.walk_ins_per_hour * WEEKDAY_WALK_INS[day.weekday()],
            no_show_share=min(0.9, shape.no_show_share * WEEKDAY_NO_SHOWS[day.weekday()]),
        )
        day_paces = dict(paces)
        if number == plan.slower_day:
            day_paces = {p: pace * SLOWER_DAY_PACE for p, pace in paces.items()}
            today = replace(today,
                            intake_minutes_median=today.intake_minutes_median
                            * SLOWER_DAY_NURSES,
                            cleaning_minutes_median=today.cleaning_minutes_median
                            * SLOWER_DAY_NURSES)
            notes.append("a slower day")
        out = frozenset({plan.room_out}) if plan.room_out and number in plan.room_out_days \
            else frozenset()
        if out:
            notes.append(f"{plan.room_out} out of service")
        cast = _Cast(ids, day_paces, out, f"{clinic_id}-d{number}")
        runs.append(_Day(today, seed * 1000 + number, clinic_id, day, cast=cast).run())
        drift.append(notes)
    clinics = []
    for run, notes in zip(runs, drift, strict=True):
        for clinic in run.truth["clinics"]:
            clinics.append({**clinic, "drift": notes})
    truth = {"format": TRUTH_FORMAT, "scenario": shape.name, "seed": seed,
             "date": start.isoformat(), "days": days, "clinics": clinics,
             "visits": [v for run in runs for v in run.truth["visits"]]}
    return SimulatedDay([e for run in runs for e in run.events], truth)


def simulate_clinics(
    scenario: str,
    seed: int,
    clinics: int,
    date: date = DEFAULT_DATE,
    days: int = 1,
) -> SimulatedDay:
    """Simulate ``clinics`` clinics' days (``c001``, ``c002``...), merged in time order;
    with ``days`` above 1, each clinic's consecutive days (``simulate_days``).

    Each clinic gets its own seed derived from ``seed``. ``scenario`` may be
    ``"all"``: clinics then cycle through every shape.
    """
    if clinics < 1:
        raise ValueError("clinics must be at least 1")
    if days < 1:
        raise ValueError("days must be at least 1")
    names = SCENARIO_NAMES if scenario == "all" else (get_scenario(scenario).name,)
    if days == 1:
        runs = [simulate_day(names[i % len(names)], seed * 10_000 + i, f"c{i + 1:03d}", date)
                for i in range(clinics)]
    else:
        runs = [simulate_days(names[i % len(names)], seed * 10_000 + i, days,
                              f"c{i + 1:03d}", date)
                for i in range(clinics)]
    if clinics == 1:
        events = runs[0].events
    else:
        # stable: ties keep clinic order, each clinic's own order is kept
        keyed = [(datetime.fromisoformat(e["ts"]), i, n, e)
                 for i, d in enumerate(runs) for n, e in enumerate(d.events)]
        keyed.sort(key=lambda k: (k[0], k[1], k[2]))
        events = [k[3] for k in keyed]
    truth = {
        "format": TRUTH_FORMAT,
        "scenario": scenario,
        "seed": seed,
        "date": date.isoformat(),
        "clinics": [c for d in runs for c in d.truth["clinics"]],
        "visits": [v for d in runs for v in d.truth["visits"]],
    }
    if days > 1:
        truth["days"] = days
    return SimulatedDay(events, truth)


def write_log(events: Iterable[dict[str, Any]], path_or_stream: str | os.PathLike[str] | IO[Any],
              ) -> int:
    """Write events as JSON Lines to a path or an open (binary or text) stream.
    Returns the number of lines written."""
    if isinstance(path_or_stream, str | os.PathLike):
        with open(path_or_stream, "wb") as stream:
            return write_log(events, stream)
    text = isinstance(path_or_stream, io.TextIOBase)
    count = 0
    for event in events:
        line = orjson.dumps(event) + b"\n"
        path_or_stream.write(line.decode() if text else line)
        count += 1
    return count


def write_truth(truth: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Write the ground-truth file (pretty JSON)."""
    with open(path, "wb") as stream:
        stream.write(orjson.dumps(truth, option=orjson.OPT_INDENT_2) + b"\n")


# ------------------------------------------------------------------------- CLI


def run(args: argparse.Namespace) -> int:
    if args.list:
        width = max(len(n) for n in SCENARIO_NAMES)
        for name, shape in SCENARIOS.items():
            print(f"{name:<{width}}  {shape.description}")
        return 0
    if args.scenario is None or args.out is None:
        print("clinicflow simulate: --scenario and --out are required (or --list)",
              file=sys.stderr)
        return 2
    try:
        day = date.fromisoformat(args.date)
    except ValueError:
        print(f"clinicflow simulate: --date {args.date!r} is not YYYY-MM-DD", file=sys.stderr)
        return 2
    try:
        simulated = simulate_clinics(args.scenario, args.seed, args.clinics, day, args.days)
    except (KeyError, ValueError) as exc:
        print(f"clinicflow simulate: {exc.args[0]}", file=sys.stderr)
        return 2
    try:
        if args.out == "-":
            write_log(simulated.events, sys.stdout.buffer)
            sys.stdout.buffer.flush()
        else:
            write_log(simulated.events, args.out)
        if args.truth:
            write_truth(simulated.truth, args.truth)
    except OSError as exc:
        print(f"clinicflow simulate: cannot write {exc.filename}: {exc.strerror}",
              file=sys.stderr)
        return 2
    return 0


def add_cli(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "simulate", help="simulate clinic days as a visit log (replay format)",
        description="Simulate one or more clinics' days and write the visit log as JSON Lines.",
    )
    parser.add_argument("--scenario", help=f"one of {', '.join(SCENARIO_NAMES)}, or 'all' "
                        "(clinics cycle through the shapes)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument("--clinics", type=int, default=1, help="number of clinics (default 1)")
    parser.add_argument("--date", default=DEFAULT_DATE.isoformat(), help="YYYY-MM-DD")
    parser.add_argument("--days", type=int, default=1,
                        help="consecutive working days per clinic from --date, with drift: a "
                        "new provider, a slower day, a room out for a week (default 1)")
    parser.add_argument("--out", help="visit log to write, '-' for stdout")
    parser.add_argument("--truth", help="also write the ground truth as JSON here")
    parser.add_argument("--list", action="store_true", help="list the scenario shapes")
    parser.set_defaults(func=run)
