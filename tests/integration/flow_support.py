"""What the flow tests share: the settings of a flow under test, floor events and a whole
day of them, publishing, reading a board, and the check every fault test ends with (each
served board equals a board rebuilt from the topic by the pure processor)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from services.flow.processor import FloorProcessor, build_board, floor_reader
from shared import events as ev
from tests.helpers import auth, eventually, producer, read_topic

NURSE = auth("dev-nurse")


def flow_settings(kafka_bootstrap: str, redis_url: str, topic_prefix: str) -> dict[str, Any]:
    """FlowSettings' fields for a flow on this test's topics, group and Redis keys."""
    return {
        "kafka_bootstrap": kafka_bootstrap,
        "redis_url": redis_url,
        "topic_prefix": topic_prefix,
        "redis_prefix": topic_prefix.rstrip("."),
        "flow_checkpoint_seconds": 0.2,
        "flow_group_id": f"{topic_prefix}flow",
        "flow_tick_seconds": 0,  # no board refresh on its own: a test calls it with its time
    }


def service_env(settings: dict[str, Any]) -> dict[str, str]:
    """The same settings as the environment of a service run as a process."""
    return {f"CLINICFLOW_{key.upper()}": str(value) for key, value in settings.items()}


def floor_event(
    payload: ev.Payload, clinic: str = "north", minute: float = 0.0, base: datetime | None = None
) -> ev.Event:
    start = base or datetime.now(UTC)
    return ev.make_event(
        payload, clinic_id=clinic, source="test", occurred_at=start + timedelta(minutes=minute)
    )


async def publish(bootstrap: str, topic: str, events: list[ev.Event]) -> None:
    async with producer(bootstrap) as client:
        for event in events:
            await client.send_and_wait(topic, ev.encode(event), key=event.clinic_id.encode())


async def get_board(client: httpx.AsyncClient, clinic: str, headers: dict[str, str]) -> Any:
    response = await client.get(f"/clinics/{clinic}/board", headers=headers)
    return response.json() if response.status_code == 200 else None


def a_day(clinics: tuple[str, ...], visits: int = 60) -> list[ev.Event]:
    """Each clinic: three rooms, ``visits`` arrivals a minute apart, each roomed, checked out
    and its room made ready three minutes later (all but the last three are done)."""
    base = datetime.now(UTC) - timedelta(hours=1)
    day: list[ev.Event] = []
    for clinic in clinics:
        day += [floor_event(ev.RoomReady(room_id=f"r{n}"), clinic, 0, base) for n in range(3)]
        for n in range(visits):
            day.append(floor_event(ev.PatientArrived(
                visit_id=f"{clinic}-{n}", ticket_code=f"A-{n}", provider_id=f"dr-{n % 3}",
                visit_type="follow_up"), clinic, n, base))
            if n >= 3:
                done, room = f"{clinic}-{n - 3}", f"r{(n - 3) % 3}"
                day += [
                    floor_event(ev.PatientRoomed(visit_id=done, room_id=room), clinic, n, base),
                    floor_event(ev.PatientCheckedOut(visit_id=done), clinic, n + 0.5, base),
                    floor_event(ev.RoomReady(room_id=room), clinic, n + 0.6, base),
                ]
    return day


async def boards_match_a_rebuild(client: httpx.AsyncClient, bootstrap: str, floor: str,
                                 clinics: tuple[str, ...], visits: int = 60) -> None:
    """Every clinic's served board equals the board the pure processor builds from the
    whole topic, and the day's counts show no fact applied twice."""
    records = await read_topic(bootstrap, floor)
    read = floor_reader(floor).read
    expected = FloorProcessor()
    expected.process([read(r.topic, r.partition, r.offset, r.key, r.value)
                      for r in sorted(records, key=lambda r: (r.partition, r.offset))])
    for clinic in clinics:
        flow = expected.flows[clinic]
        at = flow.last_event_at
        assert at is not None
        want = build_board(flow, flow.estimates(at), at)

        async def matches(clinic: str = clinic, want: dict[str, Any] = want) -> Any:
            board = await get_board(client, clinic, NURSE)
            return board if board and board["counts"] == want["counts"] \
                and board["waiting"] == want["waiting"] else None

        board = await eventually(matches, timeout=45)
        assert board["counts"] == {"checked_out": visits - 3}
        assert board["rooms"] == want["rooms"]
