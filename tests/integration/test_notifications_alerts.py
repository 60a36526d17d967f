"""Nurse room-ready alerts on the real broker and Redis: live on the stream the nurse
station subscribes to, paged to a (signed) webhook, withdrawn when the room is taken."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson

from services.notifications.app import create_app
from shared import events as ev
from shared.settings import NotificationsSettings
from shared.topics import NOTIFICATIONS, topic_name
from tests.helpers import eventually, read_topic, serving
from tests.integration.notifications_support import (
    PAGING_SECRET,
    MailCatcher,
    arrival,
    floor_event,
    notifications_service,
    publish_floor,
    receiving,
)


async def sse_events(response: httpx.Response) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """(event, data) pairs from a Server-Sent Events response."""
    name, data = "message", b""
    async for line in response.aiter_lines():
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data += line[5:].strip().encode()
        elif line == "" and data:
            yield name, orjson.loads(data)
            name, data = "message", b""


async def test_a_room_ready_alert_reaches_a_subscribed_nurse_stream_within_a_second(
    notifications_env: dict[str, Any], smtp_server: MailCatcher,
) -> None:
    bootstrap, prefix = notifications_env["kafka_bootstrap"], notifications_env["topic_prefix"]
    now = datetime.now(UTC)
    async with receiving(PAGING_SECRET) as pager:
        settings = NotificationsSettings(**notifications_env, paging_webhook_url=pager.url,
                                         paging_hmac_secret=PAGING_SECRET)
        app = create_app(settings)
        async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
            await publish_floor(bootstrap, prefix, [
                arrival("v17", "A-17", "dr-lee", now),
                arrival("v18", "A-18", "dr-lee", now + timedelta(seconds=1))])
            await eventually(lambda: app.state.notifier.runner.applied_total >= 2, timeout=20)
            # the nurse station's EventSource: the token rides in the query string
            async with client.stream("GET", "/clinics/north/alerts/stream",
                                     params={"access_token": "dev-nurse"}) as stream:
                assert stream.status_code == 200
                assert stream.headers["content-type"].startswith("text/event-stream")
                events = sse_events(stream)
                assert await anext(events) == ("alerts", {"clinic_id": "north", "alerts": []})

                # how fast is bench/'s business; here: the alert arrives, pushed (no reload)
                await publish_floor(bootstrap, prefix, [
                    floor_event(ev.RoomReady(room_id="room-4"), now + timedelta(seconds=2))])
                name, alert = await asyncio.wait_for(anext(events), 15)
                assert name == "alert.raised"
                assert alert["text"] == "Room 4 is ready for A-17 (Dr. Lee)."

                await publish_floor(bootstrap, prefix, [floor_event(
                    ev.PatientRoomed(visit_id="v17", room_id="room-4"),
                    now + timedelta(seconds=3))])
                name, withdrawn = await asyncio.wait_for(anext(events), 5)
                assert name == "alert.withdrawn"
                assert (withdrawn["alert_id"], withdrawn["reason"]) == (alert["alert_id"],
                                                                        "room_taken")
            standing = (await client.get("/clinics/north/alerts",
                                         headers={"Authorization": "Bearer dev-nurse"})).json()
            assert standing["alerts"] == []

            # the pager got both, signed (the receiver refuses a bad signature)
            await eventually(lambda: len(pager.accepted) == 2, timeout=10)
            assert sorted(p["type"] for p in pager.accepted) == [
                "nurse_alert.raised", "nurse_alert.withdrawn"]
            assert pager.refused == []
            assert all(p["alert"]["ticket_code"] == "A-17" for p in pager.accepted)
            assert len(set(pager.seen_keys)) == 2  # one Idempotency-Key per page

    records = await read_topic(bootstrap, topic_name(NOTIFICATIONS, prefix), expect=4)
    kinds = sorted(ev.decode(r.value).event_type for r in records)
    assert kinds == ["notification.sent", "notification.sent", "nurse_alert.raised",
                     "nurse_alert.withdrawn"]


async def test_a_new_urgent_patient_changes_who_the_ready_room_is_for(
    notifications_env: dict[str, Any], smtp_server: MailCatcher,
) -> None:
    bootstrap, prefix = notifications_env["kafka_bootstrap"], notifications_env["topic_prefix"]
    now = datetime.now(UTC)
    async with notifications_service(notifications_env) as (_app, client):
        await publish_floor(bootstrap, prefix, [
            arrival("v1", "A-1", "dr-lee", now),
            floor_event(ev.RoomReady(room_id="room-2"), now + timedelta(seconds=1)),
            floor_event(ev.PatientArrived(visit_id="v2", ticket_code="U-1", provider_id="dr-kim",
                                          visit_type="sick", priority="urgent"),
                        now + timedelta(seconds=2)),
        ])

        async def standing() -> list[dict[str, Any]]:
            answer = await client.get("/clinics/north/alerts",
                                      headers={"Authorization": "Bearer dev-nurse"})
            alerts: list[dict[str, Any]] = answer.json()["alerts"]
            return alerts

        alerts = await eventually(lambda: _with_ticket(standing(), "U-1"), timeout=20)
        assert [a["text"] for a in alerts] == ["Room 2 is ready for U-1 (Dr. Kim)."]


async def _with_ticket(alerts: Any, ticket: str) -> list[dict[str, Any]] | None:
    found: list[dict[str, Any]] = await alerts
    return found if [a["ticket_code"] for a in found] == [ticket] else None
