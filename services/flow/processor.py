"""Floor records -> applied facts, and clinics -> boards. No I/O.

The shared runner reads the Kafka records (``floor_reader``: decoded, keyed by clinic,
floor facts only) as ``FloorProcessor.process_stream`` comes to them; the processor
applies each to its clinic in memory and says what the batch changed, and
``FlowProjection`` (consumer.py) writes that to Redis. Keeping this step free
of Kafka and Redis lets it be tested in microseconds, benchmarked alone, and digested
(``clinicflow digest``).

Every clinic is a ``RememberingFlow`` (``shared.floor.memory``), as in ``clinicflow
replay``: its past days are the priors of the next, and its memory is part of its state
(the checkpoint carries it), so live, replay and a rebuild from Kafka estimate alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Any

from shared.floor.clinic_flow import FLOOR_FACTS, ClinicFlow
from shared.floor.estimator import WaitEstimate
from shared.floor.memory import RememberingFlow
from shared.floor.model import NotApplicable, RoomState, StageTime
from shared.projection import DeadLetter, Inbound, Partition, Reading, RecordReader, inbound


def floor_reader(floor_topic: str) -> RecordReader:
    """How flow reads its one topic: floor facts keyed by their clinic, nothing else (a
    ``wait.estimated`` there is refused: estimates have their own topic)."""
    return RecordReader({floor_topic: FLOOR_FACTS})


@dataclass(slots=True)
class FloorBatchOutcome:
    """What applying a batch did, for the projection to write and count."""

    applied: int = 0
    duplicates: int = 0
    already_applied: int = 0
    dead_letters: list[DeadLetter] = field(default_factory=list)
    touched: dict[str, datetime] = field(default_factory=dict)  # clinic -> its latest event time
    stages: list[tuple[str, StageTime, datetime]] = field(default_factory=list)  # ended at
    offsets: dict[Partition, int] = field(default_factory=dict)
    undone: list[tuple[str, str]] = field(default_factory=list)


class FloorProcessor:
    """Owns the live ``ClinicFlow`` of every clinic on this instance's partitions.

    ``zone_of`` gives a clinic's time zone (``ClinicDirectory.zone``): its memory counts
    arrivals by the clinic's own weekday and hour (None: the events' offsets, UTC)."""

    def __init__(self, zone_of: Callable[[str], tzinfo | None] | None = None) -> None:
        self.zone_of = zone_of
        self.flows: dict[str, ClinicFlow] = {}
        self.partition_of: dict[str, Partition] = {}
        self.applied: dict[Partition, int] = {}  # (topic, partition) -> last offset applied

    def adopt(self, flow: ClinicFlow, topic: str, partition: int) -> None:
        """Take over a clinic restored from a checkpoint (one written before clinics
        remembered their days carries on as a ``RememberingFlow`` without history)."""
        zone = self.zone_of(flow.clinic_id) if self.zone_of is not None else None
        if isinstance(flow, RememberingFlow):
            flow.zone = zone
        else:
            flow = RememberingFlow.carrying_on(flow, zone)
        self.flows[flow.clinic_id] = flow
        self.partition_of[flow.clinic_id] = (topic, partition)

    def drop_partition(self, topic: str, partition: int) -> list[str]:
        """Forget the clinics of a partition this instance no longer owns."""
        gone = [c for c, tp in self.partition_of.items() if tp == (topic, partition)]
        for clinic_id in gone:
            self.flows.pop(clinic_id, None)
            self.partition_of.pop(clinic_id, None)
        self.applied.pop((topic, partition), None)
        return gone

    def clinics_of(self, topic: str, partition: int) -> list[str]:
        return [c for c, tp in self.partition_of.items() if tp == (topic, partition)]

    def process(self, records: Iterable[Inbound]) -> FloorBatchOutcome:
        """``process_stream`` of records read already (``RecordReader.read``: tests, the
        digest)."""
        return self.process_stream(
            (record, (record.reason or "unreadable record") if record.event is None
             else record.event) for record in records)

    def process_stream(self, records: Iterable[Reading]) -> FloorBatchOutcome:
        """Apply each record past its partition's last applied offset, in order; those
        the reader refused and those the floor cannot apply become dead letters (only
        these are kept as ``Inbound``s). ``records``: each record with its event or the
        reason it cannot be applied (``RecordReader.stream``)."""
        outcome = FloorBatchOutcome()
        applied, flows = self.applied, self.flows
        dead, offsets, touched, stages = (outcome.dead_letters, outcome.offsets,
                                          outcome.touched, outcome.stages)
        took_effect = duplicates = already_applied = 0
        for record, event in records:
            tp = (record.topic, record.partition)
            offset = record.offset
            if offset <= applied.get(tp, -1):
                already_applied += 1
                continue
            applied[tp] = offsets[tp] = offset
            if isinstance(event, str):
                dead.append(DeadLetter(inbound(record, event), event))
                continue
            envelope = event.envelope
            clinic_id = envelope.clinic_id
            flow = flows.get(clinic_id)
            if flow is None:
                flow = flows[clinic_id] = RememberingFlow(
                    clinic_id, self.zone_of(clinic_id) if self.zone_of is not None else None)
                self.partition_of[clinic_id] = tp
            at = envelope.occurred_at
            try:
                change = flow.apply(event.payload, at, envelope.event_id)
            except NotApplicable as exc:
                dead.append(DeadLetter(inbound(record, event), exc.reason))
                continue
            if change.duplicate:
                duplicates += 1
            else:
                took_effect += 1
                touched[clinic_id] = at
                for stage in change.stages:
                    stages.append((clinic_id, stage, at))
                if change.kind == "undo":
                    outcome.undone.append((clinic_id, envelope.event_id))
        outcome.applied, outcome.duplicates, outcome.already_applied = (
            took_effect, duplicates, already_applied)
        return outcome


def build_board(flow: ClinicFlow, estimates: list[WaitEstimate], now: datetime) -> dict[str, Any]:
    """The clinic's board: waiting patients by ticket code, rooms, providers, counts.

    No names: a visit appears as its ticket code (and its pseudonymous visit id,
    which staff views use for actions; screens get the ticket code only).
    """
    clinic = flow.clinic
    by_visit = {e.visit_id: e for e in estimates}
    waiting = []
    for visit in clinic.waiting():
        estimate = by_visit.get(visit.visit_id)
        waiting.append({
            "visit_id": visit.visit_id,
            "ticket_code": visit.ticket_code,
            "provider_id": visit.provider_id,
            "visit_type": visit.visit_type,
            "priority": visit.priority,
            "arrived_at": visit.arrived_at.isoformat(),
            "scheduled_at": visit.scheduled_at.isoformat() if visit.scheduled_at else None,
            "late": visit.late,
            "position": estimate.position if estimate else None,
            "wait_minutes": estimate.wait_minutes if estimate else None,
            "low": estimate.low if estimate else None,
            "high": estimate.high if estimate else None,
        })
    in_rooms = [
        {
            "visit_id": v.visit_id,
            "ticket_code": v.ticket_code,
            "provider_id": v.provider_id,
            "status": v.status.value,
            "room_id": v.room_id,
            "since": (v.provider_in_at or v.roomed_at or v.arrived_at).isoformat(),
        }
        for v in sorted(clinic.roomed(), key=lambda v: v.roomed_at or v.arrived_at)
    ]
    rooms = [
        {
            "room_id": r.room_id,
            "state": r.state.value,
            "since": r.since.isoformat(),
            "ticket_code": clinic.visits[r.visit_id].ticket_code
            if r.state is RoomState.OCCUPIED and r.visit_id in clinic.visits else None,
        }
        for r in sorted(clinic.rooms.values(), key=lambda r: r.room_id)
    ]
    providers = []
    for provider_id in sorted(clinic.providers()):
        delay = clinic.delays.get(provider_id)
        providers.append({
            "provider_id": provider_id,
            "waiting": sum(1 for w in waiting if w["provider_id"] == provider_id),
            "delay_minutes": delay.minutes if delay else 0,
            "delay_reason": delay.reason if delay else "",
            "delay_until": delay.until.isoformat() if delay else None,
        })
    clinic_delay = clinic.delays.get(None)
    return {
        "clinic_id": clinic.clinic_id,
        "as_of": now.isoformat(),
        "waiting": waiting,
        "in_rooms": in_rooms,
        "rooms": rooms,
        "providers": providers,
        "clinic_delay": None if clinic_delay is None else {
            "minutes": clinic_delay.minutes, "reason": clinic_delay.reason,
            "until": clinic_delay.until.isoformat(),
        },
        "undo": _undo_window(clinic),
        "counts": dict(clinic.counts),
        "rolling_average_minutes": flow.estimator.rolling_average(),
        "operations": flow.day.report(clinic, now),
    }


def _undo_window(clinic: Any) -> list[dict[str, Any]]:
    """The facts that an undo may still name (newest first), each with whether it can be
    undone now (nothing changed its visit or room since): the API checks an undo against
    this, so an accepted undo is never a dead letter."""
    return [{"event_id": event_id, "kind": kind, "undoable": undoable}
            for event_id, kind, undoable in clinic.undo_window()]
