"""Waits and satisfaction side by side. Pure (no I/O, no clock).

The satisfaction projection keeps one row per visit, merged from four kinds of record
whatever order they are read in (a rebuild from Kafka reads the topics in another
order than live): the arrival (when the wait began, the provider booked), the provider
seeing the patient (the provider, winning over the booked one), the first rooming (the
wait's end), the earliest ``wait.told`` (what the patient was first told: its instant
and point), the feedback answer (rating, wait answer; the first one), and each
complaint logged about the visit (its id and category). Every field is set once or by a
rule that does not depend on order (the earliest told record), so the rows, and the
report made from them, are the same after a rebuild.

A low rating (1-2) raises a complaint (category ``wait`` when the patient said the wait
was longer than told, ``other`` otherwise), once per visit: the row remembers it.

The report (``report``) takes the rows of the visits roomed in a range of the clinic's
days and counts, by band of the wait actually waited (arrival to rooming: 0-10, 10-20,
20-30, 30+ minutes) and by band of the error against what was first told (the wait from
the told instant to the rooming less the point told: ``longer_20_plus`` 20 minutes or
more longer than told, ``shorter_20_plus`` 20 or more shorter, ``within`` in between,
``not_told`` when no estimate was told), per provider too: visits, ratings and their
mean, complaints by category.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from services.notifications import complaints as cp
from services.notifications.complaints import Complaint
from services.notifications.domain.ids import digest
from services.notifications.plan import clinic_streams, occurred_at
from shared import events as ev
from shared.events_notifications import ComplaintLogged, FeedbackGiven
from shared.projection import Inbound, Planned

WAIT_BANDS: tuple[tuple[str, float], ...] = (("0-10", 10), ("10-20", 20), ("20-30", 30),
                                             ("30+", float("inf")))
TOLD_BAND_MINUTES = 20
TOLD_BANDS = ("longer_20_plus", "within", "shorter_20_plus", "not_told")
NO_PROVIDER = "-"


def wait_band(minutes: float) -> str:
    return next(name for name, below in WAIT_BANDS if minutes < below)


def told_band(error_minutes: float | None) -> str:
    if error_minutes is None:
        return "not_told"
    if error_minutes >= TOLD_BAND_MINUTES:
        return "longer_20_plus"
    if error_minutes <= -TOLD_BAND_MINUTES:
        return "shorter_20_plus"
    return "within"


def low_rating_complaint_id(clinic_id: str, visit_id: str) -> str:
    return "cp-fb-" + digest(clinic_id, visit_id)


@dataclass(slots=True)
class SatisfactionChanges:
    rows: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)  # new fields
    roomed: dict[tuple[str, str], float] = field(default_factory=dict)  # index entries
    raised: list[Complaint] = field(default_factory=list)  # complaints of low ratings

    def set(self, key: tuple[str, str], name: str, value: str) -> None:
        self.rows.setdefault(key, {})[name] = value


Row = dict[str, str]  # a visit's stored fields


@dataclass(frozen=True, slots=True)
class SatisfactionPlan:
    """The projection's pure ``plan(records, rows)``: ``rows`` are the batch's visits'
    stored fields (read under WATCH, updated here as the batch goes)."""

    zone: Callable[[str], ZoneInfo]
    floor_topic: str

    def __call__(self, records: list[Inbound], rows: dict[tuple[str, str], Row]
                 ) -> Planned[SatisfactionChanges]:
        changes = SatisfactionChanges()
        planned = Planned(changes)
        streams = clinic_streams(records, self.floor_topic)
        for clinic_id in sorted(streams):
            for record in heapq.merge(*streams[clinic_id], key=occurred_at):
                event = record.event
                assert event is not None
                payload = event.payload
                visit_id = getattr(payload, "visit_id", None)
                planned.applied += 1
                if visit_id is None:
                    continue
                key = (clinic_id, visit_id)
                row = rows.setdefault(key, {})
                at = event.occurred_at.timestamp()

                def once(name: str, value: str, row: Row = row,
                         key: tuple[str, str] = key) -> bool:
                    if name in row:
                        return False
                    row[name] = value
                    changes.set(key, name, value)
                    return True

                if isinstance(payload, ev.PatientArrived):
                    once("arrived", repr(at))
                    once("booked", payload.provider_id or NO_PROVIDER)
                elif isinstance(payload, ev.ProviderIn) and payload.provider_id:
                    once("provider", payload.provider_id)
                elif isinstance(payload, ev.PatientRoomed):
                    if once("roomed", repr(at)):
                        changes.roomed[key] = at
                elif isinstance(payload, ev.WaitTold):
                    told = orjson.loads(row["told"]) if "told" in row else None
                    if told is None or at < told[0]:
                        value = orjson.dumps([at, payload.wait_minutes]).decode()
                        row["told"] = value
                        changes.set(key, "told", value)
                elif isinstance(payload, FeedbackGiven):
                    if once("rating", str(payload.rating)):
                        once("answer", payload.wait)
                    if payload.rating <= cp.LOW_RATING and once("raised", "1"):
                        changes.raised.append(cp.log(
                            low_rating_complaint_id(clinic_id, visit_id), clinic_id,
                            visit_id=visit_id,
                            category="wait" if payload.wait == "longer" else "other",
                            source="low_rating", by="feedback", now=event.occurred_at,
                            zone=self.zone(clinic_id)))
                elif isinstance(payload, ComplaintLogged):
                    once(f"c:{payload.complaint_id}", payload.category)
        return planned


# ------------------------------------------------------------------ the report


@dataclass(slots=True)
class Tally:
    visits: int = 0
    rated: int = 0
    rating_sum: int = 0
    complaints: dict[str, int] = field(default_factory=dict)

    def add(self, rating: int | None, categories: Iterable[str]) -> None:
        self.visits += 1
        if rating is not None:
            self.rated += 1
            self.rating_sum += rating
        for category in categories:
            self.complaints[category] = self.complaints.get(category, 0) + 1

    def mean(self) -> float | None:
        return round(self.rating_sum / self.rated, 2) if self.rated else None

    def figures(self) -> dict[str, Any]:
        return {"visits": self.visits, "ratings": self.rated, "mean_rating": self.mean(),
                "complaints": sum(self.complaints.values()),
                "complaints_by_category": dict(sorted(self.complaints.items()))}


def _bands(names: Iterable[str]) -> dict[str, Tally]:
    return {name: Tally() for name in names}


def report(rows: Iterable[Mapping[str, str]]) -> dict[str, Any]:
    """The figures of the given visits' rows (those roomed in the report's range): by wait
    band, by told band, per provider (each by told band too), and the sentence."""
    overall = Tally()
    by_wait = _bands(name for name, _below in WAIT_BANDS)
    by_told = _bands(TOLD_BANDS)
    providers: dict[str, tuple[Tally, dict[str, Tally]]] = {}
    for row in rows:
        if "roomed" not in row:
            continue
        roomed = float(row["roomed"])
        rating = int(row["rating"]) if "rating" in row else None
        categories = [value for name, value in row.items() if name.startswith("c:")]
        waited = (max(0.0, (roomed - float(row["arrived"])) / 60) if "arrived" in row
                  else None)
        error = None
        if "told" in row:
            told_at, point = orjson.loads(row["told"])
            if told_at <= roomed:
                error = (roomed - told_at) / 60 - point
        band = told_band(error)
        provider = row.get("provider") or row.get("booked") or NO_PROVIDER
        overall.add(rating, categories)
        if waited is not None:
            by_wait[wait_band(waited)].add(rating, categories)
        by_told[band].add(rating, categories)
        total, told = providers.setdefault(provider, (Tally(), _bands(TOLD_BANDS)))
        total.add(rating, categories)
        told[band].add(rating, categories)
    return {
        **overall.figures(),
        "by_wait_band": {name: t.figures() for name, t in by_wait.items()},
        "by_told_band": {name: t.figures() for name, t in by_told.items()},
        "by_provider": {name: {**total.figures(),
                               "by_told_band": {b: t.figures() for b, t in told.items()}}
                        for name, (total, told) in sorted(providers.items())},
        "finding": finding(by_told),
    }


def finding(by_told: Mapping[str, Tally]) -> str:
    """The sentence: how patients who waited 20+ minutes longer than told rated, against
    those who waited about as told or less."""
    longer = by_told["longer_20_plus"]
    rest = Tally()
    for name in ("within", "shorter_20_plus"):
        rest.rated += by_told[name].rated
        rest.rating_sum += by_told[name].rating_sum
    low, high = longer.mean(), rest.mean()
    if low is None or high is None:
        return ("Not enough ratings yet to compare patients who waited 20+ minutes longer "
                f"than told ({longer.rated} rated) with the others ({rest.rated} rated).")
    gap = round(high - low, 1)
    how = (f"rate {gap} points lower" if gap > 0 else
           f"rate {-gap} points higher" if gap < 0 else "rate the same")
    ratings = "rating" if longer.rated == 1 else "ratings"
    return (f"Patients who waited 20+ minutes longer than told {how} ({low:.2f} from "
            f"{longer.rated} {ratings}) than those who waited about as told or less "
            f"({high:.2f} from {rest.rated}).")
