"""Names people use, from imports (issue 15, point 3), on real Kafka and Redis: a FHIR
Practitioner and Location imported at check-in reach flow's board and notifications'
wording by name, through clinicflow.directory.v1 and each service's own projection of
it; the configured name still wins. With their Redis keys gone, flow and notifications
rebuild the same names from the topic."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any

import httpx
import orjson
from fastapi import FastAPI
from redis.asyncio import Redis

from services.flow.app import create_app as flow_app
from services.notifications.app import create_app as notifications_app
from shared import events as ev
from shared.settings import FlowSettings, NotificationsSettings
from shared.topics import DIRECTORY, FLOOR, topic_name
from tests.helpers import all_relayed, eventually, read_topic, serving
from tests.integration.flow_support import NURSE, flow_settings, publish
from tests.integration.test_checkin_support import (
    FHIR,
    FRONT_DESK,
    at,
    fhir_appointment,
    fhir_bundle,
    midday_zone,
    running_checkin,
)

CLINICS = orjson.dumps({"north": {"name": "North Family Practice", "timezone": midday_zone(),
                                  "providers": {"dr-kim": "Dr. Min-jun Kim"},
                                  "rooms": {"r1": "Room One"}}}).decode()


@asynccontextmanager
async def flow_and_notifications(kafka_bootstrap: str, redis_url: str, topic_prefix: str
                                 ) -> Any:
    flow = flow_app(FlowSettings(**{**flow_settings(kafka_bootstrap, redis_url, topic_prefix),
                                    "clinics": CLINICS}))
    notifications = notifications_app(NotificationsSettings(
        kafka_bootstrap=kafka_bootstrap, redis_url=redis_url, topic_prefix=topic_prefix,
        redis_prefix=topic_prefix.rstrip("."), clinics=CLINICS,
        notifications_group_id=f"{topic_prefix}notifications", notifications_tick_seconds=0))
    async with serving(flow) as flow_url, serving(notifications) as notes_url, \
            httpx.AsyncClient(base_url=flow_url, timeout=10) as flow_client, \
            httpx.AsyncClient(base_url=notes_url, timeout=10) as notes_client:
        for client in (flow_client, notes_client):
            async def ready(client: httpx.AsyncClient = client) -> bool:
                return (await client.get("/readyz")).status_code == 200
            await eventually(ready, timeout=60)
        yield flow_client, notes_client, flow, notifications


async def names_shown(flow: httpx.AsyncClient, notes: httpx.AsyncClient,
                      notifications: FastAPI) -> dict[str, Any]:
    """What the board and the notifier say, once both name the imported provider."""
    async def both() -> dict[str, Any] | None:
        board = await flow.get("/clinics/north/board", headers=NURSE)
        if board.status_code != 200:
            return None
        names = board.json().get("names", {})
        if names.get("providers", {}).get("dr-lee") != "Dr. Ada Lee":
            return None
        await notifications.state.imported_names.refresh()  # its periodic job, now
        rules = (await notes.get("/clinics/north/rules", headers=NURSE)).json()
        if rules["provider_names"].get("dr-lee") != "Dr. Ada Lee":
            return None
        return {"board": names, "notifications": rules["provider_names"]}
    shown: dict[str, Any] = await eventually(both, timeout=30)
    return shown


async def test_an_imported_practitioner_is_named_on_the_board_and_in_messages_and_rebuilt(
        kafka_bootstrap: str, redis_url: str, topic_prefix: str) -> None:
    directory_topic = topic_name(DIRECTORY, topic_prefix)
    lee = {"resourceType": "Practitioner", "id": "dr-lee",
           "name": [{"prefix": ["Dr."], "given": ["Ada"], "family": "Lee"}]}
    kim = {"resourceType": "Practitioner", "id": "dr-kim", "name": [{"text": "Kim M."}]}
    room = {"resourceType": "Location", "id": "r5", "name": "Exam room 5"}
    other = {"resourceType": "Location", "id": "r6", "name": "Exam room 6"}
    bundle = fhir_bundle(fhir_appointment("apt-n1", "ehr-1", "dr-lee", at(45)),
                         fhir_appointment("apt-n2", "ehr-2", "dr-kim", at(60)),
                         patients=(lee, kim, room, other))
    async with running_checkin(kafka_bootstrap, redis_url, topic_prefix,
                               clinics=CLINICS) as checkin:
        answer = await checkin.client.post("/clinics/north/schedule/fhir", content=bundle,
                                           headers={**FRONT_DESK, **FHIR})
        assert answer.status_code == 200, answer.text
        records = await read_topic(kafka_bootstrap, directory_topic, expect=4, timeout=10)
        # the same Bundle again names nobody anew: nothing more is published
        again = await checkin.client.post("/clinics/north/schedule/fhir", content=bundle,
                                          headers={**FRONT_DESK, **FHIR})
        assert again.status_code == 200
        await all_relayed(checkin.app.state.relay)  # whatever it queued is on Kafka now
        assert len(await read_topic(kafka_bootstrap, directory_topic, timeout=5)) == 4
    named = [orjson.loads(r.value) for r in records]
    assert {(n["data"]["kind"], n["data"]["id"], n["data"]["display"]) for n in named} == {
        ("provider", "dr-lee", "Dr. Ada Lee"), ("provider", "dr-kim", "Kim M."),
        ("room", "r5", "Exam room 5"), ("room", "r6", "Exam room 6")}
    assert all(r.key == b"north" for r in records)
    assert {n["event_type"] for n in named} == {"directory.named"}

    # a floor event gives flow a board for the clinic
    await publish(kafka_bootstrap, topic_name(FLOOR, topic_prefix), [ev.make_event(
        ev.RoomReady(room_id="r5"), clinic_id="north", source="test")])
    async with flow_and_notifications(kafka_bootstrap, redis_url, topic_prefix) as (
            flow, notes, _flow_app, notifications):
        shown = await names_shown(flow, notes, notifications)
        # a room an import named is one of the clinic's rooms for the nurse's commands too
        ready = await flow.post("/clinics/north/rooms/r6/ready", headers=NURSE)
        assert ready.status_code == 202, ready.text
        unknown = await flow.post("/clinics/north/rooms/r99/ready", headers=NURSE)
        assert unknown.status_code == 404, unknown.text
    assert shown["board"] == {"providers": {"dr-kim": "Dr. Min-jun Kim",  # configured wins
                                            "dr-lee": "Dr. Ada Lee"},
                              "rooms": {"r1": "Room One", "r5": "Exam room 5",
                                        "r6": "Exam room 6"}}
    assert shown["notifications"] == {"dr-kim": "Dr. Min-jun Kim", "dr-lee": "Dr. Ada Lee"}

    # flow's and notifications' Redis lost: both rebuild their names from the topic
    redis = Redis.from_url(redis_url)
    prefix = topic_prefix.rstrip(".")
    try:
        for service in ("flow", "notifications"):
            kept = [k async for k in redis.scan_iter(match=f"{prefix}:{service}*")]
            kept += [k async for k in redis.scan_iter(match=f"{prefix}:applied:{service}*")]
            assert kept
            await redis.delete(*kept)
    finally:
        await redis.aclose()
    async with flow_and_notifications(kafka_bootstrap, redis_url, topic_prefix) as (
            flow, notes, _flow_app, notifications):
        assert await names_shown(flow, notes, notifications) == shown
