"""A clinic's memory across days: what its past days showed, as the next day's priors.

Pure: no I/O, no clock reads; time comes with the facts. ``ClinicProfile`` is a compact,
bounded summary of a clinic's past floor events, folded in once a day from what the
day's ``WaitEstimator`` learned and from a small ``DayLog`` kept beside it:

* visit lengths by visit type and each provider's pace (decayed sums: a day counts
  ``DECAY`` times less each later day, so a new provider or a changed habit shows
  within days), nurse intake, the provider's hand-over and room cleaning;
* how the look-ahead errs, per situation (``estimator.situation``), and how long before
  or after their appointment early patients are roomed, each as a distribution of
  ``SKETCH_POINTS`` points;
* each provider's rooming habit (how many patients they keep in rooms) and usual rooms;
* arrivals (scheduled, walk-in, urgent) and no-shows by weekday and hour, and how often
  and how far a rooming overtakes the queue's order, by hour.

``RememberingFlow`` is a ``ClinicFlow`` that keeps one: at the first fact of a new day
(after four quiet hours, as the operations view cuts days, or 24 hours after the
day began) it folds the finished day into the profile and starts a fresh estimator
primed with it. A clinic without history is estimated exactly as a plain
``ClinicFlow`` is. Everything here is a function of the clinic's floor events in their
order, so a replay, a rebuild from Kafka and the live service hold the same profile;
``shared.floor.snapshot`` carries it in the checkpoint.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Any

import orjson

from shared import events as ev
from shared.floor.clinic_flow import ClinicFlow
from shared.floor.day_stats import day_start
from shared.floor.estimator import (
    ERROR_WINDOW,
    SITUATION_WINDOW,
    WALKOUT_BANDS,
    ProviderHabits,
    RoomsUsed,
    RunningMean,
    WaitEstimator,
)
from shared.floor.model import Change, VisitStatus

PROFILE_VERSION = 1
DECAY = 0.8  # what a day counts for, one day later
MEAN_WEIGHT = 20.0  # a remembered mean counts as at most this many of today's observations
PACE_WEIGHT = 12.0  # the same for a provider's pace
SKETCH_POINTS = 50  # points kept of each remembered distribution
HABIT_MEMORY = 10  # rooming observations kept per provider
MAX_KEYS = 32  # visit types, providers kept; the least recently seen go first
ARRIVAL_KINDS = ("scheduled", "walk_in", "urgent")
HOURS = 24 * 7  # weekday x hour
WALKOUT_EXPOSURE = 60.0  # minutes of waiting a band needs before its own rate counts


@dataclass(slots=True)
class Tally:
    """A decayed sum and count: its mean is what past days say, its count how firmly."""

    total: float = 0.0
    count: float = 0.0

    def fold(self, total: float, count: float) -> None:
        # rounded as it is kept, so that the profile read back from its JSON is this one
        self.total = round(self.total * DECAY + total, 4)
        self.count = round(self.count * DECAY + count, 4)

    @property
    def mean(self) -> float | None:
        return self.total / self.count if self.count > 0 else None

    def prior(self, cap: float) -> RunningMean:
        """A running mean for today that starts from what past days say (``mean`` must
        be known), counting as at most ``cap`` of today's observations."""
        return RunningMean(self.total / self.count, min(cap, self.count))

    def to_list(self) -> list[float]:
        return [self.total, self.count]


def _tally(values: list[float]) -> Tally:
    return Tally(values[0], values[1])


def sketch(values: Iterable[float], points: int = SKETCH_POINTS) -> list[float]:
    """``points`` evenly spaced quantiles of ``values`` (all of them when fewer): a
    distribution in a fixed, small size."""
    ordered = sorted(values)
    n = len(ordered)
    if n <= points:
        return ordered
    return [round(ordered[min(n - 1, int((i + 0.5) * n / points))], 4) for i in range(points)]


# each band of minutes waited as (from, to)
_BAND_EDGES = tuple(zip(WALKOUT_BANDS, (*WALKOUT_BANDS[1:], math.inf), strict=True))


@dataclass(slots=True)
class DayLog:
    """What the estimator does not keep but the profile wants: arrivals by kind, weekday
    and hour; no-shows; roomings against the queue's order."""

    arrivals: dict[str, list[int]] = field(
        default_factory=lambda: {kind: [0] * HOURS for kind in ARRIVAL_KINDS})
    no_shows: list[int] = field(default_factory=lambda: [0] * HOURS)
    # per hour of the day: roomings, roomings that took someone ahead in the queue's order,
    # and how many they passed in all
    roomings: list[int] = field(default_factory=lambda: [0] * 24)
    overtakes: list[int] = field(default_factory=lambda: [0] * 24)
    passed: list[int] = field(default_factory=lambda: [0] * 24)
    # per band of minutes waited (WALKOUT_BANDS): walk-outs, and minutes spent waiting
    walkouts: list[float] = field(default_factory=lambda: [0.0] * len(WALKOUT_BANDS))
    waiting_minutes: list[float] = field(default_factory=lambda: [0.0] * len(WALKOUT_BANDS))

    def waited(self, minutes: float, walked_out: bool) -> None:
        """A wait ended after ``minutes``: by a rooming, a cancellation or a walk-out."""
        waiting = self.waiting_minutes
        for i, (low, high) in enumerate(_BAND_EDGES):
            if minutes < low:
                break
            if minutes > low:
                waiting[i] += (minutes if minutes < high else high) - low
            if walked_out and minutes < high:
                self.walkouts[i] += 1

    def to_dict(self) -> dict[str, Any]:
        return {"arrivals": self.arrivals, "no_shows": self.no_shows,
                "roomings": self.roomings, "overtakes": self.overtakes, "passed": self.passed,
                "walkouts": self.walkouts, "waiting_minutes": self.waiting_minutes}

    @classmethod
    def from_dict(cls, document: dict[str, Any]) -> DayLog:
        return cls(dict(document["arrivals"]), list(document["no_shows"]),
                   list(document["roomings"]), list(document["overtakes"]),
                   list(document["passed"]), list(document["walkouts"]),
                   list(document["waiting_minutes"]))


class ClinicProfile:
    """One clinic's past days, bounded: see the module's docstring."""

    def __init__(self) -> None:
        self.days = 0  # days folded in
        self.visit_minutes: dict[str, Tally] = {}  # by visit type, at a pace of 1
        self.all_visits = Tally()
        self.provider_pace: dict[str, Tally] = {}
        self.intake = Tally()
        self.handover = Tally()
        self.cleaning = Tally()
        self.errors: list[float] = []  # the look-ahead's relative errors, all situations
        self.situation_errors: dict[int, list[float]] = {}
        self.appointment_offsets: list[float] = []
        self.early_rooming: list[float] = []
        self.habits: dict[str, list[int]] = {}  # provider -> patients in rooms at roomings
        self.rooms_used: dict[str, tuple[list[str], int]] = {}
        self.last_day: dict[str, int] = {}  # visit type or provider -> the day last seen
        self.arrivals: dict[str, list[float]] = {kind: [0.0] * HOURS for kind in ARRIVAL_KINDS}
        self.no_shows: list[float] = [0.0] * HOURS
        self.roomings: list[float] = [0.0] * 24
        self.overtakes: list[float] = [0.0] * 24
        self.passed: list[float] = [0.0] * 24
        self.walkouts: list[float] = [0.0] * len(WALKOUT_BANDS)
        self.waiting_minutes: list[float] = [0.0] * len(WALKOUT_BANDS)
        self._json: str | None = None  # the profile's JSON, made once a day (checkpoints)

    # -------------------------------------------------------------- learning

    def learn_day(self, estimator: WaitEstimator, log: DayLog) -> None:
        """Fold a finished day in: its estimator's observations and its log."""
        self.days += 1
        day = self.days
        self._fold_means(self.visit_minutes, estimator.visit_minutes, "type:", day)
        self._fold_means(self.provider_pace, estimator.provider_pace, "provider:", day)
        for mine, theirs in ((self.all_visits, estimator.all_visits),
                             (self.intake, estimator.intake),
                             (self.handover, estimator.handover),
                             (self.cleaning, estimator.cleaning)):
            mine.fold(theirs.total, theirs.count)
        # distributions: today's window holds what was remembered this morning (not the
        # estimator's fixed priors), pushed out as far as today's observations reached
        self.errors = sketch(estimator.observed("errors")) or self.errors
        self.situation_errors = {k: sketch(e) for k, e in
                                 sorted(estimator.situation_errors.items())}
        self.appointment_offsets = sketch(estimator.observed("offsets")) \
            or self.appointment_offsets
        self.early_rooming = sketch(estimator.observed("early")) or self.early_rooming
        for someone, habit in estimator.habits.items():
            if someone is not None and habit.observed:
                self.habits[someone] = list(habit.observed)[-HABIT_MEMORY:]
        for provider, used in estimator.rooms_used.items():
            self.rooms_used[provider] = (sorted(used.rooms), used.count)
        for kind, counts in log.arrivals.items():
            self.arrivals[kind] = _decayed(self.arrivals[kind], counts)
        self.no_shows = _decayed(self.no_shows, log.no_shows)
        self.roomings = _decayed(self.roomings, log.roomings)
        self.overtakes = _decayed(self.overtakes, log.overtakes)
        self.passed = _decayed(self.passed, log.passed)
        self.walkouts = _decayed(self.walkouts, log.walkouts)
        self.waiting_minutes = _decayed(self.waiting_minutes, log.waiting_minutes)
        self._bound()
        self._json = None

    def _fold_means(self, mine: dict[str, Tally], today: dict[str, RunningMean], prefix: str,
                    day: int) -> None:
        """Fold today's observations of each key in; every key remembered decays."""
        for key, mean in today.items():
            if mean.count:
                mine.setdefault(key, Tally())
                self.last_day[prefix + key] = day
        for key, tally in mine.items():
            seen = today.get(key)
            if seen is None:
                tally.fold(0.0, 0.0)
            else:
                tally.fold(seen.total, seen.count)

    def _bound(self) -> None:
        """Keep the MAX_KEYS most recently seen visit types and providers."""
        def recent(prefix: str, keys: Iterable[str]) -> list[str]:
            return sorted(keys, key=lambda k: -self.last_day.get(prefix + k, 0))

        for key in recent("type:", self.visit_minutes)[MAX_KEYS:]:
            del self.visit_minutes[key]
            self.last_day.pop("type:" + key, None)
        for key in recent("provider:", self.provider_pace)[MAX_KEYS:]:
            del self.provider_pace[key]
            self.last_day.pop("provider:" + key, None)
        for key in recent("provider:", self.habits)[MAX_KEYS:]:
            del self.habits[key]
        for key in recent("provider:", self.rooms_used)[MAX_KEYS:]:
            del self.rooms_used[key]

    # --------------------------------------------------------------- priming

    def prime(self, estimator: WaitEstimator) -> None:
        """Start a fresh estimator from what past days showed (nothing without history)."""
        if self.days == 0:
            return
        for visit_type, tally in self.visit_minutes.items():
            if tally.mean is not None:
                estimator.visit_minutes[visit_type] = tally.prior(MEAN_WEIGHT)
        if self.all_visits.mean is not None:
            estimator.all_visits = self.all_visits.prior(MEAN_WEIGHT)
        for provider, tally in self.provider_pace.items():
            if tally.mean is not None:
                estimator.provider_pace[provider] = tally.prior(PACE_WEIGHT)
        if self.intake.mean is not None:
            estimator.intake = self.intake.prior(MEAN_WEIGHT)
        if self.handover.mean is not None:
            estimator.handover = self.handover.prior(MEAN_WEIGHT)
        if self.cleaning.mean is not None:
            estimator.cleaning = self.cleaning.prior(MEAN_WEIGHT)
        if self.errors:
            estimator.errors = deque(self.errors, maxlen=ERROR_WINDOW)
            estimator.prior_seeds["errors"] = 0
        estimator.situation_errors = {k: deque(e, maxlen=SITUATION_WINDOW)
                                      for k, e in self.situation_errors.items()}
        if self.appointment_offsets:
            estimator.appointment_offsets = deque(self.appointment_offsets,
                                                  maxlen=SITUATION_WINDOW)
            estimator.prior_seeds["offsets"] = 0
        if self.early_rooming:
            estimator.early_rooming = deque(self.early_rooming,
                                            maxlen=estimator.early_rooming.maxlen)
            estimator.prior_seeds["early"] = 0
        for provider, observed in self.habits.items():
            habit = estimator.habits[provider] = ProviderHabits()
            habit.observed.extend(observed)
        for provider, (rooms, count) in self.rooms_used.items():
            estimator.rooms_used[provider] = RoomsUsed(set(rooms), count)
        estimator.walkout_hazard = self.walkout_hazard()

    def walkout_hazard(self) -> tuple[float, ...] | None:
        """Walk-outs per minute of waiting in each band of minutes waited; a band with
        less than an hour of waiting seen takes the rate of all waiting. None before any
        walk-out."""
        total = sum(self.walkouts)
        if total <= 0:
            return None
        overall = total / max(1.0, sum(self.waiting_minutes))
        return tuple(walkouts / minutes if minutes >= WALKOUT_EXPOSURE else overall
                     for walkouts, minutes in zip(self.walkouts, self.waiting_minutes,
                                                  strict=True))

    # ------------------------------------------------------------ reading

    def arrivals_per_hour(self, kind: str, weekday: int, hour: int) -> float:
        """Arrivals of ``kind`` this clinic has had in that hour of that weekday, per day
        of that weekday remembered (decayed)."""
        return self.arrivals[kind][weekday * 24 + hour]

    def overtaking(self, hour: int) -> tuple[float, float]:
        """(share of roomings that passed someone ahead in the queue's order, how many they
        passed on average) at that hour of the day."""
        roomings, overtakes = self.roomings[hour], self.overtakes[hour]
        if roomings <= 0:
            return 0.0, 0.0
        return overtakes / roomings, (self.passed[hour] / overtakes if overtakes else 0.0)

    # ------------------------------------------------------------ the document

    def to_dict(self) -> dict[str, Any]:
        document: dict[str, Any] = {"v": PROFILE_VERSION, "days": self.days}
        for name in _TALLIES:
            document[name] = getattr(self, name).to_list()
        for name in _TALLY_TABLES:
            document[name] = {k: t.to_list() for k, t in getattr(self, name).items()}
        for name, attribute in _LISTS.items():
            document[name] = getattr(self, attribute)
        document["situation_errors"] = {str(k): e for k, e in self.situation_errors.items()}
        document["habits"] = self.habits
        document["rooms_used"] = {k: [rooms, count]
                                  for k, (rooms, count) in self.rooms_used.items()}
        document["last_day"] = self.last_day
        document["arrivals"] = self.arrivals
        return document

    def to_json(self) -> orjson.Fragment:
        """``to_dict`` as JSON, made once a day: the profile changes only at a day's end,
        and the checkpoint writes it far more often."""
        if self._json is None:
            self._json = orjson.dumps(self.to_dict()).decode()
        return orjson.Fragment(self._json)

    @classmethod
    def from_dict(cls, document: dict[str, Any]) -> ClinicProfile:
        if document.get("v") != PROFILE_VERSION:
            raise ValueError(f"unknown profile version {document.get('v')!r}")
        profile = cls()
        profile.days = document["days"]
        for name in _TALLIES:
            setattr(profile, name, _tally(document[name]))
        for name in _TALLY_TABLES:
            setattr(profile, name, {k: _tally(v) for k, v in document[name].items()})
        for name, attribute in _LISTS.items():
            setattr(profile, attribute, list(document[name]))
        profile.situation_errors = {int(k): list(e)
                                    for k, e in document["situation_errors"].items()}
        profile.habits = {k: list(v) for k, v in document["habits"].items()}
        profile.rooms_used = {k: (list(rooms), count)
                              for k, (rooms, count) in document["rooms_used"].items()}
        profile.last_day = dict(document["last_day"])
        profile.arrivals = {k: list(v) for k, v in document["arrivals"].items()}
        return profile


# the profile's document: simple fields by name (document key -> attribute for lists)
_TALLIES = ("all_visits", "intake", "handover", "cleaning")
_TALLY_TABLES = ("visit_minutes", "provider_pace")
_LISTS = {"errors": "errors", "offsets": "appointment_offsets", "early": "early_rooming",
          "no_shows": "no_shows", "roomings": "roomings", "overtakes": "overtakes",
          "passed": "passed", "walkouts": "walkouts", "waiting_minutes": "waiting_minutes"}


def _decayed(remembered: list[float], today: list[int] | list[float]) -> list[float]:
    return [round(r * DECAY + t, 3) for r, t in zip(remembered, today, strict=True)]


class RememberingFlow(ClinicFlow):
    """A ``ClinicFlow`` that remembers the clinic from day to day (``ClinicProfile``).

    ``zone`` is the clinic's time zone: weekdays and hours in the profile are the
    clinic's (without it, those of the events' own offsets).
    """

    def __init__(self, clinic_id: str, zone: tzinfo | None = None,
                 profile: ClinicProfile | None = None) -> None:
        super().__init__(clinic_id)
        self.zone = zone
        self.profile = profile if profile is not None else ClinicProfile()
        self.day_log = DayLog()
        self._day_started_at: datetime | None = None

    @classmethod
    def carrying_on(cls, flow: ClinicFlow, zone: tzinfo | None = None) -> RememberingFlow:
        """A plain ``ClinicFlow`` (restored from a checkpoint written before clinics
        remembered) carried on with its state, from today on remembering: its day is
        the one its operations view is in."""
        remembering = cls(flow.clinic_id, zone)
        remembering.__dict__.update(vars(flow))
        remembering.day_started_at = flow.day.day_started_at
        return remembering

    @property
    def day_started_at(self) -> datetime | None:
        """When the clinic's current day began (its first fact); None before any."""
        return self._day_started_at

    @day_started_at.setter
    def day_started_at(self, at: datetime | None) -> None:
        self._day_started_at = at

    def _new_period(self, at: datetime) -> None:
        """Start a new day first when this fact begins one (only the first fact of a
        five-minute period can: ``ClinicFlow.apply``)."""
        starts = day_start(self._day_started_at, self.last_event_at, at)
        if starts is not None:
            self.start_day(starts)

    def start_day(self, at: datetime) -> None:
        """Fold the day that ended into the profile; start today's estimator from it."""
        if self._day_started_at is not None:
            self.profile.learn_day(self.estimator, self.day_log)
            self.estimator = WaitEstimator()
            self.profile.prime(self.estimator)
            self.provider_free_since = {}  # yesterday's last checkout is not a hand-over
            self.day_log = DayLog()
        self.day_started_at = at

    # ------------------------------------------------------------ the day's log
    # (the facts the log notes, each then applied as ClinicFlow applies it)

    def _local(self, at: datetime) -> datetime:
        return at.astimezone(self.zone) if self.zone is not None else at

    def _count(self, counts: list[int], at: datetime) -> None:
        local = self._local(at)
        counts[local.weekday() * 24 + local.hour] += 1

    def _arrived(self, p: ev.PatientArrived, at: datetime, event_id: str) -> Change:
        change = ClinicFlow._arrived(self, p, at, event_id)
        if not change.duplicate:
            kind = ("urgent" if p.priority == "urgent"
                    else "walk_in" if p.scheduled_at is None else "scheduled")
            self._count(self.day_log.arrivals[kind], at)
        return change

    def _no_show(self, p: ev.PatientNoShow, at: datetime, event_id: str) -> Change:
        self._count(self.day_log.no_shows, p.scheduled_at)
        return ClinicFlow._no_show(self, p, at, event_id)

    def _roomed(self, p: ev.PatientRoomed, at: datetime, event_id: str) -> Change:
        """A wait ends: how long it was, and how many waiting patients were ahead of this
        one in the queue's order (urgent first, appointment, arrival) and are passed."""
        visit = self.clinic.visits.get(p.visit_id)
        waiting = VisitStatus.WAITING
        if visit is not None and visit.status is waiting:
            log = self.day_log
            if at >= visit.arrived_at:
                log.waited((at - visit.arrived_at).total_seconds() / 60.0, False)
            key = visit.queue_key()
            passed = 0
            for other in self.clinic.visits.values():
                if other.status is waiting and other.queue_key() < key:
                    passed += 1
            hour = self._local(at).hour
            log.roomings[hour] += 1
            if passed:
                log.overtakes[hour] += 1
                log.passed[hour] += passed
        return ClinicFlow._roomed(self, p, at, event_id)

    def _cancelled(self, p: ev.ArrivalCancelled, at: datetime, event_id: str) -> Change:
        """A wait ends without a rooming: cancelled, or a walk-out."""
        visit = self.clinic.visits.get(p.visit_id)
        if visit is not None and visit.status is VisitStatus.WAITING and at >= visit.arrived_at:
            self.day_log.waited((at - visit.arrived_at).total_seconds() / 60.0,
                                p.reason == "left_without_being_seen")
        return ClinicFlow._cancelled(self, p, at, event_id)
