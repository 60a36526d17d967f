"""Batches of floor records -> applied facts, boards and estimates. No I/O.

The live consumer hands each Kafka batch to ``FloorProcessor.process`` and
writes what comes back (boards, dead letters, estimates, a checkpoint) with
one Redis transaction and one batch of publishes. Keeping this step free of
Kafka and Redis lets it be tested in microseconds and benchmarked alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shared import events as ev
from shared.floor.clinic_flow import ClinicFlow
from shared.floor.estimator import Estimate
from shared.floor.model import NotApplicable, RoomState, StageTime


@dataclass(frozen=True, slots=True)
class Record:
    """One Kafka record as the processor sees it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass(slots=True)
class DeadLetter:
    record: Record
    reason: str


@dataclass(slots=True)
class BatchResult:
    """What a batch did, for the adapters to write and count."""

    applied: int = 0
    duplicates: int = 0
    already_applied: int = 0
    dead_letters: list[DeadLetter] = field(default_factory=list)
    touched: dict[str, datetime] = field(default_factory=dict)  # clinic -> its latest event time
    stages: list[tuple[str, StageTime, datetime]] = field(default_factory=list)  # ended at
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    undone: list[tuple[str, str]] = field(default_factory=list)


class FloorProcessor:
    """Owns the live ``ClinicFlow`` of every clinic on this instance's partitions."""

    def __init__(self) -> None:
        self.flows: dict[str, ClinicFlow] = {}
        self.partition_of: dict[str, tuple[str, int]] = {}
        self.applied: dict[tuple[str, int], int] = {}  # (topic, partition) -> last offset applied

    def adopt(self, flow: ClinicFlow, topic: str, partition: int) -> None:
        """Take over a clinic restored from a checkpoint."""
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

    def process(self, records: list[Record]) -> BatchResult:
        """Apply each record once, in order; unappliable ones become dead letters."""
        result = BatchResult()
        applied, flows, decode = self.applied, self.flows, ev.decode
        dead, offsets, touched, stages = (result.dead_letters, result.offsets, result.touched,
                                          result.stages)
        for record in records:
            tp = (record.topic, record.partition)
            if record.offset <= applied.get(tp, -1):
                result.already_applied += 1
                continue
            applied[tp] = offsets[tp] = record.offset
            if record.value is None:
                dead.append(DeadLetter(record, "empty record (tombstone)"))
                continue
            try:
                event = decode(record.value)
            except ev.InvalidEvent as exc:
                dead.append(DeadLetter(record, exc.reason))
                continue
            envelope = event.envelope
            clinic_id = envelope.clinic_id
            if record.key is not None and record.key != clinic_id.encode():
                dead.append(DeadLetter(
                    record, f"key {record.key.decode('utf-8', 'replace')!r} is not the event's "
                            f"clinic_id {clinic_id!r}: floor events are keyed by clinic"))
                continue
            payload = event.payload
            if type(payload) is ev.WaitEstimated:
                dead.append(DeadLetter(record, "wait.estimated on the floor topic"))
                continue
            flow = flows.get(clinic_id)
            if flow is None:
                flow = flows[clinic_id] = ClinicFlow(clinic_id)
                self.partition_of[clinic_id] = tp
            at = envelope.occurred_at
            try:
                change = flow.apply(payload, at, envelope.event_id)
            except NotApplicable as exc:
                dead.append(DeadLetter(record, exc.reason))
                continue
            if change.duplicate:
                result.duplicates += 1
            else:
                result.applied += 1
                touched[clinic_id] = at
                for stage in change.stages:
                    stages.append((clinic_id, stage, at))
                if change.kind == "undo":
                    result.undone.append((clinic_id, envelope.event_id))
        return result


def build_board(flow: ClinicFlow, estimates: list[Estimate], now: datetime) -> dict[str, Any]:
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
        "counts": dict(clinic.counts),
        "rolling_average_minutes": flow.estimator.rolling_average(),
        "operations": flow.day.report(clinic, now),
    }
