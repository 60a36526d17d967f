"""Told versus actual: how right were the waits patients were told. Pure (no I/O).

Every estimate shown or sent to a patient is a ``wait.told`` record on the told topic
(kiosk answer, status lookup, the waiting-room TV, SMS/e-mail delay warnings, "please
come back now"). The accuracy projection joins them with the floor's facts:

* ``patient.arrived`` notes when the visit began to wait (for the rolling average);
* ``patient.roomed`` ends the wait: each told record of the visit told before that
  instant is scored once: the actual wait from the told instant (roomed - told), the
  absolute error against the point told, and whether the truth fell inside the range
  told (low <= actual <= high). The rolling average is scored on the same records: the
  mean of the clinic's last five finished waits (arrival to rooming) roomed that clinic
  day by the told instant, less what the patient had already waited, at least 0 (as ``clinicflow
  backtest`` scores it; 0 before any wait finished), unless the told record carries its
  own ``reference_minutes``;
* ``arrival.cancelled`` ends it too: the patient left, the truth is not known; their
  told records are counted as ``left``, never scored.

A told record that arrives after its visit ended is scored then (if it was told before
the rooming); one told after the rooming, or seen twice (same event id), is not. The
result does not depend on the order the two topics are read in: a record is scored at
the rooming, or on arrival if the rooming was read first, always from the same facts,
and every figure is a sum of integers (errors in milliseconds), so a rebuild from Kafka
gives the same figures. An undone rooming (``action.undone``) does not take back a score
already made.

Figures are kept per clinic and clinic-local day (of the told instant) in cells of hour
x channel x provider: scored count, inside-range count, summed absolute error, summed
rolling-average error, and the count of told records whose patient left.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from services.notifications.plan import clinic_streams, occurred_at
from shared import events as ev
from shared.projection import DeadLetter, Inbound, Planned

ROLLING_WINDOW = 5  # finished waits in the rolling average (tools/backtest.py's)
RECENT_KEPT = 300  # finished waits kept per clinic: a told record read that late is rare
NO_PROVIDER = "-"  # provider of a told record with none (first available or unknown)
METRICS = ("n", "in", "err", "ref", "left")  # the integers of a cell (see ``Cell``)


@dataclass(slots=True)
class VisitState:
    """What is kept of one visit: when it arrived, how it ended, its told records waiting
    for the end (event id -> told record JSON), the ids of those already counted."""

    arrived: float | None = None  # epoch seconds
    ended: str | None = None  # "roomed" | "left"
    ended_at: float | None = None
    pending: dict[str, bytes] = field(default_factory=dict)
    counted: set[str] = field(default_factory=set)

    @classmethod
    def from_hash(cls, raw: Mapping[Any, Any]) -> VisitState:
        state = cls()
        for key, value in raw.items():
            name = key.decode() if isinstance(key, bytes) else key
            text = value.decode() if isinstance(value, bytes) else value
            if name == "arrived":
                state.arrived = float(text)
            elif name == "ended":
                kind, _, at = text.partition(":")
                state.ended, state.ended_at = kind, float(at)
            elif name.startswith("t:"):
                state.pending[name[2:]] = text.encode()
            elif name.startswith("s:"):
                state.counted.add(name[2:])
        return state


@dataclass(slots=True)
class VisitChange:
    """Fields to set and to delete on one visit's hash."""

    set: dict[str, str] = field(default_factory=dict)
    delete: list[str] = field(default_factory=list)


@dataclass(slots=True)
class AccuracyState:
    """What a batch is planned from: the batch's visits and clinics' recent waits."""

    visits: dict[tuple[str, str], VisitState]  # (clinic, visit) -> state
    recent: dict[str, list[tuple[float, float]]]  # clinic -> [(roomed at, wait minutes)]


@dataclass(frozen=True, slots=True)
class Score:
    """One told record scored."""

    clinic_id: str
    day: date
    hour: int
    channel: str
    provider: str
    error_minutes: float
    inside: bool
    reference_error_minutes: float


@dataclass(slots=True)
class AccuracyChanges:
    visits: dict[tuple[str, str], VisitChange] = field(default_factory=dict)
    recent: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    counts: dict[tuple[str, date], dict[str, int]] = field(default_factory=dict)  # field -> +n
    scores: list[Score] = field(default_factory=list)

    def visit(self, key: tuple[str, str]) -> VisitChange:
        return self.visits.setdefault(key, VisitChange())

    def add(self, clinic_id: str, day: date, cell: str, metric: str, amount: int) -> None:
        fields = self.counts.setdefault((clinic_id, day), {})
        name = f"{cell}|{metric}"
        fields[name] = fields.get(name, 0) + amount


def cell_of(hour: int, channel: str, provider: str) -> str:
    return f"{hour:02d}|{channel}|{provider}"


@dataclass(frozen=True, slots=True)
class Told:
    """A told record as kept until its visit ends."""

    event_id: str
    at: float  # epoch seconds
    channel: str
    low: float
    high: float
    point: float
    provider: str
    reference: float | None

    def to_json(self) -> bytes:
        return orjson.dumps([self.event_id, self.at, self.channel, self.low, self.high,
                             self.point, self.provider, self.reference])

    @classmethod
    def from_json(cls, raw: bytes) -> Told:
        return cls(*orjson.loads(raw))

    @classmethod
    def of(cls, event: ev.Event, payload: ev.WaitTold) -> Told:
        return cls(event.envelope.event_id, event.occurred_at.timestamp(), payload.channel,
                   payload.low, payload.high, payload.wait_minutes,
                   payload.provider_id or NO_PROVIDER, payload.reference_minutes)


def rolling_reference(recent: Iterable[tuple[float, float]], at: float,
                      arrived: float | None, since: float = 0.0) -> float:
    """Minutes still to wait as the rolling average would show it at ``at``: the mean of
    the last ``ROLLING_WINDOW`` waits finished by ``at`` (and from ``since``, the start
    of the clinic's day: each day on its own), less the minutes already waited (at least
    0; 0 before any wait finished), as ``clinicflow backtest`` scores it."""
    finished = [wait for roomed_at, wait in recent
                if since <= roomed_at <= at][-ROLLING_WINDOW:]
    if not finished:
        return 0.0
    waited = 0.0 if arrived is None else max(0.0, (at - arrived) / 60.0)
    return max(0.0, sum(finished) / len(finished) - waited)


@dataclass(frozen=True, slots=True)
class AccuracyPlan:
    """The accuracy projection's pure ``plan(records, state)``. ``zone`` gives each
    clinic's time zone (its days and hours); ``floor_topic`` orders a floor fact before
    a told record of the same instant."""

    zone: Callable[[str], ZoneInfo]
    floor_topic: str

    def __call__(self, records: list[Inbound], state: AccuracyState
                 ) -> Planned[AccuracyChanges]:
        changes = AccuracyChanges()
        planned = Planned(changes)
        streams = clinic_streams(records, self.floor_topic)
        for clinic_id in sorted(streams):
            recent = list(state.recent.get(clinic_id, []))
            recent_changed = False
            for record in heapq.merge(*streams[clinic_id], key=occurred_at):
                event = record.event
                assert event is not None
                payload = event.payload
                key = (clinic_id, getattr(payload, "visit_id", ""))
                if isinstance(payload, ev.WaitTold):
                    if payload.high < payload.low:
                        planned.dead_letters.append(DeadLetter(
                            record, f"wait.told range high {payload.high} is below low "
                                    f"{payload.low}"))
                        continue
                    visit = state.visits.setdefault(key, VisitState())
                    self._told(clinic_id, key, visit, Told.of(event, payload), recent, changes)
                elif isinstance(payload, ev.PatientArrived):
                    visit = state.visits.setdefault(key, VisitState())
                    if visit.arrived is None:
                        visit.arrived = event.occurred_at.timestamp()
                        changes.visit(key).set["arrived"] = repr(visit.arrived)
                elif isinstance(payload, ev.PatientRoomed | ev.ArrivalCancelled):
                    visit = state.visits.setdefault(key, VisitState())
                    if visit.ended is not None:
                        planned.applied += 1
                        continue
                    at = event.occurred_at.timestamp()
                    visit.ended = "roomed" if isinstance(payload, ev.PatientRoomed) else "left"
                    visit.ended_at = at
                    changes.visit(key).set["ended"] = f"{visit.ended}:{at!r}"
                    if visit.ended == "roomed" and visit.arrived is not None:
                        # in floor order: a clinic's roomings are read in time order
                        recent.append((at, max(0.0, (at - visit.arrived) / 60.0)))
                        del recent[:-RECENT_KEPT]
                        recent_changed = True
                    for event_id, raw in sorted(visit.pending.items()):
                        changes.visit(key).delete.append(f"t:{event_id}")
                        self._end(clinic_id, key, visit, Told.from_json(raw), recent, changes)
                    visit.pending.clear()
                planned.applied += 1
            if recent_changed:
                changes.recent[clinic_id] = recent
        return planned

    def _told(self, clinic_id: str, key: tuple[str, str], visit: VisitState, told: Told,
              recent: list[tuple[float, float]], changes: AccuracyChanges) -> None:
        if told.event_id in visit.counted or told.event_id in visit.pending:
            return  # seen before (the producer's outbox is at least once)
        if visit.ended is None:
            visit.pending[told.event_id] = told.to_json()
            changes.visit(key).set[f"t:{told.event_id}"] = told.to_json().decode()
            return
        self._end(clinic_id, key, visit, told, recent, changes)

    def _end(self, clinic_id: str, key: tuple[str, str], visit: VisitState, told: Told,
             recent: list[tuple[float, float]], changes: AccuracyChanges) -> None:
        """Count a told record of an ended visit, once."""
        visit.counted.add(told.event_id)
        changes.visit(key).set[f"s:{told.event_id}"] = "1"
        assert visit.ended_at is not None
        if visit.ended == "roomed" and told.at > visit.ended_at:
            return  # told after the rooming (a screen a moment behind): nothing to score
        local = datetime.fromtimestamp(told.at, UTC).astimezone(self.zone(clinic_id))
        day, cell = local.date(), cell_of(local.hour, told.channel, told.provider)
        if visit.ended == "left":
            changes.add(clinic_id, day, cell, "left", 1)
            return
        actual = (visit.ended_at - told.at) / 60.0
        error = abs(actual - told.point)
        inside = told.low <= actual <= told.high
        midnight = local.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
        reference = (told.reference if told.reference is not None
                     else rolling_reference(recent, told.at, visit.arrived, since=midnight))
        reference_error = abs(actual - reference)
        changes.add(clinic_id, day, cell, "n", 1)
        changes.add(clinic_id, day, cell, "in", int(inside))
        changes.add(clinic_id, day, cell, "err", round(error * 60_000))
        changes.add(clinic_id, day, cell, "ref", round(reference_error * 60_000))
        changes.scores.append(Score(clinic_id, day, local.hour, told.channel, told.provider,
                                    error, inside, reference_error))


# ------------------------------------------------------------------ figures


def _figures(cells: Iterable[Mapping[str, int]]) -> dict[str, Any]:
    total = dict.fromkeys(METRICS, 0)
    for cell in cells:
        for metric in METRICS:
            total[metric] += cell.get(metric, 0)
    n = total["n"]
    return {
        "scored": n,
        "mean_absolute_error_minutes": round(total["err"] / 60_000 / n, 2) if n else None,
        "share_inside_range": round(total["in"] / n, 4) if n else None,
        "rolling_average_mean_absolute_error_minutes":
            round(total["ref"] / 60_000 / n, 2) if n else None,
        "left": total["left"],
    }


def summarize(fields: Mapping[str, int]) -> dict[str, Any]:
    """A day's stored counters (``hour|channel|provider|metric`` -> int) as the figures
    the API and the gauges show: the day's, and by hour, channel and provider."""
    cells: dict[tuple[str, str, str], dict[str, int]] = {}
    for name, value in fields.items():
        hour, channel, provider, metric = name.split("|")
        cells.setdefault((hour, channel, provider), {})[metric] = int(value)

    def by(index: int) -> dict[str, dict[str, Any]]:
        groups: dict[str, list[dict[str, int]]] = {}
        for cell_key, cell in cells.items():
            groups.setdefault(cell_key[index], []).append(cell)
        return {name: _figures(group) for name, group in sorted(groups.items())}

    return {**_figures(cells.values()), "by_hour": by(0), "by_channel": by(1),
            "by_provider": by(2)}
