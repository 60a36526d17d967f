"""A clinic configured with its names and zone (CLINICFLOW_CLINICS), on the real broker,
Redis and SMTP server: patients read "Dr. Okafor" and "Exam 5", nurses see the room and
the provider by name on their live stream, and every time the service shows (the mail's
Date, the answers' times, the contact's expiry) is on the clinic's clock, at a clinic
ten hours behind UTC and one thirteen hours ahead."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, time, timedelta
from email.utils import parsedate_to_datetime
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import orjson

from services.notifications.app import create_app
from shared import events as ev
from shared import events_notifications as nev
from shared.settings import NotificationsSettings
from shared.topics import NOTIFICATIONS, topic_name
from tests.fakes import FakeClock
from tests.helpers import eventually, read_topic, serving
from tests.integration.notifications_support import (
    FRONT_DESK,
    NURSE,
    MailCatcher,
    arrival,
    estimate,
    floor_event,
    publish_estimates,
    publish_floor,
    record_contact,
    rules_json,
)
from tests.integration.test_notifications_alerts import sse_events

CLINICS = {
    "hilo": {"name": "Hilo Family Clinic", "timezone": "Pacific/Honolulu",
             "providers": {"p1": "Dr. Okafor", "p2": "Dr. Kealoha"},
             "rooms": {"r5": "Exam 5"}},
    "tonga": {"name": "Nuku'alofa Health Centre", "timezone": "Pacific/Tongatapu",
              "providers": {"p1": "Dr. Fifita"}},
}
HILO, TONGA = ZoneInfo("Pacific/Honolulu"), ZoneInfo("Pacific/Tongatapu")


def settings(env: dict[str, Any], **more: Any) -> NotificationsSettings:
    return NotificationsSettings(**{**env, "clinics": orjson.dumps(CLINICS).decode(),
                                    "notifications_rules": rules_json(
                                        settle_seconds=5, come_back_lead_minutes=10),
                                    **more})


async def test_patients_in_hilo_read_their_doctors_and_rooms_names_on_hilos_clock(
    notifications_env: dict[str, Any], smtp_server: MailCatcher,
) -> None:
    bootstrap, prefix = notifications_env["kafka_bootstrap"], notifications_env["topic_prefix"]
    # the service's clock reads 22:30 in Hilo, 08:30 UTC the next day: the clinic's
    # evening is already tomorrow in UTC (the next such evening: Redis expires the contact
    # on its own clock)
    evening = datetime.combine(datetime.now(HILO).date(), time(22, 30), HILO)
    if evening < datetime.now(UTC):
        evening += timedelta(days=1)
    clock = FakeClock(evening.astimezone(UTC))
    now = clock.now()
    assert now.date() == evening.date() + timedelta(days=1)
    app = create_app(settings(notifications_env), clock=clock)
    async with serving(app) as url, httpx.AsyncClient(base_url=url) as client:
        await publish_floor(bootstrap, prefix, [
            arrival("v17", "A-17", "p1", now, clinic="hilo"),
            arrival("v18", "A-18", "p2", now, clinic="hilo")])
        saved = await record_contact(client, "v17", "email", "a17@patients.example.org",
                                     clinic="hilo")
        await record_contact(client, "v18", "email", "a18@patients.example.org",
                             clinic="hilo", wait_anywhere=True, delay_updates=False)
        # the contact is kept until Hilo's midnight (not UTC's, long gone), on Hilo's clock
        expires = datetime.fromisoformat(saved["expires_at"])
        assert expires.isoformat() == (
            f"{evening.date() + timedelta(days=1)}T00:00:00-10:00")

        await publish_floor(bootstrap, prefix, [floor_event(
            ev.DelayAnnounced(provider_id="p1", minutes=40), now, clinic="hilo")])
        await publish_estimates(bootstrap, prefix, [
            estimate("v17", "A-17", "p1", 50, now, clinic="hilo", position=2),
            estimate("v18", "A-18", "p2", 8, now, clinic="hilo", position=1)])
        await eventually(lambda: smtp_server.to("a17@patients.example.org")
                         and smtp_server.to("a18@patients.example.org"), timeout=20)
        [delay] = smtp_server.to("a17@patients.example.org")
        assert delay.subject == "Hilo Family Clinic: your wait is longer"
        assert delay.text == ("Hilo Family Clinic: Dr. Okafor is running about 40 minutes "
                              "behind; your new estimated wait is 45\u201355 minutes.")
        assert "p1" not in delay.text
        assert parsedate_to_datetime(delay.date) == now  # the service's clock...
        assert parsedate_to_datetime(delay.date).utcoffset() == timedelta(hours=-10)  # Hilo's
        [come_back] = smtp_server.to("a18@patients.example.org")
        assert come_back.subject == "Hilo Family Clinic: please come back now"

        # Exam 5 is ready: Dr. Okafor runs late, so it is for A-18 (Dr. Kealoha), outside
        await publish_floor(bootstrap, prefix, [floor_event(
            ev.RoomReady(room_id="r5"), now + timedelta(seconds=1), clinic="hilo")])
        await eventually(lambda: len(smtp_server.to("a18@patients.example.org")) == 2,
                         timeout=20)
        ready = smtp_server.to("a18@patients.example.org")[1]
        assert ready.text == ("We are ready for you (ticket A-18): please come in now. "
                              "Exam 5 is ready.")

        listed = (await client.get("/clinics/hilo/notifications",
                                   headers=FRONT_DESK)).json()["notifications"]
        assert {datetime.fromisoformat(n["created_at"]).utcoffset() for n in listed} == {
            timedelta(hours=-10)}
        [warning] = [n for n in listed if n["kind"] == "delay_warning"]
        status = (await client.get(f"/clinics/hilo/notifications/"
                                   f"{warning['notification_id']}", headers=FRONT_DESK)).json()
        assert status["text"] == delay.text  # what was sent, as sent
        rules = (await client.get("/clinics/hilo/rules", headers=FRONT_DESK)).json()
        assert (rules["clinic_name"], rules["timezone"], rules["provider_names"]) == (
            "Hilo Family Clinic", "Pacific/Honolulu", {"p1": "Dr. Okafor", "p2": "Dr. Kealoha"})
        await app.state.sender.drain()

    # events keep the ids
    events = [ev.decode(r.value) for r in await read_topic(
        bootstrap, topic_name(NOTIFICATIONS, prefix), expect=4)]
    [raised] = [e.payload for e in events if isinstance(e.payload, nev.NurseAlertRaised)]
    assert (raised.room_id, raised.provider_id, raised.ticket_code) == ("r5", "p2", "A-18")
    assert raised.text == "Exam 5 is ready for A-18 (Dr. Kealoha)."


async def test_nurses_in_tonga_see_the_ready_room_and_provider_by_name_on_tongas_clock(
    notifications_env: dict[str, Any], smtp_server: MailCatcher,
) -> None:
    bootstrap, prefix = notifications_env["kafka_bootstrap"], notifications_env["topic_prefix"]
    now = datetime.now(UTC)
    app = create_app(settings(notifications_env))
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        await publish_floor(bootstrap, prefix, [
            arrival("t1", "T-1", "p1", now, clinic="tonga")])
        await eventually(lambda: app.state.notifier.runner.applied_total >= 1, timeout=20)
        async with client.stream("GET", "/clinics/tonga/alerts/stream",
                                 params={"access_token": "dev-nurse"}) as stream:
            events = sse_events(stream)
            assert await anext(events) == ("alerts", {"clinic_id": "tonga", "alerts": []})
            await publish_floor(bootstrap, prefix, [floor_event(
                ev.RoomReady(room_id="room-3"), now + timedelta(seconds=1), clinic="tonga")])
            name, alert = await asyncio.wait_for(anext(events), 15)
        assert name == "alert.raised"
        # no configured name for room-3: read from its id
        assert alert["text"] == "Room 3 is ready for T-1 (Dr. Fifita)."
        assert (alert["room_id"], alert["room_name"]) == ("room-3", "Room 3")
        assert (alert["provider_id"], alert["provider_name"]) == ("p1", "Dr. Fifita")
        assert datetime.fromisoformat(alert["raised_at"]).utcoffset() == timedelta(hours=13)
        standing = (await client.get("/clinics/tonga/alerts", headers=NURSE)).json()
        assert [a["text"] for a in standing["alerts"]] == [alert["text"]]
