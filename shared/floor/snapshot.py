"""A clinic's live state to plain JSON and back, for the Redis checkpoint.

Pure: dictionaries in, dictionaries out. Closed visits are not kept, so a
snapshot's size follows the clinic's open visits, not its history.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson

from shared.floor.clinic_flow import ClinicFlow
from shared.floor.day_stats import DayStats
from shared.floor.estimator import (
    SITUATION_WINDOW,
    ProviderHabits,
    RoomsUsed,
    RunningMean,
    _History,
)
from shared.floor.memory import ClinicProfile, DayLog, RememberingFlow
from shared.floor.model import Delay, Room, RoomState, Visit, VisitStatus, _UndoRecord

SNAPSHOT_VERSION = 1

# a time as the document holds it: ISO text (``_t``), or what orjson writes as that text
TimeText = Callable[[datetime | None], Any]


def _t(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _tj(value: datetime | None) -> datetime | str | None:
    """``_t`` for a document orjson writes: a UTC time is left for orjson, which writes the
    same text as ``isoformat`` several times faster (every time in a checkpoint is UTC
    unless a test or an appointment brought another zone)."""
    if value is None or value.tzinfo is UTC:
        return value
    return value.isoformat()


def _iso(value: Any) -> str:
    """orjson's fallback: a ``datetime`` subclass (orjson writes only ``datetime`` itself)."""
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _dt(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _mean(mean: RunningMean) -> list[float]:
    return [mean.prior, mean.weight, mean.total, mean.count]


def _unmean(values: list[float]) -> RunningMean:
    return RunningMean(values[0], values[1], values[2], int(values[3]))


def _visit(v: Visit, t: TimeText = _t) -> list[Any]:
    return [v.visit_id, v.ticket_code, v.provider_id, v.visit_type, v.priority,
            t(v.scheduled_at), t(v.arrived_at), v.status._value_, v.room_id, t(v.roomed_at),
            t(v.provider_in_at), [[s, t(at)] for s, at in v.history]]


def _unvisit(values: list[Any]) -> Visit:
    (visit_id, ticket, provider, visit_type, priority, scheduled, arrived, status, room,
     roomed, provider_in, history) = values
    arrived_at = _dt(arrived)
    assert arrived_at is not None
    return Visit(
        visit_id, ticket, provider, visit_type, priority, _dt(scheduled), arrived_at,
        VisitStatus(status), room, _dt(roomed), _dt(provider_in), None,
        [(s, _dt(at) or arrived_at) for s, at in history],
    )


def _room(r: Room, t: TimeText = _t) -> list[Any]:
    return [r.room_id, r.state._value_, t(r.since), r.visit_id]


def _unroom(values: list[Any]) -> Room:
    room_id, state, since, visit_id = values
    since_at = _dt(since)
    assert since_at is not None
    return Room(room_id, RoomState(state), since_at, visit_id)


def _delay(d: Delay, t: TimeText = _t) -> list[Any]:
    return [d.provider_id, d.minutes, t(d.announced_at), d.reason]


def _undelay(values: list[Any]) -> Delay:
    provider, minutes, announced, reason = values
    announced_at = _dt(announced)
    assert announced_at is not None
    return Delay(provider, minutes, announced_at, reason)


def _undo_json(r: _UndoRecord) -> orjson.Fragment:
    """The record as JSON, made once: a sealed record never changes, and a clinic's
    undo window is most of its checkpoint (kept as bytes, which the garbage collector
    does not walk)."""
    if r.snapshot is None:
        # exactly its size (orjson over-allocates)
        r.snapshot = orjson.dumps(_undo(r, _tj), default=_iso).decode()
    return orjson.Fragment(r.snapshot)


def _undo(r: _UndoRecord, t: TimeText = _t) -> dict[str, Any]:
    return {
        "e": r.event_id, "k": r.kind,
        "v": [[k, None if v is None else _visit(v, t)] for k, v in r.visits.items()],
        "r": [[k, None if v is None else _room(v, t)] for k, v in r.rooms.items()],
        "d": None if r.delays is None
        else [[k, None if v is None else _delay(v, t)] for k, v in r.delays.items()],
        "vm": r.visit_marks, "rm": {k: t(v) for k, v in r.room_marks.items()},
    }


def _unundo(d: dict[str, Any]) -> _UndoRecord:
    return _UndoRecord(
        event_id=d["e"], kind=d["k"],
        visits={k: None if v is None else _unvisit(v) for k, v in d["v"]},
        rooms={k: None if v is None else _unroom(v) for k, v in d["r"]},
        delays=None if d["d"] is None
        else {k: None if v is None else _undelay(v) for k, v in d["d"]},
        visit_marks=dict(d["vm"]),
        room_marks={k: _dt(v) for k, v in d["rm"].items()},  # type: ignore[misc]
    )


def dump_flow(flow: ClinicFlow) -> dict[str, Any]:
    """Everything needed to carry on exactly where the clinic was (with a
    ``RememberingFlow``, its memory of past days too)."""
    document = _document(flow, _undo, _t)
    if isinstance(flow, RememberingFlow):
        document["memory"] = _memory(flow, flow.profile.to_dict(), _t)
    return document


def dump_flow_json(flow: ClinicFlow) -> bytes:
    """``dump_flow`` as the JSON the checkpoint stores, with each undo record's JSON
    (and the profile of past days, which changes once a day) made once rather than at
    every checkpoint."""
    document = _document(flow, _undo_json, _tj)
    if isinstance(flow, RememberingFlow):
        document["memory"] = _memory(flow, flow.profile.to_json(), _tj)
    return orjson.dumps(document, default=_iso)


def _memory(flow: RememberingFlow, profile: Any, t: TimeText) -> dict[str, Any]:
    return {"profile": profile, "log": flow.day_log.to_dict(),
            "day_started_at": t(flow.day_started_at)}


def _document(
    flow: ClinicFlow, undo: Callable[[_UndoRecord], Any], t: TimeText
) -> dict[str, Any]:
    clinic = flow.clinic
    estimator = flow.estimator
    return {
        "v": SNAPSHOT_VERSION,
        "clinic_id": clinic.clinic_id,
        "last_event_at": t(flow.last_event_at),
        "last_tick": flow.last_tick,
        "visits": [_visit(v, t) for v in clinic.visits.values()],
        "rooms": [_room(r, t) for r in clinic.rooms.values()],
        "delays": [_delay(d, t) for d in clinic.delays.values()],
        "undo": [undo(r) for r in clinic._undo],
        "closed": list(clinic.closed_ids),
        "counts": clinic.counts,
        "day": flow.day.to_dict(),
        "provider_free_since": [[k, t(v)] for k, v in flow.provider_free_since.items()],
        "estimator": {
            "visit_minutes": {k: _mean(m) for k, m in estimator.visit_minutes.items()},
            "all_visits": _mean(estimator.all_visits),
            "provider_pace": {k: _mean(m) for k, m in estimator.provider_pace.items()},
            "intake": _mean(estimator.intake),
            "handover": _mean(estimator.handover),
            "active": sorted(estimator.active_providers),
            "cleaning": _mean(estimator.cleaning),
            "habits": [[k, list(h.observed)] for k, h in estimator.habits.items()],
            "rooms_used": {k: [sorted(u.rooms), u.count] for k, u in estimator.rooms_used.items()},
            "errors": list(estimator.errors),
            "situation_errors": {str(k): list(e) for k, e in estimator.situation_errors.items()},
            "offsets": list(estimator.appointment_offsets),
            "last_seen": {k: t(at) for k, at in estimator.last_seen.items()},
            "prior_seeds": estimator.prior_seeds,
            "walkout_hazard": estimator.walkout_hazard,
            "early": list(estimator.early_rooming),
            "recent_waits": list(estimator.recent_waits),
            "histories": {
                k: [t(h.arrived_at), [[t(at), raw, s] for at, raw, s in h.estimates]]
                for k, h in estimator._histories.items()
            },
        },
    }


def load_flow(document: dict[str, Any]) -> ClinicFlow:
    """Rebuild a ``ClinicFlow`` from ``dump_flow``'s output (a ``RememberingFlow`` when
    it carries a memory; its ``zone`` is configuration, for the caller to set)."""
    if document.get("v") != SNAPSHOT_VERSION:
        raise ValueError(f"unknown snapshot version {document.get('v')!r}")
    memory = document.get("memory")
    flow = ClinicFlow(document["clinic_id"]) if memory is None \
        else RememberingFlow(document["clinic_id"], profile=ClinicProfile.from_dict(
            memory["profile"]))
    if isinstance(flow, RememberingFlow) and memory is not None:
        flow.day_log = DayLog.from_dict(memory["log"])
        flow.day_started_at = _dt(memory["day_started_at"])
    flow.last_event_at = _dt(document["last_event_at"])
    flow.last_tick = document["last_tick"]
    clinic = flow.clinic
    for values in document["visits"]:
        visit = _unvisit(values)
        clinic.visits[visit.visit_id] = visit
    for values in document["rooms"]:
        room = _unroom(values)
        clinic.rooms[room.room_id] = room
    for values in document["delays"]:
        delay = _undelay(values)
        clinic.delays[delay.provider_id] = delay
    for record in document.get("undo", []):
        clinic._undo.append(_unundo(record))
    clinic.closed_ids.extend(document["closed"])
    clinic._closed_set = set(clinic.closed_ids)
    clinic.recount()
    clinic.counts = dict(document["counts"])
    flow.day = DayStats.from_dict(document.get("day", {}))
    flow.provider_free_since = {k: _dt(v) for k, v in document["provider_free_since"]}
    est = document["estimator"]
    estimator = flow.estimator
    estimator.visit_minutes = {k: _unmean(v) for k, v in est["visit_minutes"].items()}
    estimator.all_visits = _unmean(est["all_visits"])
    estimator.provider_pace = {k: _unmean(v) for k, v in est["provider_pace"].items()}
    estimator.intake = _unmean(est["intake"])
    estimator.handover = _unmean(est["handover"])
    estimator.active_providers = set(est["active"])
    estimator.cleaning = _unmean(est["cleaning"])
    for provider, observed in est["habits"]:
        habits = estimator.habits[provider] = ProviderHabits()
        habits.observed.extend(observed)
    estimator.rooms_used = {k: RoomsUsed(set(rooms), count)
                            for k, (rooms, count) in est["rooms_used"].items()}
    estimator.errors = deque(est["errors"], maxlen=estimator.errors.maxlen)
    estimator.situation_errors = {int(k): deque(e, maxlen=SITUATION_WINDOW)
                                  for k, e in est.get("situation_errors", {}).items()}
    if "offsets" in est:
        estimator.appointment_offsets = deque(est["offsets"], maxlen=SITUATION_WINDOW)
    estimator.last_seen = {k: _dt(at) for k, at in est.get("last_seen", {}).items()}  # type: ignore[misc]
    estimator.prior_seeds = dict(est.get("prior_seeds", estimator.prior_seeds))
    hazard = est.get("walkout_hazard")
    estimator.walkout_hazard = None if hazard is None else tuple(hazard)
    estimator.early_rooming = deque(est["early"], maxlen=estimator.early_rooming.maxlen)
    estimator.recent_waits = deque(est["recent_waits"], maxlen=5)
    for visit_id, (arrived, estimates) in est["histories"].items():
        arrived_at = _dt(arrived)
        assert arrived_at is not None
        # an estimate from before situations were kept: waiting for the floor, first
        estimator._histories[visit_id] = _History(
            arrived_at, [(_dt(e[0]) or arrived_at, e[1], e[2] if len(e) > 2 else 1)
                         for e in estimates]
        )
    return flow
