"""Floor commands are checked against what the clinic has, on a real Kafka and Redis: a
room, provider, visit or event the clinic does not have is a 404 naming it, a room that
holds a patient takes no second one (409), an undo names an undoable action of that
clinic; and no command answered 2xx ever becomes a dead letter."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from services.flow.app import create_app
from shared import events as ev
from shared.admin import ensure_topics
from shared.settings import FlowSettings
from shared.topics import FLOOR, topic_name
from tests.helpers import auth, eventually, serving
from tests.integration.flow_support import NURSE, floor_event, flow_settings, get_board, publish

NORTH = {"north": {"name": "North Family Practice", "timezone": "America/New_York",
                   "providers": {"dr-lee": "Dr. Lee", "dr-okafor": "Dr. Okafor"},
                   "rooms": {"r1": "Exam 1", "r2": "Exam 2", "r3": "Exam 3"}}}


async def commands_env(kafka_bootstrap: str, redis_url: str, topic_prefix: str
                       ) -> dict[str, Any]:
    """FlowSettings' fields for these tests: north with its rooms and providers."""
    await ensure_topics(kafka_bootstrap, topic_prefix)
    return {**flow_settings(kafka_bootstrap, redis_url, topic_prefix),
            # south too: a clinic the deployment serves, whose visits north must refuse
            "clinics": json.dumps({**NORTH, "south": {"timezone": "America/Chicago"}})}


@pytest.fixture
async def flow_env(kafka_bootstrap: str, redis_url: str, topic_prefix: str) -> dict[str, Any]:
    return await commands_env(kafka_bootstrap, redis_url, topic_prefix)


def board_of(client: httpx.AsyncClient, clinic: str = "north") -> Callable[..., Any]:
    """``await board(predicate)``: the clinic's board once ``predicate`` holds of it."""
    async def board(predicate: Callable[[Any], Any]) -> Any:
        async def found() -> Any:
            b = await get_board(client, clinic, NURSE)
            return b if b and predicate(b) else None
        return await eventually(found)
    return board


def the_morning(clinic: str) -> list[ev.Event]:
    return [
        floor_event(ev.RoomReady(room_id="r1"), clinic),
        floor_event(ev.RoomReady(room_id="r2"), clinic),
        *(floor_event(ev.PatientArrived(visit_id=f"{clinic}-v{n}", ticket_code=f"A-{n}",
                                        provider_id="dr-lee", visit_type="follow_up"), clinic)
          for n in (1, 2)),
    ]


async def dead_letters(client: httpx.AsyncClient) -> float:
    """Flow's dead letters so far (every reason), from its metrics."""
    text = (await client.get("/metrics")).text
    pattern = re.compile(r'^clinicflow_dead_letters_total\{[^}]*service="flow"[^}]*\} (\S+)$',
                         re.MULTILINE)
    return sum(float(value) for value in pattern.findall(text))


def keyed(key: str) -> dict[str, str]:
    return {**NURSE, "Idempotency-Key": key}


async def test_commands_name_what_the_clinic_does_not_have_and_never_dead_letter(
    flow_env: dict[str, Any],
) -> None:
    floor = topic_name(FLOOR, flow_env["topic_prefix"])
    async with (
        serving(create_app(FlowSettings(**flow_env))) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        await publish(flow_env["kafka_bootstrap"], floor,
                      the_morning("north") + the_morning("south"))

        async def board(clinic: str, predicate: Any) -> Any:
            async def found() -> Any:
                b = await get_board(client, clinic, NURSE)
                return b if b and predicate(b) else None
            return await eventually(found)

        await board("north", lambda b: len(b["waiting"]) == 2)
        await board("south", lambda b: len(b["waiting"]) == 2)
        before = await dead_letters(client)

        # North's rooms are r1..r3 (configured): a room it does not have is named in a 404
        for path, body in [("/clinics/north/rooms/r999/ready", None),
                           ("/clinics/north/rooms/r999/out-of-service", {"reason": "x"}),
                           ("/clinics/north/visits/north-v1/room", {"room_id": "r999"})]:
            answer = await client.post(path, json=body, headers=keyed(f"k-{path}"))
            assert answer.status_code == 404, (path, answer.text)
            assert "r999" in answer.json()["detail"]
            assert answer.json()["code"] == "unknown_room"
        # a configured room not yet on the board opens; a visit it does not have is a 404
        assert (await client.post("/clinics/north/rooms/r3/ready", headers=NURSE)
                ).status_code == 202
        nobody = await client.post("/clinics/north/visits/south-v1/room",
                                   json={"room_id": "r2"}, headers=NURSE)
        assert nobody.status_code == 404 and "south-v1" in nobody.json()["detail"]

        # rooming: once; a second patient into the occupied room is refused, even with a
        # fresh key
        roomed = await client.post("/clinics/north/visits/north-v1/room",
                                   json={"room_id": "r1"}, headers=keyed("room-v1"))
        assert roomed.status_code == 202
        await board("north", lambda b: len(b["waiting"]) == 1)
        again = await client.post("/clinics/north/visits/north-v1/room",
                                  json={"room_id": "r1"}, headers=keyed("room-v1"))
        assert again.status_code == 202 and again.json()["replayed"] is True
        second = await client.post("/clinics/north/visits/north-v2/room",
                                   json={"room_id": "r1"}, headers=keyed("room-v2-into-r1"))
        assert second.status_code == 409 and "r1" in second.json()["detail"]
        assert second.json()["code"] == "room_occupied"
        busy = await client.post("/clinics/north/rooms/r1/ready", headers=NURSE)
        assert busy.status_code == 409 and busy.json()["code"] == "room_occupied"
        assert all(w in busy.json()["detail"] for w in ("r1", "north-v1", "A-1"))
        # provider in: only for a roomed patient (a waiting one would vanish from the screens)
        early = await client.post("/clinics/north/visits/north-v2/provider-in", json={},
                                  headers=NURSE)
        assert early.status_code == 409 and early.json()["code"] == "visit_not_roomed"
        assert "north-v2" in early.json()["detail"]

        # providers: configured ones (and any on the board); others are named in a 404
        commands: list[tuple[str, str, dict[str, Any] | None]] = [
            ("POST", "/clinics/north/visits/north-v1/provider-in", {"provider_id": "dr-who"}),
            ("POST", "/clinics/north/delays", {"provider_id": "dr-who", "minutes": 20}),
            ("DELETE", "/clinics/north/delays/dr-who", None),
        ]
        for method, path, body in commands:
            answer = await client.request(method, path, json=body, headers=NURSE)
            assert answer.status_code == 404, (path, answer.text)
            assert "dr-who" in answer.json()["detail"]
        delay = await client.post("/clinics/north/delays",
                                  json={"provider_id": "dr-okafor", "minutes": 40},
                                  headers=NURSE)
        assert delay.status_code == 202

        # undo: only a recent, undoable action of this clinic
        unknown = await client.post("/clinics/north/undo", json={"event_id": "no-such-event"},
                                    headers=NURSE)
        assert unknown.status_code == 404 and "no-such-event" in unknown.json()["detail"]
        south_room = await client.post("/clinics/south/visits/south-v1/room",
                                       json={"room_id": "r1"}, headers=NURSE)
        assert south_room.status_code == 202
        elsewhere = await client.post("/clinics/north/undo",
                                      json={"event_id": south_room.json()["event_id"]},
                                      headers=NURSE)
        assert elsewhere.status_code == 404
        seen = await client.post("/clinics/north/visits/north-v1/provider-in",
                                 json={"provider_id": "dr-okafor"}, headers=NURSE)
        assert seen.status_code == 202
        await board("north", lambda b: b["in_rooms"][0]["status"] == "with_provider")
        stale = await client.post("/clinics/north/undo",
                                  json={"event_id": roomed.json()["event_id"]}, headers=NURSE)
        assert stale.status_code == 409 and stale.json()["code"] == "not_undoable"
        undone = await client.post("/clinics/north/undo",
                                   json={"event_id": seen.json()["event_id"]}, headers=NURSE)
        assert undone.status_code == 202
        # an unconfigured clinic opens a room by naming it, as before
        assert (await client.post("/clinics/south/rooms/x7/ready", headers=NURSE)
                ).status_code == 202

        await board("north", lambda b: b["in_rooms"][0]["status"] == "roomed"
                    and any(p["provider_id"] == "dr-okafor" and p["delay_minutes"] == 40
                            for p in b["providers"]))
        await board("south", lambda b: any(r["room_id"] == "x7" for r in b["rooms"]))
        north = await get_board(client, "north", NURSE)
        assert {r["room_id"] for r in north["rooms"]} == {"r1", "r2", "r3"}
        assert await dead_letters(client) == before


async def test_two_nurses_rooming_into_one_room_at_once_one_is_refused(
    flow_env: dict[str, Any],
) -> None:
    """Both roomings pass the board's check before either is applied: the room's claim
    lets one through (202) and refuses the other (409 naming the room and the visit), and
    nothing becomes a dead letter. Once the board shows the rooming, the room's claim
    gives way: the patient checked out and the room cleaned, the other is roomed there.
    The arrival of a visit that has ended cannot be undone."""
    floor = topic_name(FLOOR, flow_env["topic_prefix"])
    async with (
        serving(create_app(FlowSettings(**flow_env))) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        morning = the_morning("north")
        arrival_of = {e.payload.visit_id: e.envelope.event_id for e in morning
                      if isinstance(e.payload, ev.PatientArrived)}
        await publish(flow_env["kafka_bootstrap"], floor, morning)

        board = board_of(client)
        await board(lambda b: len(b["waiting"]) == 2)
        before = await dead_letters(client)
        answers = await asyncio.gather(*(
            client.post(f"/clinics/north/visits/north-v{n}/room", json={"room_id": "r2"},
                        headers=keyed(f"race-{n}"))
            for n in (1, 2)))
        assert sorted(a.status_code for a in answers) == [202, 409], [a.text for a in answers]
        won, lost = (1, 2) if answers[0].status_code == 202 else (2, 1)
        refusal = answers[lost - 1].json()
        assert refusal["code"] == "room_occupied"
        assert "r2" in refusal["detail"] and f"north-v{won}" in refusal["detail"]

        # the winner's rooming is on the board; every later command is checked against it
        await board(lambda b: [v["visit_id"] for v in b["in_rooms"]] == [f"north-v{won}"])
        await publish(flow_env["kafka_bootstrap"], floor, [
            floor_event(ev.PatientCheckedOut(visit_id=f"north-v{won}"), "north")])
        ended = await board(lambda b: not b["in_rooms"])
        arrival = arrival_of[f"north-v{won}"]
        assert [a["undoable"] for a in ended["undo"] if a["event_id"] == arrival] == [False]
        undo = await client.post("/clinics/north/undo", json={"event_id": arrival},
                                 headers=NURSE)
        assert undo.status_code == 409 and undo.json()["code"] == "not_undoable"
        assert (await client.post("/clinics/north/rooms/r2/ready", headers=NURSE)
                ).status_code == 202
        await board(lambda b: any(r["room_id"] == "r2" and r["state"] == "ready"
                                  for r in b["rooms"]))
        again = await client.post(f"/clinics/north/visits/north-v{lost}/room",
                                  json={"room_id": "r2"}, headers=NURSE)
        assert again.status_code == 202, again.text
        await board(lambda b: [v["visit_id"] for v in b["in_rooms"]] == [f"north-v{lost}"])
        assert await dead_letters(client) == before


async def test_a_screen_may_not_command(flow_env: dict[str, Any]) -> None:
    async with (
        serving(create_app(FlowSettings(**flow_env))) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        answer = await client.post("/clinics/north/rooms/r1/ready", headers=auth("dev-screen"))
        assert answer.status_code == 403


async def published(client: httpx.AsyncClient) -> float:
    """Events flow published so far (every type), from its metrics."""
    text = (await client.get("/metrics")).text
    pattern = re.compile(r'^clinicflow_events_published_total\{[^}]*service="flow"[^}]*\} '
                         r"(\S+)$", re.MULTILINE)
    return sum(float(value) for value in pattern.findall(text))


async def test_a_command_that_changes_nothing_is_refused_and_its_first_is_replayed(
    flow_env: dict[str, Any],
) -> None:
    """Ready on a ready room, out of service on a room already out, provider in for a
    visit already with its provider: 409 naming the state, nothing published; the first
    command's Idempotency-Key still replays its 202."""
    floor = topic_name(FLOOR, flow_env["topic_prefix"])
    async with (
        serving(create_app(FlowSettings(**flow_env))) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        await publish(flow_env["kafka_bootstrap"], floor, the_morning("north"))
        board = board_of(client)
        await board(lambda b: len(b["waiting"]) == 2)
        before = await dead_letters(client)

        def state(b: dict[str, Any], room: str) -> str | None:
            return next((r["state"] for r in b["rooms"] if r["room_id"] == room), None)

        out = await client.post("/clinics/north/rooms/r2/out-of-service",
                                json={"reason": "sink"}, headers=keyed("out-r2"))
        assert out.status_code == 202
        roomed = await client.post("/clinics/north/visits/north-v1/room",
                                   json={"room_id": "r1"}, headers=NURSE)
        assert roomed.status_code == 202
        await board(lambda b: state(b, "r2") == "out_of_service" and b["in_rooms"])
        seen = await client.post("/clinics/north/visits/north-v1/provider-in", json={},
                                 headers=keyed("in-v1"))
        assert seen.status_code == 202
        await board(lambda b: b["in_rooms"][0]["status"] == "with_provider")
        await publish(flow_env["kafka_bootstrap"], floor,
                      [floor_event(ev.RoomReady(room_id="r3"), "north")])
        await board(lambda b: state(b, "r3") == "ready")

        sent = await published(client)
        for path, body, code, words in [
            ("/clinics/north/rooms/r3/ready", None, "already_ready", "room r3 is already ready"),
            ("/clinics/north/rooms/r2/out-of-service", {"reason": "x"},
             "already_out_of_service", "room r2 is already out of service"),
            ("/clinics/north/visits/north-v1/provider-in", {}, "already_with_provider",
             "visit north-v1 is already with a provider"),
        ]:
            for _ in range(2):
                answer = await client.post(path, json=body, headers=NURSE)
                assert answer.status_code == 409, (path, answer.text)
                assert answer.json()["code"] == code and words in answer.json()["detail"]
        assert await published(client) == sent
        # a retry of the first command (its key) is its answer, not the refusal
        for path, body, key, first in [
            ("/clinics/north/rooms/r2/out-of-service", {"reason": "sink"}, "out-r2", out),
            ("/clinics/north/visits/north-v1/provider-in", {}, "in-v1", seen),
        ]:
            again = await client.post(path, json=body, headers=keyed(key))
            assert again.status_code == 202 and again.json()["replayed"] is True, again.text
            assert again.json()["event_id"] == first.json()["event_id"]
        assert await published(client) == sent
        assert await dead_letters(client) == before
