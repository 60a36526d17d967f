"""Wait estimation: expected minutes until each waiting patient is roomed, with an
80% interval. Pure: no I/O, no clock; used live and by ``clinicflow replay``.

The model, in the clinic's words:

1. **Look ahead on today's floor.** From the current floor (who waits in what
   order, which rooms are free, cleaning or occupied and for how long, which
   provider is with whom, who runs late) we play the next hours forward with
   expected durations: a patient is roomed when a room is free *and* their
   provider can take another patient into a room (providers keep at most a
   few patients roomed at once; how many is learned from the day). Rooming
   sets off the provider's visit, which frees the room for cleaning later.
   This reacts at once to every floor event: a freed room, a provider
   running late, an urgent arrival jumping the queue, someone leaving.

2. **Learn the day's pace.** Visit lengths per visit type, each provider's
   pace relative to the others, intake (roomed to provider), room cleaning
   time and providers' rooming habits are learned from the day's own
   events, starting from priors so the first patient already gets an
   estimate.

3. **Learn how wrong the look-ahead is, per situation.** What the look-ahead
   cannot see (patients who arrive later but go first, nurses' reaction time,
   walk-outs) shows up as a systematic error. Every roomed visit's past
   estimates are compared with its true wait, sampled as the backtest
   samples them, and filed under the situation the estimate was made in
   (how many were ahead, how long the look-ahead said, whether the provider
   or the clinic had announced a delay: ``situation``). The median of a
   situation's errors corrects the estimate and their 10th and 90th
   percentiles give the 80% interval, shrunk towards the whole day's errors
   while the situation has been seen only a few times. Errors are kept
   relative to the size of the estimate, so the interval widens with the
   wait. A routine patient who came early to a
   floor that keeps up is roomed when their appointment allows: their range
   is the minutes to the appointment plus the spread of how long before or
   after their appointment such patients were roomed today, which is narrow.

A clinic's past days (``shared.floor.memory``) can prime all of this: the
estimator then starts the day with the clinic's own paces, errors and habits,
and expects patients who may walk out to hold the floor less.

Cost per event grows with the clinic's open visits and rooms, not with the
day's history: learned statistics are running sums and bounded windows.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import chain, islice

from shared.floor.model import Clinic, RoomState, StageTime, Visit, VisitStatus

# Priors: typical minutes a provider spends per visit type (provider in -> checkout).
VISIT_TYPE_PRIOR_MINUTES: dict[str, float] = {
    "new_patient": 30.0, "new": 30.0, "consultation": 30.0, "consult": 30.0,
    "follow_up": 15.0, "followup": 15.0, "follow-up": 15.0, "return": 15.0,
    "physical": 40.0, "annual": 40.0, "wellness": 30.0,
    "procedure": 30.0, "minor_procedure": 30.0,
    "urgent": 15.0, "sick": 15.0, "walk_in": 15.0, "acute": 15.0,
}  # fmt: skip
DEFAULT_VISIT_MINUTES = 20.0
PRIOR_WEIGHT = 2.0  # how many observations a prior is worth
INTAKE_PRIOR_MINUTES = 5.0
CLEANING_PRIOR_MINUTES = 5.0
HANDOVER_PRIOR_MINUTES = 1.0  # provider finishes one patient -> starts the next
ROOMS_PER_PROVIDER_PRIOR = 2
SCALE_MINUTES = 10.0  # errors are relative to (estimate + SCALE)
ERROR_WINDOW = 400
SAMPLE_EVERY = timedelta(minutes=5)
# A prior spread of relative errors (about +-50%), displaced as real errors arrive.
PRIOR_ERRORS = (-0.45, -0.25, -0.1, 0.0, 0.15, 0.35, 0.6, 0.9)
EARLY_ROOMING_PRIOR_MINUTES = -10.0
SITUATION_WINDOW = 200  # errors kept per situation
AT_APPOINTMENT = 0  # the situation of a patient roomed as soon as their appointment allows
# minutes from appointment to rooming of such patients, before the day shows its own
DELAYED = 32  # added to the situation of a patient whose provider or clinic runs late
_POSITION_BANDS = (1, 2, 2, 3, 3, 3, 3, 4)  # patients ahead: 0, 1-2, 3-6, 7 or more
_WAIT_BANDS = (0, 4, 8, 12)  # the look-ahead's wait: under 10 minutes, 10-20, 20-30, 30+
PRIOR_OFFSETS = (-10.0, -8.0, -7.0, -6.0, -5.0, -4.0, -2.0, 2.0)
SITUATION_WEIGHT = 20.0  # errors a situation needs to count as much as the whole day's
HORIZON_GUARD = 500  # never simulate more patients than this ahead (pathological queues)
# a provider with no patient on the floor who started one this recently is between
# patients, not gone: a walk-in for the first available provider may go to them
BETWEEN_PATIENTS = timedelta(minutes=90)
POOL_LEARNING_ROOMINGS = 6  # roomings before a provider's usual rooms are trusted as a pool
# bands of minutes waited (0-30, 30-60, 60-90, 90+) for the chance of walking out
WALKOUT_BANDS = (0.0, 30.0, 60.0, 90.0)


@dataclass(slots=True)
class RunningMean:
    """A mean shrunk towards a prior: (prior*weight + sum) / (weight + n).

    ``value`` is kept up to date by ``add`` rather than worked out at each read: the
    look-ahead reads it far more often than the day adds to it."""

    prior: float
    weight: float = PRIOR_WEIGHT
    total: float = 0.0
    count: int = 0
    value: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.value = (self.prior * self.weight + self.total) / (self.weight + self.count)

    def add(self, value: float) -> None:
        self.total += value
        self.count += 1
        self.value = (self.prior * self.weight + self.total) / (self.weight + self.count)


@dataclass(slots=True)
class WaitEstimate:
    """An estimate for one waiting visit, made at ``made_at``."""

    visit_id: str
    made_at: datetime
    wait_minutes: float
    low: float
    high: float
    position: int
    raw_minutes: float  # the look-ahead before error correction


@dataclass(slots=True)
class _History:
    arrived_at: datetime
    # (made_at, raw, situation)
    estimates: list[tuple[datetime, float, int]] = field(default_factory=list)


@dataclass(slots=True)
class RoomsUsed:
    """The rooms a provider's patients were put in today."""

    rooms: set[str] = field(default_factory=set)
    count: int = 0


class ProviderHabits:
    """How many patients a provider keeps roomed at once, learned from roomings."""

    __slots__ = ("_capacity", "observed")

    def __init__(self) -> None:
        self.observed: deque[int] = deque(maxlen=30)
        self._capacity: int | None = None  # worked out again after each observation

    def observe(self, in_rooms: int) -> None:
        self.observed.append(in_rooms)
        self._capacity = None

    def capacity(self) -> int:
        """Patients this provider may have in rooms at once.

        What is seen at rooming is a lower bound (a quiet day never shows the
        limit), so the prior stands until the day shows more.
        """
        if self._capacity is None:
            if not self.observed:
                self._capacity = ROOMS_PER_PROVIDER_PRIOR
            else:
                ordered = sorted(self.observed)
                high = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
                self._capacity = max(ROOMS_PER_PROVIDER_PRIOR, high)
        return self._capacity


class WaitEstimator:
    """Learns one clinic's pace and estimates every waiting visit's wait."""

    def __init__(self) -> None:
        self.visit_minutes: dict[str, RunningMean] = {}
        self.all_visits = RunningMean(DEFAULT_VISIT_MINUTES)
        self.provider_pace: dict[str, RunningMean] = {}  # observed / expected, prior 1
        self.intake = RunningMean(INTAKE_PRIOR_MINUTES)
        self.handover = RunningMean(HANDOVER_PRIOR_MINUTES)
        self.active_providers: set[str] = set()  # providers who have started seeing patients
        self.last_seen: dict[str, datetime] = {}  # when each last started seeing a patient
        self.cleaning = RunningMean(CLEANING_PRIOR_MINUTES)
        self.habits: dict[str | None, ProviderHabits] = {}
        self.rooms_used: dict[str, RoomsUsed] = {}
        self.errors: deque[float] = deque(PRIOR_ERRORS, maxlen=ERROR_WINDOW)
        # the same errors by the situation the estimate was made in (``situation``)
        self.situation_errors: dict[int, deque[float]] = {}
        # minutes from appointment to rooming, for estimates made AT_APPOINTMENT
        self.appointment_offsets: deque[float] = deque(PRIOR_OFFSETS, maxlen=SITUATION_WINDOW)
        self._offset_quantiles: tuple[float, float, float] | None = None
        self._quantiles: tuple[float, float, float] | None = None
        self._situation_quantiles: dict[int, tuple[float, float, float]] = {}
        self._own_quantiles: dict[int, tuple[float, float, float]] = {}  # before shrinking
        # the windows' values in order (``_ordered``), kept in step as values come
        self._sorted: dict[str | int, list[float]] = {}
        self._histories: dict[str, _History] = {}
        self.recent_waits: deque[float] = deque(maxlen=5)  # for the rolling-average comparison
        # minutes from appointment to rooming for patients who came early: how early
        # this clinic rooms a patient ahead of their appointment
        self.early_rooming: deque[float] = deque([EARLY_ROOMING_PRIOR_MINUTES] * 3, maxlen=40)
        self._earliest: float | None = None
        # how many of the priors the windows start with are still in them (at their left):
        # what the day itself observed is the rest (``shared.floor.memory`` keeps that)
        self.prior_seeds: dict[str, int] = {"errors": len(PRIOR_ERRORS),
                                            "offsets": len(PRIOR_OFFSETS), "early": 3}
        # walk-outs per minute of waiting in each of WALKOUT_BANDS, as the clinic's past
        # days showed them (``shared.floor.memory``); None: not known, nobody walks out
        self.walkout_hazard: tuple[float, ...] | None = None
        # expected_visit_minutes per (visit type, provider), until a visit length is learned
        self._minutes: dict[tuple[str | None, str | None], float] = {}

    # --------------------------------------------------------------- learning

    def observe_stage(self, stage: StageTime) -> None:
        """Learn from a finished stage of a visit."""
        minutes = max(0.0, stage.minutes)
        if stage.stage == "provider_to_checkout":
            expected = self.expected_visit_minutes(stage.visit_type, None)
            if stage.visit_type is not None:
                mean = self.visit_minutes.get(stage.visit_type)
                if mean is None:
                    prior = VISIT_TYPE_PRIOR_MINUTES.get(stage.visit_type.lower(),
                                                         self.all_visits.value)
                    mean = self.visit_minutes[stage.visit_type] = RunningMean(prior)
                pace = self.provider_pace.get(stage.provider_id or "")
                mean.add(minutes / (pace.value if pace else 1.0))
            self.all_visits.add(minutes)
            if stage.provider_id is not None and expected > 0:
                pace = self.provider_pace.setdefault(stage.provider_id, RunningMean(1.0, 3.0))
                pace.add(min(4.0, max(0.25, minutes / expected)))
            self._minutes.clear()  # visit lengths and paces moved: so do expectations
        elif stage.stage == "roomed_to_checkout":
            # no provider-in recorded: the room time less the intake is the visit
            if stage.visit_type is not None:
                self.observe_stage(StageTime("provider_to_checkout",
                                             max(1.0, minutes - self.intake.value),
                                             stage.provider_id, stage.visit_type))
        elif stage.stage == "room_turnover":
            self.cleaning.add(min(minutes, 120.0))
        elif stage.stage == "arrival_to_roomed":
            self.recent_waits.append(minutes)

    def observe_provider_in(self, provider_id: str | None, roomed_at: datetime | None,
                            provider_free_since: datetime | None, at: datetime) -> None:
        """Learn intake and hand-over from a provider starting with a patient.

        Only a patient roomed while their provider was free shows the nurse's
        intake alone; otherwise the patient waited in the room for the provider,
        and what shows is how quickly the provider moved on to them.
        """
        if provider_id is not None:
            self.active_providers.add(provider_id)
            self.last_seen[provider_id] = at
        if roomed_at is None:
            return
        if provider_free_since is None or provider_free_since <= roomed_at:
            self.intake.add(min((at - roomed_at).total_seconds() / 60.0, 60.0))
        else:
            self.handover.add(min((at - provider_free_since).total_seconds() / 60.0, 30.0))

    def observe_rooming(self, clinic: Clinic, visit: Visit) -> None:
        """Learn the provider's rooming habit and score the visit's past estimates."""
        provider = visit.provider_id
        in_rooms, waiting = 0, VisitStatus.WAITING
        for v in clinic.visits.values():
            if v.provider_id == provider and v.status is not waiting:
                in_rooms += 1
        self.habits.setdefault(provider, ProviderHabits()).observe(max(1, in_rooms))
        if provider is not None and visit.room_id is not None:
            used = self.rooms_used.setdefault(provider, RoomsUsed())
            used.rooms.add(visit.room_id)
            used.count += 1
        if (visit.scheduled_at is not None and visit.roomed_at is not None and not visit.late
                and visit.arrived_at < visit.scheduled_at):
            self._extend("early", self.early_rooming,
                         [(visit.roomed_at - visit.scheduled_at).total_seconds() / 60])
            self._earliest = None
        history = self._histories.pop(visit.visit_id, None)
        if history is None or visit.roomed_at is None or not history.estimates:
            return
        roomed_at = visit.roomed_at
        offset = None if visit.scheduled_at is None \
            else (roomed_at - visit.scheduled_at).total_seconds() / 60.0
        offsets: list[float] = []
        errors: list[float] = []
        windows, own, ordered = self.situation_errors, self._own_quantiles, self._sorted
        for made_at, raw, situation in history.estimates:
            if made_at < roomed_at:
                if situation == AT_APPOINTMENT and offset is not None:
                    offsets.append(offset)
                    continue
                error = ((roomed_at - made_at).total_seconds() / 60.0 - raw) \
                    / (raw + SCALE_MINUTES)
                errors.append(error)
                window = windows.get(situation)
                if window is None:
                    window = windows[situation] = deque(maxlen=SITUATION_WINDOW)
                window.append(error)
                # a situation's window is short: sorted again when next needed
                own.pop(situation, None)
                ordered.pop(situation, None)
        if offsets:
            self._extend("offsets", self.appointment_offsets, offsets)
            self._offset_quantiles = None
        if errors:
            self._extend("errors", self.errors, errors)
            self._quantiles = None
            self._situation_quantiles.clear()

    def learn_error(self, situation: int, error: float) -> None:
        """File the relative error of an estimate made in ``situation``."""
        window = self.situation_errors.get(situation)
        if window is None:
            window = self.situation_errors[situation] = deque(maxlen=SITUATION_WINDOW)
        window.append(error)
        self._own_quantiles.pop(situation, None)
        self._sorted.pop(situation, None)
        self._extend("errors", self.errors, [error])
        self._quantiles = None
        self._situation_quantiles.clear()

    def _extend(self, key: str | int, window: deque[float], values: list[float]) -> None:
        """Append to a bounded window, keeping its sorted copy (if one was made) in step
        and counting the priors pushed out of it."""
        pushed = len(window) + len(values) - (window.maxlen or 0)
        if pushed > 0 and isinstance(key, str):
            seeds = self.prior_seeds.get(key)
            if seeds:
                self.prior_seeds[key] = max(0, seeds - pushed)
        ordered = self._sorted.get(key)
        if ordered is not None:
            new = values
            if pushed > 0:
                bisect_left = bisect.bisect_left
                for old in islice(window, pushed):
                    del ordered[bisect_left(ordered, old)]
                if pushed > len(window):  # some of the new values are pushed out at once
                    new = values[pushed - len(window):]
            insort = bisect.insort
            for value in new:
                insort(ordered, value)
        window.extend(values)

    def _ordered(self, key: str | int, window: deque[float]) -> list[float]:
        """A window's values in order, made once and then kept in step by ``_extend``."""
        ordered = self._sorted.get(key)
        if ordered is None:
            ordered = self._sorted[key] = sorted(window)
        return ordered

    def observed(self, name: str) -> list[float]:
        """What a window (``errors``, ``offsets``, ``early``) holds beyond its priors."""
        window = {"errors": self.errors, "offsets": self.appointment_offsets,
                  "early": self.early_rooming}[name]
        return list(window)[self.prior_seeds.get(name, 0):]

    def forget(self, visit_id: str) -> None:
        """A visit ended without being roomed: drop its estimate history."""
        self._histories.pop(visit_id, None)

    # ------------------------------------------------------------- durations

    def expected_visit_minutes(self, visit_type: str | None, provider_id: str | None) -> float:
        """Expected provider time for a visit of this type with this provider."""
        key = (visit_type, provider_id)
        minutes = self._minutes.get(key)
        if minutes is None:
            minutes = self._minutes[key] = self._expected_visit_minutes(visit_type, provider_id)
        return minutes

    def _expected_visit_minutes(self, visit_type: str | None, provider_id: str | None) -> float:
        if visit_type is not None and visit_type in self.visit_minutes:
            base = self.visit_minutes[visit_type].value
        elif visit_type is not None and visit_type.lower() in VISIT_TYPE_PRIOR_MINUTES:
            # scale the prior by how the day's visits compare with their priors
            base = VISIT_TYPE_PRIOR_MINUTES[visit_type.lower()]
        else:
            base = self.all_visits.value
        pace = self.provider_pace.get(provider_id or "") if provider_id else None
        return base * (pace.value if pace else 1.0)

    # ------------------------------------------------------------- estimating

    def quantiles(self) -> tuple[float, float, float]:
        """(10th, 50th, 90th) percentiles of the relative errors seen today."""
        if self._quantiles is None:
            self._quantiles = _quantiles(self._ordered("errors", self.errors))
        return self._quantiles

    def offset_quantiles(self) -> tuple[float, float, float]:
        """(10th, 50th, 90th) percentiles of the minutes from appointment to rooming of
        patients estimated to be roomed as soon as their appointment allowed."""
        if self._offset_quantiles is None:
            self._offset_quantiles = _quantiles(self._ordered("offsets",
                                                              self.appointment_offsets))
        return self._offset_quantiles

    def situation_quantiles(self, situation: int) -> tuple[float, float, float]:
        """The percentiles of the errors made in ``situation``, shrunk towards the day's:
        a situation seen a few times moves the range a little, one seen often sets it."""
        cached = self._situation_quantiles.get(situation)
        if cached is None:
            pooled = self.quantiles()
            errors = self.situation_errors.get(situation)
            if not errors:
                cached = pooled
            else:
                own = self._own_quantiles.get(situation)
                if own is None:
                    own = self._own_quantiles[situation] = _quantiles(
                        self._ordered(situation, errors))
                w = len(errors) / (len(errors) + SITUATION_WEIGHT)
                cached = (w * own[0] + (1 - w) * pooled[0], w * own[1] + (1 - w) * pooled[1],
                          w * own[2] + (1 - w) * pooled[2])
            self._situation_quantiles[situation] = cached
        return cached

    def earliest_rooming(self) -> float:
        """How many minutes before (negative) or after the appointment this clinic rooms
        an early patient at the soonest: a low percentile of what it did today."""
        if self._earliest is None:
            ordered = sorted(self.early_rooming)
            self._earliest = ordered[int(0.1 * (len(ordered) - 1))]
        return self._earliest

    def estimate(self, clinic: Clinic, now: datetime) -> list[WaitEstimate]:
        """Estimates for every waiting visit of ``clinic``, in queue order."""
        waiting = clinic.waiting()
        if not waiting:
            return []
        raw, situations = self._look_ahead(clinic, waiting, now)
        known, quantiles = self._situation_quantiles, self.situation_quantiles
        floor, ceil = math.floor, math.ceil
        offsets: tuple[float, float, float, float] | None = None  # earliest, o10, o50, o90
        spread = SCALE_MINUTES
        estimates = []
        for position, (visit, minutes, situation) in enumerate(
                zip(waiting, raw, situations, strict=True), start=1):
            if situation == 0:  # AT_APPOINTMENT
                # roomed when the appointment allows: minutes to it plus the usual offset
                if offsets is None:
                    offsets = (self.earliest_rooming(), *self.offset_quantiles())
                earliest, o10, o50, o90 = offsets
                to_appointment = minutes - earliest
                low = max(0.0, to_appointment + o10)
                high = max(low, to_appointment + o90)
                centre = min(max(to_appointment + o50, low), high)
                estimates.append(WaitEstimate(visit.visit_id, now, round(centre, 1),
                                              _down(low), _up(high), position, minutes))
                continue
            q10, q50, q90 = known.get(situation) or quantiles(situation)
            scale = minutes + spread
            # the centre within [low, high], low at least 0: written out, as this runs for
            # every waiting patient (and so are _down(low) and _up(high) below)
            low = minutes + q10 * scale
            if low < 0.0:
                low = 0.0
            high = minutes + q90 * scale
            if high < low:
                high = low
            centre = minutes + q50 * scale
            if centre < low:
                centre = low
            elif centre > high:
                centre = high
            estimates.append(WaitEstimate(visit.visit_id, now, round(centre, 1),
                                          floor(low * 10.0 + 1e-9) / 10.0,
                                          ceil(high * 10.0 - 1e-9) / 10.0, position, minutes))
        return estimates

    def record(self, clinic: Clinic, now: datetime) -> None:
        """Keep the look-ahead each waiting visit is given now, to learn from at rooming.

        Called at fixed points of the day's own events (``ClinicFlow.apply``: the
        first fact of every five minutes of clinic time), never at the whim of
        batching, so what is learned depends only on the floor's history: a replay,
        a rebuild and the live service learn exactly the same.
        """
        waiting = clinic.waiting()
        if not waiting:
            return
        raw, situations = self._look_ahead(clinic, waiting, now)
        histories = self._histories
        for visit, minutes, situation in zip(waiting, raw, situations, strict=True):
            history = histories.get(visit.visit_id)
            if history is None:
                history = histories[visit.visit_id] = _History(visit.arrived_at)
            made = history.estimates
            if made and made[-1][0] == now:
                made[-1] = (now, minutes, situation)
            elif len(made) < 200:
                made.append((now, minutes, situation))

    def _look_ahead(self, clinic: Clinic, waiting: list[Visit], now: datetime,
                    ) -> tuple[list[float], list[int]]:
        """Play the floor forward with expected durations; minutes until each of ``waiting``
        is roomed, in the same order, and the situation of each (``situation``).

        Runs at every recorded event with a floor of a few visits and rooms, so the
        fixed cost of a call counts: no closures, minutes since a time written out
        where they are needed, and delays (rare) worked out once per call.
        """
        intake = self.intake.value
        cleaning = self.cleaning.value
        earliest = self.earliest_rooming()
        remaining = _remaining
        visit_minutes_of = self.expected_visit_minutes
        memo = self._minutes  # what visit_minutes_of remembers, read without the call
        with_provider = VisitStatus.WITH_PROVIDER
        waiting_status = VisitStatus.WAITING

        # A clinic-wide delay stops the floor: nobody is roomed or seen until it ends.
        # A provider's delay before they have started means they are not in yet; once
        # they are seeing patients, "running behind" is already on the floor itself.
        delays = clinic.delays
        clinic_until = 0.0  # minutes until the clinic-wide delay ends
        absent: dict[str | None, float] = {}  # minutes until a provider not in yet arrives
        provider_set: set[str | None] = set()
        if delays:
            active = self.active_providers
            for provider, delay in delays.items():
                if provider is None:
                    clinic_until = max(0.0, -((now - delay.until).total_seconds() / 60.0))
                    continue
                provider_set.add(provider)
                if provider not in active:
                    absent[provider] = max(0.0, -((now - delay.until).total_seconds() / 60.0))
        absent_get = absent.get
        handover = self.handover.value

        # one pass over the open visits: who is in a room, and which providers are about
        seeing: list[Visit] = []  # with their provider now
        roomed: list[Visit] = []  # in a room, waiting for their provider
        first_available = False  # someone waits for whoever is free
        for visit in clinic.visits.values():
            status = visit.status
            if status is not waiting_status:
                (seeing if status is with_provider else roomed).append(visit)
                if visit.provider_id is not None:
                    provider_set.add(visit.provider_id)
            elif visit.provider_id:
                provider_set.add(visit.provider_id)
            else:
                first_available = True
        if first_available and self.last_seen:
            # only a walk-in for the first available provider may go to one between patients
            recently = now - BETWEEN_PATIENTS
            for provider, seen in self.last_seen.items():
                if seen > recently:
                    provider_set.add(provider)
        # those with their provider now come first: the provider finishes them before the
        # next; each group by rooming (a stable sort: ties keep the floor's order)
        if len(seeing) > 1:
            seeing.sort(key=lambda v: v.roomed_at or now)
        if len(roomed) > 1:
            roomed.sort(key=lambda v: v.roomed_at or now)
        provider_free: dict[str | None, float] = {}
        in_room_until: dict[str | None, list[float]] = {}
        occupant_end: dict[str, float] = {}
        for visit in chain(seeing, roomed):
            provider = visit.provider_id
            free = provider_free.get(provider)
            if free is None:
                # when the provider can start: after any delay of theirs or the clinic's
                free = max(clinic_until, absent_get(provider, 0.0)) if absent else clinic_until
            visit_minutes = memo.get((visit.visit_type, provider))
            if visit_minutes is None:
                visit_minutes = visit_minutes_of(visit.visit_type, provider)
            if visit.status is with_provider and visit.provider_in_at is not None:
                end = remaining(visit_minutes,
                                (now - visit.provider_in_at).total_seconds() / 60.0)
            else:
                start = max(free, remaining(intake,
                                            (now - (visit.roomed_at or now)).total_seconds()
                                            / 60.0))
                end = start + visit_minutes
            provider_free[provider] = max(free, end)
            ends = in_room_until.get(provider)
            if ends is None:
                in_room_until[provider] = [end]
            else:
                ends.append(end)
            if visit.room_id is not None:
                occupant_end[visit.room_id] = end

        # When each usable room is (expected to be) free, in minutes from now.
        room_free: dict[str, float] = {}
        ready, out_of_service, needs_cleaning = (RoomState.READY, RoomState.OUT_OF_SERVICE,
                                                 RoomState.NEEDS_CLEANING)
        for room in clinic.rooms.values():
            state = room.state
            if state is ready:
                room_free[room.room_id] = 0.0
            elif state is out_of_service:
                continue
            elif state is needs_cleaning:
                room_free[room.room_id] = remaining(cleaning,
                                                    (now - room.since).total_seconds() / 60.0)
            else:
                occupant = occupant_end.get(room.room_id)
                if occupant is None:
                    occupant = remaining(self.all_visits.value + intake,
                                         (now - room.since).total_seconds() / 60.0)
                room_free[room.room_id] = occupant + cleaning
        # no room in service (all out of service): estimate as if rooms were not tracked
        rooms_known = bool(room_free)
        # the same, as a list by position: the room search below runs in min/max/index
        room_ids = list(room_free)
        free_at = list(room_free.values())

        for provider in provider_set:
            starts = max(clinic_until, absent_get(provider, 0.0)) if absent else clinic_until
            free = provider_free.get(provider)
            if free is None:
                provider_free[provider] = max(0.0, starts)
                in_room_until[provider] = []
            else:
                provider_free[provider] = max(free, starts)
        if not provider_set:
            provider_set = {None}
            provider_free.setdefault(None, clinic_until)
            in_room_until.setdefault(None, [])
        for ends in in_room_until.values():
            if len(ends) > 1:
                ends.sort()
        # by name, the first-available "provider" (None) last
        named = [p for p in provider_set if p is not None]
        named.sort()
        providers: tuple[str | None, ...] = (*named, None) if None in provider_set \
            else tuple(named)

        # per-provider facts that do not change during the look-ahead, worked out once
        # positions of the rooms of providers trusted with their usual rooms
        pools: dict[str | None, list[int]] = {}
        capacity_of: dict[str | None, int] = {}
        rooms_used, habits = self.rooms_used, self.habits
        for provider in providers:
            usual = rooms_used.get(provider or "")
            # trust a provider's usual rooms once they keep coming back to the same few
            if usual is not None and usual.count >= max(POOL_LEARNING_ROOMINGS,
                                                        3 * len(usual.rooms)):
                trusted = [i for i, r in enumerate(room_ids) if r in usual.rooms]
                if trusted:
                    pools[provider] = trusted
            habit = habits.get(provider)
            if habit is not None:
                capacity_of[provider] = habit.capacity()
        pools_get, capacity_get, in_room_get = pools.get, capacity_of.get, in_room_until.get
        hazard, staying = self.walkout_hazard, _staying
        position_bands, wait_bands, no_gate = _POSITION_BANDS, _WAIT_BANDS, -math.inf
        delayed = clinic_until > 0.0  # everyone's situation is delayed while the clinic stops
        late = DELAYED
        bisect_right, insort = bisect.bisect_right, bisect.insort
        default_capacity = ROOMS_PER_PROVIDER_PRIOR

        result: list[float] = []
        situations: list[int] = []
        for count, visit in enumerate(waiting):
            if count >= HORIZON_GUARD:
                result.append(result[HORIZON_GUARD - 1])
                situations.append(situations[HORIZON_GUARD - 1])
                continue
            not_before = clinic_until
            gate = no_gate  # when the appointment lets a routine patient be roomed
            if visit.scheduled_at is not None and visit.priority != "urgent" and not visit.late:
                gate = -((now - visit.scheduled_at).total_seconds() / 60.0) + earliest
                if gate > not_before:
                    not_before = gate
            candidates = (visit.provider_id,) if visit.provider_id is not None else providers
            best_start = math.inf
            best_provider: str | None = None
            best_room = -1  # a position in room_ids; -1: none
            first_free = -1.0  # when the first room comes free (worked out once a visit)
            for provider in candidates:
                ends = in_room_get(provider)
                if ends is None:
                    ends = in_room_until[provider] = []
                capacity = capacity_get(provider, default_capacity)
                # the provider can take one more into a room once enough of theirs have left
                busy = len(ends) - bisect_right(ends, 0.0) if ends else 0
                start = 0.0 if busy < capacity else ends[len(ends) - capacity]
                if absent:
                    arrives = absent_get(provider, 0.0)
                    if arrives > 0.0 and busy and start < arrives:
                        start = arrives  # one patient is roomed ahead of a provider not in yet
                if not_before > start:
                    start = not_before
                room_at = -1
                if rooms_known:
                    # the room: the latest one already free by ``start``, leaving earlier
                    # ones; when none is free by then, wait for the first to come free
                    # (on ties the first room in the clinic's order)
                    pool = pools_get(provider)
                    if pool is None:
                        if first_free < 0.0:
                            first_free = min(free_at)
                        if first_free > start:
                            start, room_at = first_free, free_at.index(first_free)
                        else:
                            room_at = free_at.index(max(filter(start.__ge__, free_at)))
                    else:
                        room_at = _room_in_pool(pool, free_at, start)
                        if room_at < 0:
                            room_at = -room_at - 1
                            start = free_at[room_at]
                if start < best_start:
                    best_start, best_provider, best_room = start, provider, room_at
            start, provider, room_at = best_start, best_provider, best_room
            visit_minutes = memo.get((visit.visit_type, provider))
            if visit_minutes is None:
                visit_minutes = visit_minutes_of(visit.visit_type, provider)
            if hazard is not None:
                # a patient who may walk out before their turn holds the floor that much
                # less, in expectation, for those behind them
                visit_minutes *= staying(hazard,
                                         (now - visit.arrived_at).total_seconds() / 60.0, start)
            begin = start + intake  # once roomed and taken in, when the provider is free
            free = provider_free.get(provider, 0.0) + handover
            if free > begin:
                begin = free
            end = begin + visit_minutes
            provider_free[provider] = end
            ends = in_room_get(provider)
            if ends is None:
                in_room_until[provider] = [end]
            else:
                insort(ends, end)
            if room_at >= 0:
                free_at[room_at] = end + cleaning
            # situation(), written out: this runs for every waiting patient
            if start <= gate:
                code = 0  # AT_APPOINTMENT
            elif start < 10.0:
                code = position_bands[count if count < 8 else 7]
                if start < 0.0:
                    start = 0.0
            else:
                code = position_bands[count if count < 8 else 7] \
                    + wait_bands[int(start) // 10 if start < 40.0 else 3]
            if delayed or (delays and provider in delays):
                code += late
            result.append(start)
            situations.append(code)
        return result, situations

    def rolling_average(self) -> float | None:
        """What clinics show today: the mean of the last five finished waits."""
        if not self.recent_waits:
            return None
        return sum(self.recent_waits) / len(self.recent_waits)


def situation(count: int, at_appointment: bool, delayed: bool, minutes: float = 0.0) -> int:
    """The situation an estimate is made in, as a small number: errors are learned and
    ranges set per situation.

    * the look-ahead rooms the patient as soon as their appointment allows (a routine
      patient who came early to a floor that keeps up): little can go wrong; or
    * the patient waits for the floor, by how many are ahead (0, 1-2, 3-6, 7 or more):
      the further back, the more can overtake or run long; and by how long the
      look-ahead says (under 10 minutes, 10-20, 20-30, 30 or more): a short wait is
      mostly the nurse's call, a long one the sum of many visits;
    * and either way, whether their provider (or the whole clinic) has announced a delay.
    """
    if at_appointment:
        code = AT_APPOINTMENT
    else:
        code = _POSITION_BANDS[min(count, 7)] + _WAIT_BANDS[min(max(0, int(minutes)) // 10, 3)]
    return code + DELAYED if delayed else code


def _staying(hazard: tuple[float, ...], waited: float, more: float) -> float:
    """The chance that a patient who has waited ``waited`` minutes is still waiting
    ``more`` minutes later, with ``hazard`` walk-outs per minute in each WALKOUT_BAND."""
    exposure = 0.0
    end = waited + more
    bands = WALKOUT_BANDS
    for i, rate in enumerate(hazard):
        low = bands[i]
        high = bands[i + 1] if i + 1 < len(bands) else math.inf
        overlap = min(end, high) - max(waited, low)
        if overlap > 0.0:
            exposure += rate * overlap
    return math.exp(-exposure)


def _down(minutes: float) -> float:
    """A range's low end to a tenth of a minute, rounded down: a range that ends exactly
    where the wait does must still hold it once written to a tenth."""
    return math.floor(minutes * 10.0 + 1e-9) / 10.0


def _up(minutes: float) -> float:
    """A range's high end to a tenth of a minute, rounded up."""
    return math.ceil(minutes * 10.0 - 1e-9) / 10.0


def _quantiles(ordered: list[float]) -> tuple[float, float, float]:
    """(10th, 50th, 90th) percentiles of values in order, interpolated."""
    n = len(ordered)

    def q(p: float) -> float:
        position = p * (n - 1)
        lower = math.floor(position)
        upper = min(n - 1, lower + 1)
        return ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower)

    return q(0.1), q(0.5), q(0.9)


def _remaining(expected: float, elapsed: float) -> float:
    """Expected minutes left of an activity that has run ``elapsed`` of ``expected``.

    Past its expected length an activity is not about to end at once: a
    long-tailed duration keeps a remaining part that shrinks slowly.
    """
    if elapsed < expected:
        return max(expected - elapsed, 0.32 * expected)
    return min(expected, 0.32 * expected + 0.05 * (elapsed - expected))


def _room_in_pool(pool: list[int], free_at: list[float], start: float) -> int:
    """The position of the latest room of ``pool`` already free by ``start``; when none
    is, ``-1 - position`` of the first to come free (ties: the first in the pool)."""
    first_free, first_room = math.inf, -1
    latest, room_at = -math.inf, -1
    for i in pool:
        free = free_at[i]
        if free < first_free:
            first_free, first_room = free, i
        if latest < free <= start:
            latest, room_at = free, i
    if first_free > start:
        return -1 - first_room
    return room_at
