"""Floor commands that would both pass the board's check at the same moment, on a real
Kafka and Redis: every command that changes a room or a visit claims it until its event
is on the board (services/flow/commands.py), so of two such commands sent together one
is refused (409 naming the room or visit), and none answered 202 becomes a dead letter.
Also refused: clearing a delay that is not standing, rooming into a room that needs
cleaning."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from redis.asyncio import Redis

from services.flow.app import create_app
from shared import events as ev
from shared.settings import FlowSettings
from shared.topics import FLOOR, topic_name
from shared.visit_end import VisitEnds
from tests.fakes import FakeClock
from tests.helpers import auth, eventually, serving
from tests.integration.flow_support import NURSE, floor_event, get_board, publish
from tests.integration.test_flow_commands import (
    board_of,
    commands_env,
    dead_letters,
    keyed,
    the_morning,
)


@pytest.fixture
async def north(kafka_bootstrap: str, redis_url: str, topic_prefix: str
                ) -> AsyncIterator[tuple[httpx.AsyncClient, str, str]]:
    """A flow serving north (rooms r1..r3): its client, bootstrap and floor topic."""
    env = await commands_env(kafka_bootstrap, redis_url, topic_prefix)
    async with (
        serving(create_app(FlowSettings(**env))) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        yield client, kafka_bootstrap, topic_name(FLOOR, topic_prefix)


async def test_commands_on_one_room_or_visit_at_once_one_is_refused(
    north: tuple[httpx.AsyncClient, str, str],
) -> None:
    client, bootstrap, floor = north
    board = board_of(client)
    await publish(bootstrap, floor, [
        *the_morning("north"), floor_event(ev.RoomReady(room_id="r3"), "north"),
        floor_event(ev.PatientArrived(visit_id="north-v3", ticket_code="A-3",
                                      provider_id="dr-lee", visit_type="follow_up"))])

    def state(b: dict[str, Any], room: str) -> str | None:
        return next((r["state"] for r in b["rooms"] if r["room_id"] == room), None)

    await board(lambda b: len(b["waiting"]) == 3 and state(b, "r3") == "ready")
    before = await dead_letters(client)

    # one visit into two rooms at once: one rooming, the other refused naming the visit
    answers = list(await asyncio.gather(*(
        client.post("/clinics/north/visits/north-v1/room", json={"room_id": room},
                    headers=keyed(f"v1-{room}")) for room in ("r1", "r2"))))
    assert sorted(a.status_code for a in answers) == [202, 409], [a.text for a in answers]
    lost = next(a for a in answers if a.status_code == 409).json()
    assert "north-v1" in lost["detail"], lost
    roomed_in = "r1" if answers[0].status_code == 202 else "r2"
    free = "r2" if roomed_in == "r1" else "r1"
    await board(lambda b: [v["room_id"] for v in b["in_rooms"]] == [roomed_in])

    # out of service racing a rooming into that room: one of them is refused
    answers = list(await asyncio.gather(
        client.post(f"/clinics/north/rooms/{free}/out-of-service", json={"reason": "x"},
                    headers=NURSE),
        client.post("/clinics/north/visits/north-v2/room", json={"room_id": free},
                    headers=NURSE)))
    assert sorted(a.status_code for a in answers) == [202, 409], [a.text for a in answers]
    assert free in next(a for a in answers if a.status_code == 409).json()["detail"]

    # an undo (which may restore any room) racing a rooming into the room it restores
    await board(lambda b: b["undo"] and b["undo"][0]["kind"] in ("roomed",
                                                                 "room_out_of_service"))
    ready_r3 = next(a for a in (await get_board(client, "north", NURSE))["undo"]
                    if a["kind"] == "room_ready" and a["undoable"])
    answers = list(await asyncio.gather(
        client.post("/clinics/north/undo", json={"event_id": ready_r3["event_id"]},
                    headers=NURSE),
        client.post("/clinics/north/visits/north-v3/room", json={"room_id": "r3"},
                    headers=NURSE)))
    assert sorted(a.status_code for a in answers) == [202, 409], [a.text for a in answers]

    # every event before a last arrival is applied: none answered 202 is a dead letter
    await publish(bootstrap, floor, [floor_event(ev.PatientArrived(
        visit_id="north-v9", ticket_code="A-9", provider_id="dr-lee",
        visit_type="follow_up"))])
    await board(lambda b: any(w["visit_id"] == "north-v9" for w in b["waiting"]))
    assert await dead_letters(client) == before


async def test_room_ready_racing_a_rooming_into_that_room_one_is_refused(
    north: tuple[httpx.AsyncClient, str, str],
) -> None:
    """A ready room: "room ready" again (a nurse's second click) and a rooming into it,
    together. Whichever claims second finds the first's event not on the board yet (or,
    later, the room occupied): one 202, one 409; a ready applied after the rooming would
    have been a dead letter."""
    client, bootstrap, floor = north
    board = board_of(client)
    await publish(bootstrap, floor, the_morning("north"))
    await board(lambda b: len(b["waiting"]) == 2)
    before = await dead_letters(client)
    answers = list(await asyncio.gather(
        client.post("/clinics/north/rooms/r1/ready", headers=NURSE),
        client.post("/clinics/north/visits/north-v1/room", json={"room_id": "r1"},
                    headers=NURSE)))
    assert sorted(a.status_code for a in answers) == [202, 409], [a.text for a in answers]
    assert "r1" in next(a for a in answers if a.status_code == 409).json()["detail"]
    await publish(bootstrap, floor, [floor_event(ev.PatientArrived(
        visit_id="north-v9", ticket_code="A-9", provider_id="dr-lee",
        visit_type="follow_up"))])
    await board(lambda b: any(w["visit_id"] == "north-v9" for w in b["waiting"]))
    assert await dead_letters(client) == before


async def test_a_delay_not_standing_and_a_room_that_needs_cleaning_are_refused(
    north: tuple[httpx.AsyncClient, str, str],
) -> None:
    client, bootstrap, floor = north
    board = board_of(client)
    await publish(bootstrap, floor, the_morning("north"))

    await board(lambda b: len(b["waiting"]) == 2)
    before = await dead_letters(client)
    for path in ("/clinics/north/delays/dr-lee", "/clinics/north/delays/clinic"):
        answer = await client.delete(path, headers=NURSE)
        assert answer.status_code == 404, answer.text
        assert answer.json()["code"] == "no_delay"
        assert path.rsplit("/", 1)[1].replace("clinic", "clinic-wide") in \
            answer.json()["detail"]
    lenient = await client.post("/clinics/north/delays",
                                json={"provider_id": "dr-lee", "minutes": "20"}, headers=NURSE)
    assert lenient.status_code == 422 and "minutes" in lenient.json()["detail"]
    zero = await client.post("/clinics/north/delays",
                             json={"provider_id": "dr-lee", "minutes": 0}, headers=NURSE)
    assert zero.status_code == 404 and zero.json()["code"] == "no_delay"
    assert (await client.post("/clinics/north/delays",
                              json={"provider_id": "dr-lee", "minutes": 20},
                              headers=NURSE)).status_code == 202
    await board(lambda b: any(p["delay_minutes"] == 20 for p in b["providers"]))
    assert (await client.delete("/clinics/north/delays/dr-lee", headers=NURSE)
            ).status_code == 202

    assert (await client.post("/clinics/north/visits/north-v1/room",
                              json={"room_id": "r1"}, headers=NURSE)).status_code == 202
    await board(lambda b: len(b["in_rooms"]) == 1)
    await publish(bootstrap, floor, [
        floor_event(ev.PatientCheckedOut(visit_id="north-v1"), "north")])
    await board(lambda b: any(r["state"] == "needs_cleaning" for r in b["rooms"]))
    dirty = await client.post("/clinics/north/visits/north-v2/room",
                              json={"room_id": "r1"}, headers=NURSE)
    assert dirty.status_code == 409, dirty.text
    assert dirty.json()["code"] == "room_needs_cleaning" and "r1" in dirty.json()["detail"]
    await board(lambda b: all(p["delay_minutes"] == 0 for p in b["providers"]))
    assert await dead_letters(client) == before


async def test_every_time_on_the_board_is_on_the_clinic_s_clock(
    north: tuple[httpx.AsyncClient, str, str],
) -> None:
    """as_of, arrived_at, since, until beside scheduled_at: each in north's offset
    (America/New_York), for every role's view, the JSON and the live stream alike."""
    client, bootstrap, floor = north
    board = board_of(client)
    new_york = ZoneInfo("America/New_York")
    at = datetime(2026, 12, 7, 14, 0, tzinfo=UTC)
    await publish(bootstrap, floor, [
        floor_event(ev.RoomReady(room_id="r1"), "north", base=at),
        floor_event(ev.PatientArrived(visit_id="north-v1", ticket_code="A-1",
                                      provider_id="dr-lee", visit_type="follow_up",
                                      scheduled_at=at.astimezone(new_york)), "north", 1, at),
        floor_event(ev.PatientArrived(visit_id="north-v2", ticket_code="A-2",
                                      provider_id="dr-lee", visit_type="follow_up",
                                      scheduled_at=at), "north", 2, at),
        floor_event(ev.PatientRoomed(visit_id="north-v1", room_id="r1"), "north", 3, at),
        floor_event(ev.DelayAnnounced(provider_id="dr-lee", minutes=20), "north", 4, at),
        floor_event(ev.DelayAnnounced(provider_id=None, minutes=10), "north", 4, at)])
    await board(lambda b: b["clinic_delay"] is not None)
    times = re.compile(r'"(\d{4}-\d\d-\d\dT[^"]*)"')
    for token in ("dev-nurse", "dev-screen", "dev-manager"):
        text = (await client.get("/clinics/north/board", headers=auth(token))).text
        found = times.findall(text)
        assert len(found) >= (6 if token != "dev-screen" else 2), (token, found)
        for value in found:
            when = datetime.fromisoformat(value)
            assert when.utcoffset() == new_york.utcoffset(when.replace(tzinfo=None)), value
    nurse = (await client.get("/clinics/north/board", headers=NURSE)).json()
    assert nurse["waiting"][0]["scheduled_at"] == "2026-12-07T09:00:00-05:00"
    assert nurse["in_rooms"][0]["since"] == "2026-12-07T09:03:00-05:00"
    async with client.stream("GET", "/clinics/north/stream", headers=NURSE) as stream:
        async for line in stream.aiter_lines():
            if line.startswith("data: "):
                assert '"as_of":"' in line and "+00:00" not in line, line
                break


async def test_the_waiting_room_shows_a_called_ticket_for_three_minutes_of_the_board_s_clock(
    kafka_bootstrap: str, redis_url: str, topic_prefix: str,
) -> None:
    """NOW CALLING: a ticket roomed (the provider not in yet) is called on the lobby screen
    from its rooming until CALLING_MINUTES later by the board's as_of (its events' times,
    then the board refresh's injected clock), not for as long as it stays roomed."""
    env = await commands_env(kafka_bootstrap, redis_url, topic_prefix)
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)
    clock = FakeClock(base)
    app = create_app(FlowSettings(**env), clock=clock)
    screen = auth("dev-screen")
    async with serving(app) as url, httpx.AsyncClient(base_url=url) as client:
        await publish(kafka_bootstrap, topic_name(FLOOR, topic_prefix), [
            floor_event(ev.RoomReady(room_id="r1"), "north", 0, base),
            floor_event(ev.PatientArrived(visit_id="north-v1", ticket_code="A-1",
                                          provider_id="dr-lee", visit_type="follow_up"),
                        "north", 0, base),
            floor_event(ev.PatientRoomed(visit_id="north-v1", room_id="r1"), "north", 1, base)])

        async def called() -> list[str]:
            b = await get_board(client, "north", screen)
            return [c["ticket_code"] for c in b["calling"]] if b else []

        assert await eventually(called) == ["A-1"]
        for minutes, shown in ((3.9, ["A-1"]), (4.1, []), (2, ["A-1"])):
            await app.state.projection.refresh_boards(clock.set(base + timedelta(
                minutes=minutes)))
            assert await called() == shown, minutes


async def test_a_visit_check_in_or_billing_is_ending_is_not_roomed_or_seen(
    north: tuple[httpx.AsyncClient, str, str], redis_url: str, topic_prefix: str,
) -> None:
    """A cancel (check-in) or a checkout (billing) takes the visit's end claim before it
    publishes; a rooming or provider in of that visit then is 409 visit_ended (it would
    be a dead letter after the end), and one published gives the claim back."""
    client, bootstrap, floor = north
    board = board_of(client)
    redis = Redis.from_url(redis_url)
    ends = VisitEnds(redis, topic_prefix.rstrip("."))
    try:
        await publish(bootstrap, floor, the_morning("north"))
        await board(lambda b: len(b["waiting"]) == 2)
        before = await dead_letters(client)
        assert await ends.claim("north", "north-v1", "cancelled") is None
        refused = await client.post("/clinics/north/visits/north-v1/room",
                                    json={"room_id": "r1"}, headers=NURSE)
        assert refused.status_code == 409, refused.text
        assert refused.json()["code"] == "visit_ended" and "north-v1" in refused.json()["detail"]
        roomed = await client.post("/clinics/north/visits/north-v2/room",
                                   json={"room_id": "r1"}, headers=NURSE)
        assert roomed.status_code == 202, roomed.text
        assert await ends.holder("north", "north-v2") is None  # given back once published
        await board(lambda b: len(b["in_rooms"]) == 1)
        assert await ends.claim("north", "north-v2", "checked_out") is None
        seen = await client.post("/clinics/north/visits/north-v2/provider-in", json={},
                                 headers=NURSE)
        assert seen.status_code == 409 and seen.json()["code"] == "visit_ended", seen.text
        # the checkout published: the visit has left the board but ended today, so a
        # rooming or provider in is 409 visit_ended; a visit never seen is still a 404
        await publish(bootstrap, floor, [
            floor_event(ev.PatientCheckedOut(visit_id="north-v2"), "north")])
        await board(lambda b: not b["in_rooms"])
        for path, body in [("/clinics/north/visits/north-v2/room", {"room_id": "r2"}),
                           ("/clinics/north/visits/north-v2/provider-in", {})]:
            ended = await client.post(path, json=body, headers=NURSE)
            assert ended.status_code == 409, ended.text
            assert ended.json()["code"] == "visit_ended"
            assert "north-v2" in ended.json()["detail"] and "checked out" in ended.json()[
                "detail"]
        never = await client.post("/clinics/north/visits/north-v77/room",
                                  json={"room_id": "r2"}, headers=NURSE)
        assert never.status_code == 404 and never.json()["code"] == "unknown_visit"
        await publish(bootstrap, floor, [floor_event(ev.PatientArrived(
            visit_id="north-v9", ticket_code="A-9", provider_id="dr-lee",
            visit_type="follow_up"))])
        await board(lambda b: any(w["visit_id"] == "north-v9" for w in b["waiting"]))
        assert await dead_letters(client) == before
    finally:
        await redis.aclose()
