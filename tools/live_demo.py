"""A simulated clinic day, played live onto the floor topic (``make up``'s demo).

Each demo clinic gets a simulated day (``tools.simulate``) moved to
today so that it is mid-morning now: the morning so far is published at once
(the board is full within seconds) and the rest follows in real time, as a
clinic's front desk and nurses would produce it. ``--speed`` plays it faster.
Events go straight onto the floor topic with ``source="simulator"``.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaProducer

from shared import events as ev
from shared.logging import get_logger
from tools.replay import BadRecord, to_fact
from tools.simulate import simulate_day

log = get_logger("clinicflow.demo")

DEMO_CLINICS: tuple[tuple[str, str], ...] = (
    ("north", "mixed"),
    ("south", "walk_in_urgent_care"),
    ("east", "room_bound"),
)
MORNING_ALREADY_PLAYED = timedelta(hours=2, minutes=30)


@dataclass(frozen=True, slots=True)
class DemoEvent:
    at: datetime  # when it happens, today
    clinic_id: str
    payload: ev.Payload


def demo_day(clinics: tuple[tuple[str, str], ...] = DEMO_CLINICS, seed: int = 7,
             now: datetime | None = None) -> list[DemoEvent]:
    """Every clinic's simulated day moved so that ``MORNING_ALREADY_PLAYED`` is behind us."""
    now = now or datetime.now(UTC)
    merged: list[DemoEvent] = []
    for index, (clinic_id, scenario) in enumerate(clinics):
        day = simulate_day(scenario, seed + index, clinic_id=clinic_id)
        if not day.events:
            continue
        first = datetime.fromisoformat(day.events[0]["ts"])
        shift = now - MORNING_ALREADY_PLAYED - first
        tickets: dict[str, str] = {}
        letter = "ABCDEFGH"[index % 8]

        def ticket_for(_clinic: str, visit_id: str, letter: str = letter,
                       tickets: dict[str, str] = tickets) -> str:
            tickets.setdefault(visit_id, f"{letter}-{len(tickets) + 1}")
            return tickets[visit_id]

        for record in day.events:
            record = {**record, "clinic_id": clinic_id}
            try:
                payload = to_fact(record, ticket_for)
            except BadRecord:  # the simulator writes valid logs; skip rather than stop
                continue
            at = datetime.fromisoformat(record["ts"]) + shift
            merged.append(DemoEvent(at.astimezone(UTC), clinic_id, payload))
    merged.sort(key=lambda e: e.at)
    return merged


def _timeline(events: list[DemoEvent]) -> Iterator[DemoEvent]:
    heap = [(e.at, i, e) for i, e in enumerate(events)]
    heapq.heapify(heap)
    while heap:
        yield heapq.heappop(heap)[2]


async def play(bootstrap: str, floor_topic: str, *, speed: float = 1.0,
               stop: asyncio.Event | None = None, producer_kwargs: dict[str, Any] | None = None,
               clinics: tuple[tuple[str, str], ...] = DEMO_CLINICS) -> int:
    """Publish the demo day; returns how many events were sent before ``stop``."""
    stop = stop or asyncio.Event()
    started = datetime.now(UTC)
    events = demo_day(clinics, now=started)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                enable_idempotence=True, linger_ms=5, **(producer_kwargs or {}))
    await producer.start()
    sent = 0
    try:
        for event in _timeline(events):
            due = started + (event.at - started) / speed if event.at > started else event.at
            wait = (due - datetime.now(UTC)).total_seconds()
            if wait > 0:
                try:
                    await asyncio.wait_for(stop.wait(), timeout=wait)
                    break
                except TimeoutError:
                    pass
            if stop.is_set():
                break
            occurred = min(due, datetime.now(UTC))
            envelope = ev.make_event(event.payload, clinic_id=event.clinic_id,
                                     source="simulator", occurred_at=occurred,
                                     correlation_id=getattr(event.payload, "visit_id", None))
            await producer.send(floor_topic, ev.encode(envelope),
                                key=event.clinic_id.encode())
            sent += 1
        await producer.flush()
    finally:
        await producer.stop()
    log.info("demo day published", events=sent)
    return sent
