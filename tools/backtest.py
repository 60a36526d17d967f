"""``clinicflow backtest``: score wait estimates against a visit log, as
docs/replay-format.md says, and compare them with the rolling average.

Scoring, precisely:

* Every visit that was roomed (and whose arrival is in the log) is sampled at
  its arrival and every 5 minutes after while it waits: t = arrival + k*5 min
  for every t < roomed. A visit roomed at the instant it arrived has no
  sample.
* At a sample, the visit's current estimate is the latest one with
  ``ts <= t`` (for equal ``ts``, the later line). It is aged:
  predicted = max(0, wait_minutes - (t - ts)); ``low`` and ``high`` age
  alike. True = roomed - t, in minutes.
* A sample with no estimate yet is a *missing estimate*: counted, scored as
  a prediction of 0 minutes, and not covered (a missing estimate is not free).
* Rolling average on the same samples: the mean of the last 5 finished
  arrival-to-roomed waits at the visit's clinic (finished: roomed at or
  before t, ordered by rooming time), minus the time already waited, clipped
  at 0. Before any wait at the clinic has finished it predicts 0.
* MAE = mean |predicted - true| in minutes; ratio = estimator MAE / rolling
  average MAE (below 1.0 beats the rolling average); coverage = share of
  samples with low <= true <= high. Per clinic and overall (overall pools
  every sample, so a busy clinic weighs more than a quiet one).
* Width = high - low (aged); interval score = width + 10 x the miss (how far
  true lies below low or above high): the interval score of an 80% interval
  (Gneiting and Raftery 2007, width + 2/alpha x miss with alpha = 0.2), lower
  is better. It rewards a narrow range as much as a covering one: a range
  that is wide to be safe pays its width at every sample. A missing estimate
  is a range [0, 0].

Estimates carry no clinic, so visit ids must be unique within a log.
"""

from __future__ import annotations

import argparse
import bisect
import os
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import IO, Any

import orjson

SAMPLE_EVERY_SECONDS = 5 * 60
ROLLING_WINDOW = 5  # finished waits in the rolling average
INTERVAL_ALPHA = 0.2  # the ranges are 80% intervals: the score's miss penalty is 2/alpha
MISS_PENALTY = 2 / INTERVAL_ALPHA
# how far apart two minutes may be and still be the same minute: an aged range end is a
# difference of floats (6.4 - 5.0 = 1.4000000000000004), and a true wait of exactly 1.4
# lies within [1.4, 1.4]
EXACT = 1e-9

Replay = Callable[[Iterable[dict[str, Any]]], Iterator[dict[str, Any]]]
ErrorReport = Callable[[int, str], None]


@dataclass(frozen=True)
class Score:
    """Sums over the samples scored; the averages are derived from them.

    ``clinics`` breaks the overall score down per clinic (empty on the
    per-clinic scores themselves).
    """

    samples: int = 0
    visits: int = 0  # roomed visits with at least one sample
    missing_estimates: int = 0
    covered_samples: int = 0
    estimator_error_minutes: float = 0.0  # sum of |predicted - true|
    baseline_error_minutes: float = 0.0
    width_minutes: float = 0.0  # sum of high - low
    interval_score_minutes: float = 0.0  # sum of width + 10 x miss
    clinics: dict[str, Score] = field(default_factory=dict)

    def _per_sample(self, total: float) -> float | None:
        return total / self.samples if self.samples else None

    @property
    def estimator_mae(self) -> float | None:
        return self._per_sample(self.estimator_error_minutes)

    @property
    def baseline_mae(self) -> float | None:
        return self._per_sample(self.baseline_error_minutes)

    @property
    def ratio(self) -> float | None:
        """Estimator MAE / rolling-average MAE; None when the baseline made no error."""
        if not self.samples or self.baseline_error_minutes == 0:
            return None
        return self.estimator_error_minutes / self.baseline_error_minutes

    @property
    def coverage(self) -> float | None:
        return self._per_sample(self.covered_samples)

    @property
    def mean_width(self) -> float | None:
        """Mean width of the 80% ranges, in minutes."""
        return self._per_sample(self.width_minutes)

    @property
    def interval_score(self) -> float | None:
        """Mean interval score (width + 10 x miss) of the 80% ranges; lower is better."""
        return self._per_sample(self.interval_score_minutes)

    def __add__(self, other: Score) -> Score:
        clinics = dict(self.clinics)
        for clinic_id, score in other.clinics.items():
            clinics[clinic_id] = clinics[clinic_id] + score if clinic_id in clinics else score
        return Score(
            samples=self.samples + other.samples,
            visits=self.visits + other.visits,
            missing_estimates=self.missing_estimates + other.missing_estimates,
            covered_samples=self.covered_samples + other.covered_samples,
            estimator_error_minutes=self.estimator_error_minutes + other.estimator_error_minutes,
            baseline_error_minutes=self.baseline_error_minutes + other.baseline_error_minutes,
            width_minutes=self.width_minutes + other.width_minutes,
            interval_score_minutes=self.interval_score_minutes + other.interval_score_minutes,
            clinics=clinics,
        )

    def summary(self) -> dict[str, Any]:
        """The headline numbers, rounded for reading."""
        return {
            "estimator_mae": _round(self.estimator_mae),
            "rolling_average_mae": _round(self.baseline_mae),
            "ratio": _round(self.ratio, 3),
            "coverage": _round(self.coverage, 3),
            "mean_width": _round(self.mean_width),
            "interval_score": _round(self.interval_score),
            "samples": self.samples,
            "visits": self.visits,
            "missing_estimates": self.missing_estimates,
        }

    def to_dict(self) -> dict[str, Any]:
        """Overall summary plus one summary per clinic."""
        return {**self.summary(),
                "clinics": {c: s.summary() for c, s in sorted(self.clinics.items())}}


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def _instant(value: Any) -> float:
    """Seconds since the epoch of an ISO-8601 timestamp with a UTC offset."""
    if not isinstance(value, str):
        raise ValueError(f"timestamp must be a string, not {value!r}")
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError(f"timestamp has no UTC offset: {value!r}")
    return parsed.timestamp()


@dataclass(slots=True)
class _Waited:
    clinic_id: str
    arrived: float
    roomed: float | None = None


def _read_visits(log_events: Iterable[dict[str, Any]], on_error: ErrorReport | None,
                 ) -> dict[str, _Waited]:
    """Arrival and first rooming of every visit in the log (other events are not needed)."""
    visits: dict[str, _Waited] = {}
    for number, event in enumerate(log_events, start=1):
        kind = event.get("type") if isinstance(event, dict) else None
        if kind not in ("arrival", "roomed"):
            continue
        try:
            at = _instant(event["ts"])
            visit_id = str(event["visit_id"])
            if kind == "arrival":
                if visit_id not in visits:
                    visits[visit_id] = _Waited(str(event["clinic_id"]), at)
            else:
                visit = visits.get(visit_id)
                if visit is not None and visit.roomed is None and at >= visit.arrived:
                    visit.roomed = at
        except (KeyError, ValueError) as exc:
            if on_error is not None:
                on_error(number, f"log: {kind} line unusable: {exc}")
    return visits


def _read_estimates(estimates: Iterable[dict[str, Any]], on_error: ErrorReport | None,
                    ) -> dict[str, list[tuple[float, float, float, float]]]:
    """Each visit's estimates as (made at, wait, low, high), in time order (stable)."""
    by_visit: dict[str, list[tuple[float, int, float, float, float]]] = {}
    for number, estimate in enumerate(estimates, start=1):
        try:
            row = (_instant(estimate["ts"]), number, float(estimate["wait_minutes"]),
                   float(estimate["low"]), float(estimate["high"]))
            by_visit.setdefault(str(estimate["visit_id"]), []).append(row)
        except (KeyError, ValueError, TypeError) as exc:
            if on_error is not None:
                on_error(number, f"estimates: line unusable: {exc!r}")
    return {visit_id: [(e[0], e[2], e[3], e[4]) for e in sorted(rows)]
            for visit_id, rows in by_visit.items()}


class _RollingAverage:
    """The mean of the last finished waits at one clinic, as of any time."""

    def __init__(self, finished: list[tuple[float, float]]) -> None:
        finished.sort(key=lambda f: f[0])  # by rooming time; ties keep log order
        self.roomed_at = [f[0] for f in finished]
        waits = [f[1] for f in finished]
        self.means = [0.0] + [
            sum(waits[max(0, i - ROLLING_WINDOW):i]) / min(i, ROLLING_WINDOW)
            for i in range(1, len(waits) + 1)
        ]

    def predict(self, at: float, waited: float) -> float:
        """Minutes still to wait, as the rolling average would show at ``at``."""
        finished = bisect.bisect_right(self.roomed_at, at)
        if finished == 0:
            return 0.0
        return max(0.0, self.means[finished] - waited)


def score(
    log_events: Iterable[dict[str, Any]],
    estimates: Iterable[dict[str, Any]],
    on_error: ErrorReport | None = None,
) -> Score:
    """Score ``estimates`` (replay output dicts) against the visit log's true roomings.

    ``on_error(number, reason)`` hears of log or estimate records that cannot
    be used (they are skipped). Returns the overall score with per-clinic ones.
    """
    visits = _read_visits(log_events, on_error)
    by_visit = _read_estimates(estimates, on_error)
    finished: dict[str, list[tuple[float, float]]] = {}
    for visit in visits.values():
        if visit.roomed is not None:
            finished.setdefault(visit.clinic_id, []).append(
                (visit.roomed, (visit.roomed - visit.arrived) / 60.0))
    rolling = {clinic_id: _RollingAverage(waits) for clinic_id, waits in finished.items()}

    # clinic -> [samples, visits, missing, covered, est, base, width, interval score]
    tallies: dict[str, list[float]] = {}
    for visit_id, visit in visits.items():
        if visit.roomed is None or visit.roomed <= visit.arrived:
            continue
        tally = tallies.setdefault(visit.clinic_id, [0, 0, 0, 0, 0.0, 0.0, 0.0, 0.0])
        tally[1] += 1
        own = by_visit.get(visit_id, [])
        made_at = [e[0] for e in own]
        baseline = rolling[visit.clinic_id]
        at = visit.arrived
        while at < visit.roomed:
            true = (visit.roomed - at) / 60.0
            latest = bisect.bisect_right(made_at, at) - 1
            tally[0] += 1
            if latest < 0:
                tally[2] += 1
                predicted = lower = upper = 0.0
            else:
                ts, wait, low, high = own[latest]
                age = (at - ts) / 60.0
                predicted = max(0.0, wait - age)
                lower, upper = max(0.0, low - age), max(0.0, high - age)
                if lower - EXACT <= true <= upper + EXACT:
                    tally[3] += 1
            miss = (lower - true if true < lower - EXACT else
                    true - upper if true > upper + EXACT else 0.0)
            tally[6] += upper - lower
            tally[7] += upper - lower + MISS_PENALTY * miss
            tally[4] += abs(predicted - true)
            tally[5] += abs(baseline.predict(at, (at - visit.arrived) / 60.0) - true)
            at += SAMPLE_EVERY_SECONDS

    clinics = {
        clinic_id: Score(samples=int(t[0]), visits=int(t[1]), missing_estimates=int(t[2]),
                         covered_samples=int(t[3]), estimator_error_minutes=t[4],
                         baseline_error_minutes=t[5], width_minutes=t[6],
                         interval_score_minutes=t[7])
        for clinic_id, t in sorted(tallies.items())
    }
    overall = sum(clinics.values(), Score())
    return Score(overall.samples, overall.visits, overall.missing_estimates,
                 overall.covered_samples, overall.estimator_error_minutes,
                 overall.baseline_error_minutes, overall.width_minutes,
                 overall.interval_score_minutes, clinics)


def rolling_average_estimates(records: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """What a clinic's rolling-average board would show, in the replay output format.

    At each arrival, and for every waiting visit whenever a rooming changes the
    clinic's average: the mean of the last 5 finished waits minus the time
    already waited (0 before any wait has finished), with the range of those
    waits as the interval. It has ``replay_events``' signature, so it can
    stand in for the estimator (its ratio is then about 1.0).
    """
    waiting: dict[str, dict[str, float]] = {}  # clinic -> visit -> arrived at
    recent: dict[str, deque[float]] = {}

    def estimate(ts: str, visit_id: str, waited: float, waits: deque[float]) -> dict[str, Any]:
        if not waits:
            return {"ts": ts, "visit_id": visit_id, "wait_minutes": 0.0, "low": 0.0, "high": 0.0}
        mean = sum(waits) / len(waits)
        return {"ts": ts, "visit_id": visit_id, "wait_minutes": max(0.0, mean - waited),
                "low": max(0.0, min(waits) - waited), "high": max(0.0, max(waits) - waited)}

    for record in records:
        kind = record.get("type")
        if kind not in ("arrival", "roomed", "cancel"):
            continue
        try:
            clinic_id, visit_id = str(record["clinic_id"]), str(record["visit_id"])
            ts = record["ts"]
            at = _instant(ts)
        except (KeyError, ValueError):
            continue
        queue = waiting.setdefault(clinic_id, {})
        waits = recent.setdefault(clinic_id, deque(maxlen=ROLLING_WINDOW))
        if kind == "arrival" and visit_id not in queue:
            queue[visit_id] = at
            yield estimate(ts, visit_id, 0.0, waits)
        elif kind == "cancel":
            queue.pop(visit_id, None)
        elif kind == "roomed" and visit_id in queue:
            waits.append((at - queue.pop(visit_id)) / 60.0)
            for other, arrived in queue.items():
                yield estimate(ts, other, (at - arrived) / 60.0, waits)


# -------------------------------------------------------------- scenario runs


@dataclass(frozen=True)
class ScenarioResult:
    """One scenario shape scored over several seeds: pooled, and seed by seed."""

    scenario: str
    score: Score
    seed_scores: dict[int, Score]

    def seed_ratio_range(self) -> tuple[float, float] | None:
        ratios = [r for s in self.seed_scores.values() if (r := s.ratio) is not None]
        return (min(ratios), max(ratios)) if ratios else None


def _default_replay() -> Replay:
    from tools.replay import replay_events

    return replay_events


def tree_replay(tree: str) -> Replay:
    """The replay of another checkout of clinicflow (its ``tools.replay.replay_events``,
    run in ``tree`` with this interpreter): its estimator on the same simulated days, e.g.
    the estimator before a change. A tree whose replay predates ``room_out_of_service``
    lines is given them as the ``room.out_of_service`` facts its floor model applied live
    (``_TREE_REPLAY``); what else it does not know it skips, as its own replay would."""
    if not os.path.isfile(os.path.join(tree, "tools", "replay.py")):
        raise ValueError(f"{tree} is not a clinicflow checkout (no tools/replay.py)")

    def replay(records: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        body = b"".join(orjson.dumps(r) + b"\n" for r in records)
        done = subprocess.run(
            [sys.executable, "-c", _TREE_REPLAY], input=body, cwd=tree,
            env={**os.environ, "PYTHONPATH": tree}, capture_output=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"replay in {tree} failed: {done.stderr.decode()[-500:]}")
        return iter([orjson.loads(line) for line in done.stdout.splitlines() if line.strip()])

    return replay


# run by ``tree_replay`` in the other tree: JSON Lines in, its estimates out
_TREE_REPLAY = """
import sys
import orjson
import tools.replay as replay
from shared import events as ev
if "room_out_of_service" not in replay.REQUIRED:
    replay.REQUIRED["room_out_of_service"] = ("room_id",)
    known = replay.to_fact
    def to_fact(record, ticket_for):
        if record.get("type") == "room_out_of_service":
            return ev.RoomOutOfService(room_id=record["room_id"])
        return known(record, ticket_for)
    replay.to_fact = to_fact
records = [orjson.loads(line) for line in sys.stdin.buffer if line.strip()]
out = sys.stdout.buffer
for estimate in replay.replay_events(records, on_error=lambda number, reason: None):
    out.write(orjson.dumps(estimate) + b"\\n")
"""


def run_scenarios(
    scenarios: Iterable[str],
    seeds: Iterable[int],
    replay: Replay | None = None,
    day: date | None = None,
) -> list[ScenarioResult]:
    """For each scenario shape and seed: simulate a day, replay it, score it.

    ``replay`` defaults to the live estimator's ``replay_events``; pass
    ``rolling_average_estimates`` (or any stand-in) to check the harness.
    """
    from tools.simulate import DEFAULT_DATE, simulate_day

    run_replay = replay if replay is not None else _default_replay()
    seed_list = list(seeds)
    results = []
    for name in scenarios:
        per_seed: dict[int, Score] = {}
        for seed in seed_list:
            simulated = simulate_day(name, seed, clinic_id=f"{name}-{seed}",
                                     date=day or DEFAULT_DATE)
            # the replay gets its own copies: the log is scored afterwards
            estimates = list(run_replay(dict(e) for e in simulated.events))
            per_seed[seed] = score(simulated.events, estimates)
        pooled = sum(per_seed.values(), Score())
        results.append(ScenarioResult(name, pooled, per_seed))
    return results


@dataclass(frozen=True)
class MultiDayResult:
    """One scenario shape over runs of consecutive days (``clinicflow simulate --days``):
    day 1 alone, the later days replayed after the earlier ones (the estimator
    remembers the clinic), and the same later days each replayed alone (no memory)."""

    scenario: str
    first_day: ScenarioResult
    remembered: ScenarioResult  # days 2..N, replayed as one run from day 1
    alone: ScenarioResult  # days 2..N, each replayed by itself
    # the same run replayed by the baseline (``tree_replay``): day 1, days 2..N
    baseline: tuple[ScenarioResult, ScenarioResult] | None = None


def split_days(events: Iterable[dict[str, Any]]) -> dict[date, list[dict[str, Any]]]:
    """A log's events by the clinic's date (its ``ts`` carries the clinic's offset)."""
    by_day: dict[date, list[dict[str, Any]]] = {}
    for event in events:
        by_day.setdefault(datetime.fromisoformat(event["ts"]).date(), []).append(event)
    return by_day


def score_days(
    log_events: list[dict[str, Any]], estimates: list[dict[str, Any]],
) -> dict[date, Score]:
    """Each day of a log scored alone: its visits, their estimates, its own rolling
    average (which starts the day knowing no wait, as a board reset overnight does)."""
    days = split_days(log_events)
    visits_of = {visit: day for day, events in days.items()
                 for e in events if e.get("type") == "arrival" and (visit := e.get("visit_id"))}
    estimates_by_day: dict[date, list[dict[str, Any]]] = {}
    for estimate in estimates:
        day = visits_of.get(estimate.get("visit_id"))  # type: ignore[arg-type]
        if day is not None:
            estimates_by_day.setdefault(day, []).append(estimate)
    return {day: score(events, estimates_by_day.get(day, []))
            for day, events in sorted(days.items())}


def run_multi_day(
    scenarios: Iterable[str],
    seeds: Iterable[int],
    days: int,
    replay: Replay | None = None,
    start: date | None = None,
    baseline: Replay | None = None,
) -> list[MultiDayResult]:
    """For each scenario shape and seed: simulate ``days`` consecutive days of one clinic
    (``simulate_days``: drift included), replay them as one run (what the estimator
    learned on earlier days is there on later ones) and each day alone, and score day 1,
    days 2..N of the run, and days 2..N alone; with ``baseline``, the run replayed by it
    too (day 1, days 2..N)."""
    from tools.simulate import DEFAULT_DATE, simulate_days

    run_replay = replay if replay is not None else _default_replay()
    seed_list = list(seeds)
    results = []
    for name in scenarios:
        first: dict[int, Score] = {}
        remembered: dict[int, Score] = {}
        alone: dict[int, Score] = {}
        before: tuple[dict[int, Score], dict[int, Score]] = ({}, {})
        for seed in seed_list:
            simulated = simulate_days(name, seed, days, clinic_id=f"{name}-{seed}",
                                      start=start or DEFAULT_DATE)
            estimates = list(run_replay(dict(e) for e in simulated.events))
            by_day = score_days(simulated.events, estimates)
            ordered = list(by_day.values())
            first[seed] = ordered[0]
            remembered[seed] = sum(ordered[1:], Score())
            alone[seed] = Score()
            for events in list(split_days(simulated.events).values())[1:]:
                alone[seed] += score(events, list(run_replay(dict(e) for e in events)))
            if baseline is not None:
                theirs = list(score_days(simulated.events, list(
                    baseline(dict(e) for e in simulated.events))).values())
                before[0][seed], before[1][seed] = theirs[0], sum(theirs[1:], Score())
        first_day, later, by_itself = (ScenarioResult(name, sum(per.values(), Score()), per)
                                       for per in (first, remembered, alone))
        results.append(MultiDayResult(
            name, first_day, later, by_itself,
            baseline=None if baseline is None else (
                ScenarioResult(name, sum(before[0].values(), Score()), before[0]),
                ScenarioResult(name, sum(before[1].values(), Score()), before[1]))))
    return results


def mean_ratio(results: Iterable[ScenarioResult]) -> float | None:
    """The plain mean of the scenario shapes' ratios (each shape counts once)."""
    return mean_of(results, lambda s: s.ratio)


def _number(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def scenario_table(results: list[ScenarioResult]) -> list[list[str]]:
    """Header and rows: one per scenario shape."""
    rows = [["scenario", "estimator MAE", "rolling-average MAE", "ratio", "ratio by seed",
             "coverage", "mean width", "interval score", "samples", "missing"]]
    for result in results:
        s = result.score
        spread = result.seed_ratio_range()
        rows.append([
            result.scenario, _number(s.estimator_mae), _number(s.baseline_mae),
            _number(s.ratio, 3),
            "-" if spread is None else f"{spread[0]:.2f}-{spread[1]:.2f}",
            _number(s.coverage, 3), _number(s.mean_width, 1), _number(s.interval_score, 1),
            str(s.samples), str(s.missing_estimates),
        ])
    return rows


def multi_day_table(results: list[MultiDayResult], days: int) -> list[list[str]]:
    """Header and rows: day 1, then days 2..N with memory against the same days alone."""
    later = f"days 2-{days}"
    rows = [["scenario", "day 1 ratio", f"{later} ratio", "ratio by seed", "alone ratio",
             "coverage", "mean width", "interval score", "alone interval score",
             "samples"]]
    for result in results:
        s, alone = result.remembered.score, result.alone.score
        spread = result.remembered.seed_ratio_range()
        rows.append([
            result.scenario, _number(result.first_day.score.ratio, 3), _number(s.ratio, 3),
            "-" if spread is None else f"{spread[0]:.2f}-{spread[1]:.2f}",
            _number(alone.ratio, 3), _number(s.coverage, 3), _number(s.mean_width, 1),
            _number(s.interval_score, 1), _number(alone.interval_score, 1), str(s.samples),
        ])
    return rows


def mean_of(results: Iterable[ScenarioResult], what: Callable[[Score], float | None],
            ) -> float | None:
    """The plain mean over scenario shapes of one figure (each shape counts once)."""
    values = [v for result in results if (v := what(result.score)) is not None]
    return sum(values) / len(values) if values else None


def clinic_table(result: Score) -> list[list[str]]:
    rows = [["clinic", "estimator MAE", "rolling-average MAE", "ratio", "coverage",
             "mean width", "interval score", "samples", "missing"]]
    for name, s in [*sorted(result.clinics.items()), ("overall", result)]:
        rows.append([name, _number(s.estimator_mae), _number(s.baseline_mae),
                     _number(s.ratio, 3), _number(s.coverage, 3), _number(s.mean_width, 1),
                     _number(s.interval_score, 1), str(s.samples),
                     str(s.missing_estimates)])
    return rows


def format_text(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [cell.ljust(w) if i == 0 else cell.rjust(w)
                 for i, (cell, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def format_markdown(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(rows[0]) - 1)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    return "\n".join(lines)


def markdown_report(results: list[ScenarioResult], seeds: list[int], command: str,
                    multi_day: list[MultiDayResult] | None = None, days: int = 1,
                    baseline: str | None = None) -> str:
    """docs/backtest.md: the scenario table with how it was made and how to read it; with
    ``multi_day``, day 1 is ``results`` and a second table scores the later days."""
    mean = mean_ratio(results)
    seed_text = (f"seeds {seeds[0]}-{seeds[-1]}" if len(seeds) > 1
                 else f"seed {seeds[0]}") if seeds else "no seeds"
    return "\n".join([
        "# Backtest: wait estimator against the rolling average",
        "",
        "Generated by the command below; run it again after changing the estimator or",
        "the simulator rather than editing this file.",
        "",
        "```",
        command,
        "```",
        "",
        f"Each scenario shape of `clinicflow simulate` is simulated for {seed_text},",
        "replayed through the live estimator (`tools.replay.replay_events`) and scored as",
        "`docs/replay-format.md` says: every roomed visit is sampled at arrival and every",
        "5 minutes while it waits; the latest estimate, aged by the clock, is compared with",
        "the true remaining wait. The rolling average predicts the mean of the clinic's last",
        "5 finished waits minus the time already waited (0 before any wait has finished).",
        "",
        "- **ratio** = estimator MAE / rolling-average MAE, samples of all seeds pooled;"
        " below 1.0 beats the rolling average. **ratio by seed** is the range over seeds.",
        "- **coverage** = share of samples whose true remaining wait lies in the aged"
        " [low, high] interval (aim: 0.80).",
        "- **mean width** = mean of high - low, in minutes: how much a patient can plan on.",
        "- **interval score** = mean of width + 10 x the miss (how far the true wait lies"
        " outside the range), the standard score of an 80% interval (Gneiting and Raftery"
        " 2007): lower is better; a range wide to be safe pays its width at every sample.",
        "- **missing** = samples with no estimate yet (scored as a prediction of 0).",
        "- MAE in minutes.",
        "",
        *([] if not multi_day else [
            f"## Day 1: a clinic without history ({seed_text})", ""]),
        format_markdown(scenario_table(results)),
        "",
        f"Mean ratio across shapes: **{_number(mean, 3)}**; mean interval score"
        f" {_number(mean_of(results, lambda s: s.interval_score), 2)}.",
        "",
        *(_multi_day_lines(multi_day, days) if multi_day else []),
        *(_baseline_lines(multi_day, days, baseline) if multi_day and baseline else []),
        "The shapes (`clinicflow simulate --list`):",
        "",
        *_shape_lines(),
        "",
    ])


def _multi_day_lines(results: list[MultiDayResult], days: int) -> list[str]:
    remembered = [r.remembered for r in results]
    alone = [r.alone for r in results]
    return [
        f"## Days 2-{days}: the same clinic, day after day",
        "",
        f"Each seed is also one clinic's {days} consecutive working days (`clinicflow simulate"
        f" --days {days}`): day 1 is the day above; from day 2 on walk-ins and no-shows"
        " follow the weekday, a new provider replaces one who leaves, one day runs slower"
        " and a room is out of service for a week (`tools.simulate.drift_plan`). The days"
        " are replayed as one run, as the live service sees them, and days 2-N scored;"
        " **alone** replays each of those days by itself, as a clinic without history"
        " would be estimated. Each day is scored with its own rolling average.",
        "",
        format_markdown(multi_day_table(results, days)),
        "",
        f"Days 2-{days}, mean across shapes: ratio"
        f" **{_number(mean_ratio(remembered), 3)}** (alone {_number(mean_ratio(alone), 3)});"
        f" interval score {_number(mean_of(remembered, lambda s: s.interval_score), 2)}"
        f" (alone {_number(mean_of(alone, lambda s: s.interval_score), 2)}).",
        "",
    ]


def baseline_table(results: list[MultiDayResult], days: int) -> list[list[str]]:
    """Header and rows: the baseline's figures beside this estimator's, day 1 and days
    2..N (both replayed as one run), and how much the interval score changed."""
    later = f"days 2-{days}"
    rows = [["scenario", "day 1 interval score: baseline, now", "change",
             f"{later} ratio: baseline, now", "coverage: baseline, now",
             "interval score: baseline, now", "change"]]
    for result in results:
        if result.baseline is None:
            continue
        first, later_days = result.baseline[0].score, result.baseline[1].score
        now_first, now = result.first_day.score, result.remembered.score
        rows.append([
            result.scenario,
            f"{_number(first.interval_score, 1)}, {_number(now_first.interval_score, 1)}",
            _change(first.interval_score, now_first.interval_score),
            f"{_number(later_days.ratio, 3)}, {_number(now.ratio, 3)}",
            f"{_number(later_days.coverage, 3)}, {_number(now.coverage, 3)}",
            f"{_number(later_days.interval_score, 1)}, {_number(now.interval_score, 1)}",
            _change(later_days.interval_score, now.interval_score),
        ])
    return rows


def _change(before: float | None, now: float | None) -> str:
    if before is None or now is None or before == 0:
        return "-"
    return f"{100.0 * (now - before) / before:+.1f}%"


def _baseline_lines(results: list[MultiDayResult], days: int, baseline: str) -> list[str]:
    with_baseline = [r for r in results if r.baseline is not None]
    if not with_baseline:
        return []
    means = [mean_of([r.baseline[i] for r in with_baseline if r.baseline],
                     lambda s: s.interval_score) for i in (0, 1)]
    now = (mean_of([r.first_day for r in with_baseline], lambda s: s.interval_score),
           mean_of([r.remembered for r in with_baseline], lambda s: s.interval_score))
    return [
        f"## Against the baseline: {baseline}",
        "",
        "The same runs replayed by the baseline's own replay (`tools.replay.replay_events`,"
        " each run as one: the baseline carries its state from day to day as it did live;"
        " a room out of service is given to it as the `room.out_of_service` fact its floor"
        " model applied live, though its replay format had no line for it). The baseline"
        " is a checkout of an older commit, e.g. `git worktree add /tmp/before b0708cc`.",
        "",
        format_markdown(baseline_table(results, days)),
        "",
        f"Mean interval score across shapes: day 1 {_number(means[0], 2)} ->"
        f" {_number(now[0], 2)} ({_change(means[0], now[0])}); days 2-{days}"
        f" {_number(means[1], 2)} -> {_number(now[1], 2)} ({_change(means[1], now[1])}).",
        "",
    ]


def _shape_lines() -> list[str]:
    from tools.simulate import SCENARIOS

    return [f"- `{name}`: {shape.description}." for name, shape in SCENARIOS.items()]


# --------------------------------------------------------------------- CLI


def _read_jsonl(path: str, report: Callable[[str], None]) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    stream: IO[bytes]
    with (sys.stdin.buffer if path == "-" else open(path, "rb")) as stream:
        for number, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                report(f"{path}:{number}: not valid JSON ({exc}); line skipped")
                continue
            if not isinstance(record, dict):
                report(f"{path}:{number}: not a JSON object; line skipped")
                continue
            records.append(record)
    return records


def _warn(message: str) -> None:
    print(message, file=sys.stderr)


def _run_files(args: argparse.Namespace) -> int:
    try:
        log = _read_jsonl(args.log, _warn)
        estimates = _read_jsonl(args.estimates, _warn)
    except OSError as exc:
        print(f"clinicflow backtest: cannot read {exc.filename}: {exc.strerror}",
              file=sys.stderr)
        return 2
    # record numbers below count JSON objects read, in each file
    result = score(log, estimates, on_error=lambda n, reason: _warn(f"record {n}: {reason}"))
    if args.json:
        sys.stdout.buffer.write(orjson.dumps(result.to_dict(), option=orjson.OPT_INDENT_2)
                                + b"\n")
    else:
        print(format_text(clinic_table(result)))
    return 0


def _run_scenarios(args: argparse.Namespace) -> int:
    from tools.simulate import SCENARIO_NAMES

    names = (list(SCENARIO_NAMES) if args.scenarios == "all"
             else [n.strip() for n in args.scenarios.split(",") if n.strip()])
    unknown = [n for n in names if n not in SCENARIO_NAMES]
    if unknown or not names:
        print(f"clinicflow backtest: unknown scenario {', '.join(unknown) or '(none)'}; "
              f"known: {', '.join(SCENARIO_NAMES)} or all", file=sys.stderr)
        return 2
    if args.seeds < 1:
        print("clinicflow backtest: --seeds must be at least 1", file=sys.stderr)
        return 2
    if args.days < 1:
        print("clinicflow backtest: --days must be at least 1", file=sys.stderr)
        return 2
    if args.baseline is not None and args.days < 2:
        print("clinicflow backtest: --baseline needs --days 2 or more", file=sys.stderr)
        return 2
    try:
        baseline = None if args.baseline is None else tree_replay(args.baseline)
    except ValueError as exc:
        print(f"clinicflow backtest: --baseline: {exc}", file=sys.stderr)
        return 2
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    multi = run_multi_day(names, seeds, args.days, baseline=baseline) \
        if args.days > 1 else None
    results = [r.first_day for r in multi] if multi else run_scenarios(names, seeds)
    mean = mean_ratio(results)
    if args.json:
        payload: dict[str, Any] = {"seeds": seeds, "mean_ratio": _round(mean, 3),
                                   "scenarios": {r.scenario: _seeded(r) for r in results}}
        if multi:
            payload["days"] = args.days
            payload["later_days"] = {
                "mean_ratio": _round(mean_ratio([r.remembered for r in multi]), 3),
                "mean_ratio_alone": _round(mean_ratio([r.alone for r in multi]), 3),
                "scenarios": {r.scenario: {**_seeded(r.remembered),
                                           "alone": _seeded(r.alone)} for r in multi}}
        sys.stdout.buffer.write(orjson.dumps(payload, option=orjson.OPT_INDENT_2) + b"\n")
    else:
        print(format_text(scenario_table(results)))
        print(f"\nmean ratio across shapes: {_number(mean, 3)}")
        if multi:
            print(f"\ndays 2-{args.days}:")
            print(format_text(multi_day_table(multi, args.days)))
            print(f"\nmean ratio across shapes, days 2-{args.days}: "
                  f"{_number(mean_ratio([r.remembered for r in multi]), 3)} "
                  f"(alone {_number(mean_ratio([r.alone for r in multi]), 3)})")
    if args.markdown:
        command = f"clinicflow backtest --scenarios {args.scenarios} --seeds {args.seeds} " \
                  + (f"--first-seed {args.first_seed} " if args.first_seed != 1 else "") \
                  + (f"--days {args.days} " if multi else "") \
                  + (f"--baseline {args.baseline} " if args.baseline else "") \
                  + (f"--baseline-name '{args.baseline_name}' " if args.baseline_name else "") \
                  + f"--markdown {args.markdown}"
        try:
            with open(args.markdown, "w", encoding="utf-8") as out:
                out.write(markdown_report(results, seeds, command, multi, args.days,
                                          args.baseline_name or args.baseline))
        except OSError as exc:
            print(f"clinicflow backtest: cannot write {args.markdown}: {exc.strerror}",
                  file=sys.stderr)
            return 2
    return 0


def _seeded(result: ScenarioResult) -> dict[str, Any]:
    return {**result.score.summary(),
            "seeds": {str(k): v.summary() for k, v in result.seed_scores.items()}}


def run(args: argparse.Namespace) -> int:
    if args.scenarios is not None:
        if args.log is not None:
            print("clinicflow backtest: give either LOG ESTIMATES or --scenarios, not both",
                  file=sys.stderr)
            return 2
        return _run_scenarios(args)
    if args.log is None or args.estimates is None:
        print("clinicflow backtest: needs LOG.jsonl ESTIMATES.jsonl, or --scenarios",
              file=sys.stderr)
        return 2
    return _run_files(args)


def add_cli(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "backtest", help="score wait estimates against a visit log, or across simulated days",
        description="Score replay estimates against a visit log (MAE, ratio to the rolling "
        "average, interval coverage), or simulate every scenario shape and score the "
        "live estimator on them.",
    )
    parser.add_argument("log", nargs="?", help="visit log, JSON Lines ('-' for stdin)")
    parser.add_argument("estimates", nargs="?", help="replay output, JSON Lines")
    parser.add_argument("--json", action="store_true", help="print the scores as JSON")
    parser.add_argument("--scenarios", help="'all' or a comma-separated list of scenario shapes")
    parser.add_argument("--seeds", type=int, default=5, help="seeds 1..N per shape (default 5)")
    parser.add_argument("--first-seed", type=int, default=1,
                        help="the seeds are FIRST..FIRST+N-1 (default 1): seeds held out")
    parser.add_argument("--baseline", metavar="TREE",
                        help="with --days: also replay the runs with the clinicflow checkout "
                        "in TREE (e.g. a git worktree of an older commit) and compare")
    parser.add_argument("--baseline-name",
                        help="how the Markdown names the baseline (default: TREE)")
    parser.add_argument("--days", type=int, default=1,
                        help="with --scenarios: each seed is also a clinic's N consecutive "
                        "days; day 1 and days 2..N (with what the estimator learned before "
                        "them, and alone) are scored (default 1: one day)")
    parser.add_argument("--markdown", help="also write the scenario table as Markdown here")
    parser.set_defaults(func=run)
