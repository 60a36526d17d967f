"""The clinic manager's view of the day: where it is stuck. Pure: no I/O, no clock.

``DayStats`` is fed every applied floor fact (``observe``) and keeps bounded
aggregates of the day, so its size does not grow with the number of visits:

* **stage durations** (arrival_to_roomed, roomed_to_provider,
  provider_to_checkout, roomed_to_checkout per provider; room_turnover per
  room) as fixed-bucket distributions: count, mean, max and the 50th/90th
  percentiles read from the buckets (the same buckets as the
  ``clinicflow_stage_duration_minutes`` histogram);
* **queue lengths over the day**: the peak number of patients waiting in the
  lobby and roomed waiting for a provider in each five-minute period, at most
  one day of periods;
* **outcomes**: visits checked out, cancelled and left without being seen;
* **provider pace against schedule**: how many minutes after their appointment
  each provider's on-time patients are roomed (mean of the day, of the last
  five, and the worst), and how many patients each provider has seen.

``report(clinic, now)`` adds what only the live floor can tell: who waits now
and **the current bottleneck named in words** (which stage, which provider,
which room). Each possible hold-up is scored in patient-minutes (how long the
patients it holds have been held beyond their appointment, or since the stage
began) and the worst is named: "dr-lee: 6 waiting, longest 48 min; all 4 rooms
occupied, 3 by patients waiting for dr-lee" or "Rooms waiting for cleaning:
room-2 for 25 min; 4 patients waiting".

A *day* starts with the first fact after the clinic has been quiet for four
hours (closed overnight); a floor never quiet that long (open round the clock) has
its days cut every 24 hours after its first one began, at the same time of day
(``day_start``). Bookings and no-shows are not floor facts here (``ClinicFlow``
keeps them out): an EHR that books through the night keeps no day going. Undoing a
fact does not take its stage time back out of the day (it was a real wait, briefly).

``to_dict``/``from_dict`` carry it through flow's Redis checkpoint.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.floor.model import Change, Clinic, RoomState, Visit, VisitStatus

# the buckets of the clinicflow_stage_duration_minutes histogram, plus one for "longer"
BUCKETS: tuple[float, ...] = (1, 2, 5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 240)
STAGES = ("arrival_to_roomed", "roomed_to_provider", "provider_to_checkout",
          "roomed_to_checkout", "room_turnover")
# the same bounds as floats (exactly: small whole numbers), as a float is bisected among
# floats several times quicker than among ints
_BUCKET_BOUNDS = tuple(float(b) for b in BUCKETS)
SAMPLE_MINUTES = 5
DAY_SAMPLES = 24 * 60 // SAMPLE_MINUTES  # 288 five-minute periods: one day at most
MAX_KEYS = 64  # providers (or rooms) tracked per stage; more are folded into "other"
RECENT = 5  # recent roomings per provider for the pace "now"
QUIET_BEFORE_NEW_DAY = timedelta(hours=4)
LONGEST_DAY = timedelta(hours=24)
ANY = "any"  # first available provider
OTHER = "other"
OUTCOMES = ("checked_out", "cancelled", "left_without_being_seen")
ON_TIME_MINUTES = 5.0  # pace within this many minutes of the schedule is "on time"
# a room ready for less than this, with patients waiting, is being roomed: not a hold-up
ROOMING_GRACE_MINUTES = 3.0
# a hold-up is named a bottleneck from this many patient-minutes on
BOTTLENECK_SCORE = 15.0
LONG_VISIT_MINUTES = 60.0  # a provider this long with one patient holds a room up
_ROOMS_ONLY = frozenset({"room_ready", "room_out_of_service", "delay", "schedule"})
_ENDS_VISITS = frozenset({"checkout", "cancel"})
# read once: an enum member looked up on its class costs more than the dict lookup itself
_WAITING, _ROOMED = VisitStatus.WAITING, VisitStatus.ROOMED


class Durations:
    """A bounded distribution of minutes: count, sum, min, max and fixed bucket counts."""

    __slots__ = ("_summary", "buckets", "count", "maximum", "minimum", "total")

    def __init__(self) -> None:
        self._summary: dict[str, Any] | None = None  # boards ask far more often than it changes
        self.count = 0
        self.total = 0.0
        self.minimum = 0.0
        self.maximum = 0.0
        self.buckets = [0] * (len(BUCKETS) + 1)

    def add(self, minutes: float) -> None:
        # comparisons rather than min/max (this runs for every stage): the same values,
        # 0.0 for NaN too, as max(0.0, nan) gave
        if not minutes > 0.0:
            minutes = 0.0
        self._summary = None
        if not self.count or minutes < self.minimum:
            self.minimum = minutes
        self.count += 1
        self.total += minutes
        if minutes > self.maximum:
            self.maximum = minutes
        self.buckets[bisect.bisect_left(_BUCKET_BOUNDS, minutes)] += 1

    def quantile(self, q: float) -> float | None:
        """The q-quantile, interpolated inside its bucket (as PromQL's histogram_quantile
        does), never outside the smallest and largest values seen."""
        if not self.count:
            return None
        rank = q * self.count
        seen = 0
        for index, in_bucket in enumerate(self.buckets):
            if in_bucket and seen + in_bucket >= rank:
                lower = max(BUCKETS[index - 1] if index > 0 else 0.0, self.minimum)
                upper = min(BUCKETS[index] if index < len(BUCKETS) else self.maximum,
                            self.maximum)
                value = lower + (upper - lower) * (rank - seen) / in_bucket
                return round(value, 1)
            seen += in_bucket
        return round(self.maximum, 1)

    def summary(self) -> dict[str, Any]:
        if self._summary is None:
            self._summary = {
                "count": self.count,
                "mean_minutes": round(self.total / self.count, 1) if self.count else None,
                "p50_minutes": self.quantile(0.5),
                "p90_minutes": self.quantile(0.9),
                "max_minutes": round(self.maximum, 1) if self.count else None,
            }
        return dict(self._summary)

    def to_list(self) -> list[Any]:
        return [self.count, self.total, self.minimum, self.maximum, list(self.buckets)]

    @classmethod
    def from_list(cls, values: list[Any]) -> Durations:
        durations = cls()
        count, total, minimum, maximum, buckets = values
        durations.count, durations.total = int(count), float(total)
        durations.minimum, durations.maximum = float(minimum), float(maximum)
        if len(buckets) == len(durations.buckets):
            durations.buckets = [int(b) for b in buckets]
        return durations


@dataclass(slots=True)
class Pace:
    """How late one provider's on-time patients are roomed against their appointment."""

    roomed: int = 0
    late_total: float = 0.0
    late_max: float = 0.0
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=RECENT))
    seen: int = 0  # patients the provider started seeing today

    def add(self, late_minutes: float) -> None:
        self.roomed += 1
        self.late_total += late_minutes
        if late_minutes > self.late_max:
            self.late_max = late_minutes
        self.recent.append(round(late_minutes, 2))

    def to_list(self) -> list[Any]:
        return [self.roomed, self.late_total, self.late_max, list(self.recent), self.seen]

    @classmethod
    def from_list(cls, values: list[Any]) -> Pace:
        roomed, late_total, late_max, recent, seen = values
        pace = cls(int(roomed), float(late_total), float(late_max))
        pace.recent.extend(float(r) for r in recent)
        pace.seen = int(seen)
        return pace


@dataclass(slots=True)
class Bottleneck:
    """One hold-up on the floor, named in words."""

    stage: str | None
    provider_id: str | None
    room_ids: list[str]
    patients: int
    longest_minutes: float
    score: float  # patient-minutes held up
    text: str

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "provider_id": self.provider_id, "room_ids": self.room_ids,
                "patients": self.patients, "longest_minutes": round(self.longest_minutes),
                "score": round(self.score, 1), "text": self.text}


class DayStats:
    """Bounded aggregates of one clinic's day."""

    def __init__(self) -> None:
        # the clinic's lifetime outcome counts at the last fact (None: not known yet)
        self.counts_seen: dict[str, int] | None = {}
        self._start_day(None)

    def _start_day(self, at: datetime | None) -> None:
        self.day_started_at: datetime | None = at
        self.last_at: datetime | None = at
        self.stages: dict[str, Durations] = {}  # stage -> the clinic's distribution
        self.stage_by: dict[str, dict[str, Durations]] = {}  # stage -> provider/room -> dist
        self.pace: dict[str, Pace] = {}
        self.outcomes: dict[str, int] = {}
        self.sample_start: int | None = None  # five-minute period of the first sample
        self.waiting_peaks: list[int] = []  # lobby queue, peak per period
        self.roomed_peaks: list[int] = []  # roomed, waiting for a provider, peak per period
        self.now_waiting = 0
        self.now_roomed = 0

    # ----------------------------------------------------------------- facts

    def observe(self, change: Change, clinic: Clinic, at: datetime) -> None:
        """Account for one applied fact (``at``: when it happened)."""
        last_at = self.last_at
        if last_at is not None and at < last_at:
            at = last_at  # a slightly out-of-order clock: keep time moving forward
        starts = day_start(self.day_started_at, last_at, at)
        if starts is not None:
            self._start_day(starts)
        self.last_at = at
        kind = change.kind
        for stage in change.stages:
            name, minutes = stage.stage, stage.minutes
            if name == "room_turnover":
                key = change.room_ids[0] if change.room_ids else ANY
            else:
                key = stage.provider_id or ANY
            durations = self.stages.get(name)
            if durations is None:
                durations = self.stages[name] = Durations()
            durations.add(minutes)
            by = self.stage_by.get(name)
            if by is None:
                by = self.stage_by[name] = {}
            (by.get(key) or self._bounded(by, key, Durations)).add(minutes)
        if kind in ("roomed", "provider_in") and change.visit_ids:
            visit = clinic.visits.get(change.visit_ids[0])
            if visit is not None:
                provider = visit.provider_id or ANY
                pace = self.pace.get(provider) or self._bounded(self.pace, provider, Pace)
                if kind == "provider_in":
                    pace.seen += 1
                elif visit.scheduled_at is not None and not visit.late and visit.roomed_at:
                    pace.add(_minutes(visit.roomed_at - visit.scheduled_at))
        if self.counts_seen is None or kind in _ENDS_VISITS:
            self._count_outcomes(clinic)  # outcomes change only when a visit ends
        if kind in _ROOMS_ONLY:
            waiting, roomed = self.now_waiting, self.now_roomed
        else:
            counts = clinic.open_counts
            waiting, roomed = counts[_WAITING], counts[_ROOMED]
        self._sample(at, waiting, roomed)

    def _count_outcomes(self, clinic: Clinic) -> None:
        if self.counts_seen is None:  # restored from an older checkpoint: start from here
            self.counts_seen = dict(clinic.counts)
            return
        for outcome, total in clinic.counts.items():
            added = total - self.counts_seen.get(outcome, 0)
            if added > 0:
                self.outcomes[outcome] = self.outcomes.get(outcome, 0) + added
        if clinic.counts != self.counts_seen:
            self.counts_seen = dict(clinic.counts)

    def _sample(self, at: datetime, waiting: int, roomed: int) -> None:
        period = _period(at)
        if self.sample_start is None:
            self.sample_start = period
        missing = period - (self.sample_start + len(self.waiting_peaks)) + 1
        if missing > 0:
            # the floor did not change between facts: each quiet period held the last state
            filler = min(missing, DAY_SAMPLES)
            self.waiting_peaks.extend([self.now_waiting] * filler)
            self.roomed_peaks.extend([self.now_roomed] * filler)
            overflow = len(self.waiting_peaks) - DAY_SAMPLES
            if overflow > 0:
                del self.waiting_peaks[:overflow]
                del self.roomed_peaks[:overflow]
            self.sample_start = period - len(self.waiting_peaks) + 1
        if waiting > self.waiting_peaks[-1]:
            self.waiting_peaks[-1] = waiting
        if roomed > self.roomed_peaks[-1]:
            self.roomed_peaks[-1] = roomed
        self.now_waiting, self.now_roomed = waiting, roomed

    @staticmethod
    def _bounded(table: dict[str, Any], key: str, make: type[Any]) -> Any:
        found = table.get(key)
        if found is None:
            if len(table) >= MAX_KEYS:
                key = OTHER
                found = table.get(key)
            if found is None:
                found = table[key] = make()
        return found

    # ------------------------------------------------------------ checkpoint

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": 2,
            "day": _iso(self.day_started_at),
            "last": _iso(self.last_at),
            "stages": {k: d.to_list() for k, d in self.stages.items()},
            "by": {s: {k: d.to_list() for k, d in t.items()} for s, t in self.stage_by.items()},
            "pace": {k: p.to_list() for k, p in self.pace.items()},
            "outcomes": self.outcomes,
            "seen": self.counts_seen,
            "queue": [self.sample_start, self.waiting_peaks, self.roomed_peaks,
                      self.now_waiting, self.now_roomed],
        }

    @classmethod
    def from_dict(cls, document: dict[str, Any]) -> DayStats:
        stats = cls()
        if document.get("v") != 2:
            # a checkpoint from before these statistics: the day's figures start afresh
            stats.counts_seen = None
            return stats
        stats.day_started_at = _parse(document["day"])
        stats.last_at = _parse(document["last"])
        stats.stages = {k: Durations.from_list(v) for k, v in document["stages"].items()}
        stats.stage_by = {s: {k: Durations.from_list(v) for k, v in t.items()}
                          for s, t in document["by"].items()}
        stats.pace = {k: Pace.from_list(v) for k, v in document["pace"].items()}
        stats.outcomes = {k: int(v) for k, v in document["outcomes"].items()}
        seen = document.get("seen")
        stats.counts_seen = None if seen is None else {k: int(v) for k, v in seen.items()}
        start, waiting, roomed, now_waiting, now_roomed = document["queue"]
        stats.sample_start = start
        stats.waiting_peaks = [int(x) for x in waiting][-DAY_SAMPLES:]
        stats.roomed_peaks = [int(x) for x in roomed][-DAY_SAMPLES:]
        if start is not None:
            stats.sample_start = start + len(waiting) - len(stats.waiting_peaks)
        stats.now_waiting, stats.now_roomed = int(now_waiting), int(now_roomed)
        return stats

    # ---------------------------------------------------------------- report

    def report(self, clinic: Clinic, now: datetime) -> dict[str, Any]:
        """The operations view at ``now``: stage durations, queues over the day, outcomes,
        provider pace against schedule and the current bottleneck in words."""
        bottlenecks = find_bottlenecks(clinic, now)
        waiting = [v for v in clinic.visits.values() if v.status is VisitStatus.WAITING]
        roomed = [v for v in clinic.visits.values() if v.status is VisitStatus.ROOMED]
        return {
            "day_started_at": _iso(self.day_started_at),
            "stages": {
                stage: {**self.stages[stage].summary(),
                        "by": {k: d.summary() for k, d in sorted(self.stage_by[stage].items())}}
                for stage in STAGES if stage in self.stages
            },
            "queue": self._queue_report(now, len(waiting), len(roomed)),
            "outcomes": {o: self.outcomes.get(o, 0) for o in OUTCOMES},
            "left_without_being_seen": self.outcomes.get("left_without_being_seen", 0),
            "providers": self._pace_report(clinic, now, waiting),
            "bottleneck": bottlenecks[0].to_dict() if bottlenecks else None,
            "bottlenecks": [b.to_dict() for b in bottlenecks[:3]],
            "summary": _summary(bottlenecks, waiting, clinic, now),
        }

    def _queue_report(self, now: datetime, waiting: int, roomed: int) -> dict[str, Any]:
        waiting_peaks, roomed_peaks = list(self.waiting_peaks), list(self.roomed_peaks)
        start = self.sample_start
        if start is not None:
            # quiet periods up to now held the current state
            missing = min(_period(now) - (start + len(waiting_peaks)) + 1, DAY_SAMPLES)
            if missing > 0:
                waiting_peaks.extend([waiting] * missing)
                roomed_peaks.extend([roomed] * missing)
                overflow = len(waiting_peaks) - DAY_SAMPLES
                if overflow > 0:
                    del waiting_peaks[:overflow]
                    del roomed_peaks[:overflow]
                start = _period(now) - len(waiting_peaks) + 1
        return {
            "every_minutes": SAMPLE_MINUTES,
            "start": None if start is None else _iso(_period_start(start)),
            "waiting": waiting_peaks,
            "roomed_waiting_provider": roomed_peaks,
            "now": {"waiting": waiting, "roomed_waiting_provider": roomed},
            "peak": {"waiting": max(waiting_peaks, default=waiting),
                     "roomed_waiting_provider": max(roomed_peaks, default=roomed)},
        }

    def _pace_report(self, clinic: Clinic, now: datetime,
                     waiting: list[Visit]) -> list[dict[str, Any]]:
        behind_now: dict[str, float] = {}
        waiting_for: dict[str, int] = {}
        for visit in waiting:
            key = visit.provider_id or ANY
            waiting_for[key] = waiting_for.get(key, 0) + 1
            if visit.scheduled_at is not None and not visit.late and visit.scheduled_at < now:
                behind_now[key] = max(behind_now.get(key, 0.0),
                                      _minutes(now - visit.scheduled_at))
        providers = set(self.pace) | set(waiting_for) | clinic.providers()
        rows = []
        for provider in sorted(providers, key=lambda p: (p == ANY, p == OTHER, p)):
            pace = self.pace.get(provider, Pace())
            mean = pace.late_total / pace.roomed if pace.roomed else None
            recent = sum(pace.recent) / len(pace.recent) if pace.recent else None
            delay = clinic.delays.get(provider) if provider not in (ANY, OTHER) else None
            # how far behind now: the recent roomings, or an on-time patient still waiting
            behind = max(recent if recent is not None else 0.0, behind_now.get(provider, 0.0))
            if recent is None and provider not in behind_now:
                text = "no on-time patient roomed yet"
            elif behind > ON_TIME_MINUTES:
                text = f"running {round(behind)} min behind schedule"
            elif recent is not None and recent < -ON_TIME_MINUTES:
                text = f"rooming patients {round(-recent)} min early"
            else:
                text = "on schedule"
            rows.append({
                "provider_id": provider,
                "roomed_on_time_patients": pace.roomed,
                "late_minutes_mean": None if mean is None else round(mean, 1),
                "late_minutes_recent": None if recent is None else round(recent, 1),
                "late_minutes_max": round(pace.late_max, 1) if pace.roomed else None,
                "behind_minutes": round(behind, 1),
                "seen": pace.seen,
                "waiting": waiting_for.get(provider, 0),
                "delay_minutes": delay.minutes if delay else 0,
                "text": text,
            })
        return rows


def day_start(started: datetime | None, last: datetime | None,
              at: datetime) -> datetime | None:
    """When the clinic day a floor fact at ``at`` begins starts, if it begins one (None:
    it is in the day that ``started``; ``last``: the floor's previous fact). The first
    fact after ``QUIET_BEFORE_NEW_DAY`` starts a day at its own time; a floor never that
    quiet has its day cut every ``LONGEST_DAY`` after it began, at the same time of day
    (from the fact that crossed the line, each day would start a little later than the
    one before, and drift round the clock)."""
    if started is None or last is None or at - last >= QUIET_BEFORE_NEW_DAY:
        return at
    if at - started >= LONGEST_DAY:
        return started + LONGEST_DAY * ((at - started) // LONGEST_DAY)
    return None


# ---------------------------------------------------------------- bottlenecks


def find_bottlenecks(clinic: Clinic, now: datetime) -> list[Bottleneck]:
    """Every hold-up on the floor now, worst first (scored in patient-minutes held)."""
    rooms = sorted(clinic.rooms.values(), key=lambda r: r.room_id)
    ready = [r for r in rooms if r.state is RoomState.READY]
    dirty = [r for r in rooms if r.state is RoomState.NEEDS_CLEANING]
    occupied = [r for r in rooms if r.state is RoomState.OCCUPIED]
    in_service = [r for r in rooms if r.state is not RoomState.OUT_OF_SERVICE]
    waiting_by: dict[str | None, list[Visit]] = {}
    roomed_by: dict[str | None, list[Visit]] = {}
    seeing: list[Visit] = []
    for visit in clinic.visits.values():
        if visit.status is VisitStatus.WAITING:
            waiting_by.setdefault(visit.provider_id, []).append(visit)
        elif visit.status is VisitStatus.ROOMED:
            roomed_by.setdefault(visit.provider_id, []).append(visit)
        elif visit.status is VisitStatus.WITH_PROVIDER:
            seeing.append(visit)
    total_waiting = sum(len(v) for v in waiting_by.values())
    found: list[Bottleneck] = []

    # the lobby: patients not roomed, per provider, and what keeps them there
    lobby_score = 0.0
    cleaning_holds = not ready and bool(dirty)
    for provider, visits in waiting_by.items():
        held = [_minutes(now - max(v.arrived_at, v.scheduled_at or v.arrived_at))
                for v in visits]
        longest = max(_minutes(now - v.arrived_at) for v in visits)
        score = sum(max(0.0, h) for h in held)
        lobby_score += score
        head = f"{_who(provider)}: {len(visits)} waiting, longest {round(longest)} min"
        if ready:
            idle = max(_minutes(now - r.since) for r in ready)
            if idle < ROOMING_GRACE_MINUTES:  # the nurse has not had the time yet
                cause = f"{_rooms(ready)} just ready: rooming under way"
            else:
                cause = (f"{_rooms(ready)} ready and empty for {round(idle)} min"
                         if len(ready) == 1
                         else f"{_rooms(ready)} ready and empty, longest {round(idle)} min")
                cause += ": rooming is the hold-up"
            room_ids = [r.room_id for r in ready]
        elif in_service and len(occupied) == len(in_service):
            cause = f"all {len(occupied)} rooms occupied" + _held_by(occupied, clinic)
            room_ids = [r.room_id for r in occupied]
        elif dirty:
            cause = (f"{_count(len(occupied), 'room')} occupied, {_rooms(dirty)} waiting for "
                     "cleaning")
            room_ids = [r.room_id for r in dirty]
            score /= 2  # the root of it is the cleaning, named below
        elif not in_service:
            cause = "no room is in service"
            room_ids = []
        else:
            cause = ""
            room_ids = []
        found.append(Bottleneck("arrival_to_roomed", provider, room_ids, len(visits), longest,
                                score, f"{head}; {cause}" if cause else head))

    # rooms waiting for cleaning: with no room ready, they hold the whole lobby
    if dirty:
        longest_dirty = max(_minutes(now - r.since) for r in dirty)
        parts = ", ".join(f"{r.room_id} for {round(_minutes(now - r.since))} min" for r in dirty)
        text = f"Rooms waiting for cleaning: {parts}"
        if total_waiting:
            text += f"; {_count(total_waiting, 'patient')} waiting"
        dirty_minutes = sum(_minutes(now - r.since) for r in dirty)
        score = dirty_minutes + lobby_score if cleaning_holds else dirty_minutes * 0.2
        found.append(Bottleneck("room_turnover", None, [r.room_id for r in dirty],
                                total_waiting, longest_dirty, score, text))

    # roomed patients waiting for their provider
    for provider, visits in roomed_by.items():
        held_minutes = [_minutes(now - (v.roomed_at or v.arrived_at)) for v in visits]
        longest = max(held_minutes)
        where = sorted(v.room_id for v in visits if v.room_id)
        text = (f"{_who(provider)}: {len(visits)} roomed waiting for the provider, longest "
                f"{round(longest)} min ({', '.join(where)})")
        found.append(Bottleneck("roomed_to_provider", provider, where, len(visits), longest,
                                sum(held_minutes), text))

    # long visits that hold a room while others wait for it
    for visit in seeing:
        minutes = _minutes(now - (visit.provider_in_at or visit.arrived_at))
        if minutes >= LONG_VISIT_MINUTES and total_waiting:
            text = (f"{_who(visit.provider_id)}: with one patient for {round(minutes)} min in "
                    f"{visit.room_id or 'a room'} while {total_waiting} wait")
            found.append(Bottleneck("provider_to_checkout", visit.provider_id,
                                    [visit.room_id] if visit.room_id else [], 1, minutes,
                                    (minutes - LONG_VISIT_MINUTES) * total_waiting, text))

    found = [b for b in found if b.score >= BOTTLENECK_SCORE]
    found.sort(key=lambda b: (-b.score, b.text))
    return found


def _summary(bottlenecks: list[Bottleneck], waiting: list[Visit], clinic: Clinic,
             now: datetime) -> str:
    if bottlenecks:
        return bottlenecks[0].text
    if not waiting:
        return "No bottleneck: nobody is waiting."
    longest = max(_minutes(now - v.arrived_at) for v in waiting)
    ready = sum(1 for r in clinic.rooms.values() if r.state is RoomState.READY)
    rooms = f"; {_count(ready, 'room')} ready" if ready else ""
    return (f"No bottleneck: {len(waiting)} waiting, longest {round(longest)} min"
            f"{rooms}.")


def _held_by(occupied: list[Any], clinic: Clinic) -> str:
    """Who the full rooms are waiting on: ", 3 by patients waiting for dr-lee", or with
    several providers ", 4 by patients waiting for a provider (2 for dr-lee)" (the one most
    wait for; "1 each for dr-kim and dr-lee" when none has more)."""
    waiting_on: dict[str | None, int] = {}
    for room in occupied:
        visit = clinic.visits.get(room.visit_id) if room.visit_id else None
        if visit is not None and visit.status is VisitStatus.ROOMED:
            waiting_on[visit.provider_id] = waiting_on.get(visit.provider_id, 0) + 1
    if not waiting_on:
        return ""
    total = sum(waiting_on.values())
    if len(waiting_on) == 1:
        return f", {total} by patients waiting for {_who(next(iter(waiting_on)))}"
    most = max(waiting_on.values())
    first = sorted(_who(p) for p, count in waiting_on.items() if count == most)
    if len(first) == 1:
        return f", {total} by patients waiting for a provider ({most} for {first[0]})"
    named = ", ".join(first[:-1]) + f" and {first[-1]}"
    return f", {total} by patients waiting for a provider ({most} each for {named})"


def _count(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _who(provider_id: str | None) -> str:
    return "first available" if provider_id in (None, ANY) else str(provider_id)


def _rooms(rooms: list[Any]) -> str:
    names = [r.room_id for r in rooms]
    shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    return shown


def _minutes(delta: timedelta) -> float:
    return delta.total_seconds() / 60.0


def _period(at: datetime) -> int:
    return int(at.timestamp() // (SAMPLE_MINUTES * 60))


def _period_start(period: int) -> datetime:
    return datetime.fromtimestamp(period * SAMPLE_MINUTES * 60, tz=UTC)


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat()


def _parse(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)

