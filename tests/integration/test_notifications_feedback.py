"""Feedback after the visit on real Kafka, Redis and SMTP: a patient who gave an e-mail is
checked out, gets one message with a signed link, opens the form, answers once; the
answer's event carries no text, the text is only in notifications' store, and the link
used again is refused. A patient checked out in the evening's quiet hours is asked at
08:00 on the clinic's clock: their contact is kept past midnight for that message only (the
front desk is no longer shown it), and deleted once it is sent (or at once, with the
message, when they ask); a deferred request cancelled no longer keeps it."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, time, timedelta
from email.utils import parsedate_to_datetime
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import orjson
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from services.notifications.app import create_app
from services.notifications.domain import Preferences
from services.notifications.plan import NotificationChanges
from services.notifications.records import NewNotification
from services.notifications.store import NotificationStore
from shared import events as ev
from shared.settings import NotificationsSettings
from shared.topics import NOTIFICATIONS, topic_name
from tests.fakes import FakeClock
from tests.helpers import eventually, read_topic, serving
from tests.integration.notifications_support import (
    FRONT_DESK,
    MailCatcher,
    arrival,
    floor_event,
    minutes_ago,
    notifications_service,
    notifier_has_read_everything,
    publish_floor,
    record_contact,
    rules_json,
)

PUBLIC = "https://north.clinic.example"
ADDRESS = "a17@patients.example.org"
WORRY = "my knee still hurts when I climb stairs"
ADDRESS_V17 = "v17@patients.example.org"


async def test_a_checked_out_patient_gets_one_link_and_answers_once(
    notifications_env: dict[str, Any], smtp_server: MailCatcher, kafka_bootstrap: str,
    redis_url: str, topic_prefix: str,
) -> None:
    env = {**notifications_env, "notifications_public_url": PUBLIC,
           "notifications_feedback_secret": "feedback-secret-for-this-test"}
    async with notifications_service(env) as (_app, client):
        await publish_floor(kafka_bootstrap, topic_prefix, [
            arrival("v17", "A-17", "p1", minutes_ago(40)),
            floor_event(ev.RoomReady(room_id="r1"), minutes_ago(40)),
            floor_event(ev.PatientRoomed(visit_id="v17", room_id="r1"), minutes_ago(30)),
            floor_event(ev.ProviderIn(visit_id="v17", provider_id="p1"), minutes_ago(25))])
        await record_contact(client, "v17", "email", ADDRESS, delay_updates=False)
        checkout = floor_event(ev.PatientCheckedOut(visit_id="v17"), minutes_ago(0))
        # the billing desk's checkout, delivered twice (at least once): one message
        await publish_floor(kafka_bootstrap, topic_prefix, [checkout, checkout])

        await eventually(lambda: smtp_server.to(ADDRESS), timeout=20)
        [mail] = smtp_server.to(ADDRESS)
        assert "how was your visit" in mail.subject
        link = re.search(re.escape(PUBLIC) + r"/feedback/(\S+)", mail.text)
        assert link is not None, mail.text
        path = f"/feedback/{link.group(1)}"

        # staff see that it went, never the patient's link
        listed = (await client.get("/clinics/north/notifications?kind=feedback_request",
                                   headers=FRONT_DESK)).json()["notifications"]
        assert [n["status"] for n in listed] == ["sent"]
        shown = (await client.get(f"/clinics/north/notifications/{listed[0]['notification_id']}",
                                  headers=FRONT_DESK)).json()
        assert "/feedback/" not in shown["text"]

        def answered(rating: str) -> float:
            return REGISTRY.get_sample_value("clinicflow_feedback_answers_total",
                                             {"rating": rating, "wait": "longer"}) or 0.0

        before, used_before = answered("2"), REGISTRY.get_sample_value(
            "clinicflow_feedback_refused_total", {"problem": "used"}) or 0.0
        form = await client.get(path)
        assert form.status_code == 200 and "Was your wait about what we told you?" in form.text
        answer = {"rating": "2", "wait": "longer", "comment": WORRY}
        thanks = await client.post(path, data=answer)
        assert thanks.status_code == 200 and "Thank you" in thanks.text
        again = await client.post(path, data={**answer, "rating": "5"})
        assert again.status_code == 409 and "already" in again.text
        assert (await client.get(path)).status_code == 409
        assert answered("2") == before + 1
        assert REGISTRY.get_sample_value("clinicflow_feedback_refused_total",
                                         {"problem": "used"}) == used_before + 2

        # feedback.given goes out through the outbox, beside the notification.sent before
        # it and the complaint a rating of 2 raises: wait for it, not for a record count

        async def given_on_the_topic() -> tuple[list[Any], list[dict[str, Any]]] | None:
            records = await read_topic(kafka_bootstrap,
                                       topic_name(NOTIFICATIONS, topic_prefix))
            given = [orjson.loads(r.value) for r in records
                     if orjson.loads(r.value)["event_type"] == "feedback.given"]
            return (records, given) if given else None

        records, given = await eventually(given_on_the_topic, timeout=20)
        assert [g["data"] for g in given] == [{"visit_id": "v17", "rating": 2,
                                              "wait": "longer", "text_given": True}]
        assert not any(WORRY.encode() in r.value for r in records)
        redis = Redis.from_url(redis_url)
        try:
            kept = await redis.hgetall(
                f"{topic_prefix.rstrip('.')}:notifications:feedback:north:v17")
        finally:
            await redis.aclose()
        assert kept[b"text"].decode() == WORRY and kept[b"rating"] == b"2"
        assert len(smtp_server.to(ADDRESS)) == 1


CHICAGO = ZoneInfo("America/Chicago")


def seen(visit: str, ticket: str, n: int, at: datetime) -> list[ev.Event]:
    """A patient checked in at ``at``, roomed in room ``n`` and seen by provider ``n``."""
    return [arrival(visit, ticket, f"p{n}", at),
            floor_event(ev.RoomReady(room_id=f"r{n}"), at),
            floor_event(ev.PatientRoomed(visit_id=visit, room_id=f"r{n}"),
                        at + timedelta(minutes=1)),
            floor_event(ev.ProviderIn(visit_id=visit, provider_id=f"p{n}"),
                        at + timedelta(minutes=2))]


async def test_a_patient_checked_out_at_half_past_nine_is_asked_at_eight_then_forgotten(
    notifications_env: dict[str, Any], smtp_server: MailCatcher, kafka_bootstrap: str,
    redis_url: str, topic_prefix: str,
) -> None:
    # the next 21:30 in Chicago still ahead of the real clock: Redis expires keys on its own
    # clock, so every expiry the service sets lies ahead of it and the service's clock (this
    # FakeClock, moved by the test) alone decides when a contact goes
    evening = datetime.combine(datetime.now(CHICAGO).date(), time(21, 30), CHICAGO)
    if evening <= datetime.now(UTC):
        evening += timedelta(days=1)
    midnight = datetime.combine(evening.date() + timedelta(days=1), time(0), CHICAGO)
    eight = midnight.replace(hour=8)
    clock = FakeClock((evening - timedelta(minutes=90)).astimezone(UTC))  # 20:00
    env = {**notifications_env,
           "clinics": orjson.dumps({"north": {"name": "North Family Practice",
                                              "timezone": "America/Chicago"}}).decode(),
           "notifications_rules": rules_json(quiet_hours="21:00-08:00")}
    app = create_app(NotificationsSettings(**env), clock=clock)
    redis = Redis.from_url(redis_url)
    keys = f"{topic_prefix.rstrip('.')}:notifications"
    addresses = {v: f"{v}@patients.example.org" for v in ("v17", "v18", "v19")}

    async def checkout(visit: str, at: datetime) -> None:
        clock.set(at.astimezone(UTC))
        await publish_floor(kafka_bootstrap, topic_prefix, [
            floor_event(ev.PatientCheckedOut(visit_id=visit), clock.now())])

    async def requests(client: httpx.AsyncClient) -> dict[str, dict[str, Any]]:
        listed = (await client.get("/clinics/north/notifications?kind=feedback_request",
                                   headers=FRONT_DESK)).json()["notifications"]
        return {n["visit_id"]: n for n in listed}

    async def tick(at: datetime) -> None:
        now = clock.set(at.astimezone(UTC))
        await app.state.notifier.tick(now)
        await app.state.sender.tick(now)

    try:
        async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
            start = clock.now() - timedelta(minutes=30)
            await publish_floor(kafka_bootstrap, topic_prefix, [
                *seen("v17", "A-17", 1, start), *seen("v18", "A-18", 2, start),
                *seen("v19", "A-19", 3, start)])
            for visit, address in addresses.items():
                saved = await record_contact(client, visit, "email", address)
                assert datetime.fromisoformat(saved["expires_at"]) == midnight

            # A-18 checked out at 20:30, before quiet hours: asked at once
            await checkout("v18", evening - timedelta(hours=1))
            await eventually(lambda: smtp_server.to(addresses["v18"]), timeout=20)
            # at 21:30: decided now, due at 08:00 on Chicago's clock
            await checkout("v17", evening)
            await checkout("v19", evening)
            await notifier_has_read_everything(app, kafka_bootstrap, topic_prefix)
            pending = await requests(client)
            assert {v: n["status"] for v, n in pending.items()} == {
                "v17": "pending", "v18": "sent", "v19": "pending"}
            status = (await client.get(
                f"/clinics/north/notifications/{pending['v17']['notification_id']}",
                headers=FRONT_DESK)).json()
            assert datetime.fromisoformat(status["next_attempt_at"]) == eight
            # the contacts those requests need are kept past midnight, as long after 08:00
            # as the sender's retries can take (5 attempts of up to 3 s, 0.1 s doubling
            # between) and an hour
            for visit in ("v17", "v19"):
                kept = (await client.get(f"/clinics/north/visits/{visit}/contact",
                                         headers=FRONT_DESK)).json()
                assert datetime.fromisoformat(kept["expires_at"]) == \
                    eight + timedelta(hours=1, seconds=17)  # 15 + 1.5, whole seconds

            # 21:45: A-19 asks to be forgotten: the contact goes at once, the request with it
            clock.set((evening + timedelta(minutes=15)).astimezone(UTC))
            erased = await client.delete("/clinics/north/visits/v19/contact",
                                         headers=FRONT_DESK)
            assert erased.status_code == 204
            assert not await redis.exists(f"{keys}:contact:north:v19")
            assert (await requests(client))["v19"]["status"] == "cancelled"

            # 00:30: A-18's contact, which nothing waits for, is gone; A-17's is kept
            await tick(midnight + timedelta(minutes=30))
            assert not await redis.exists(f"{keys}:contact:north:v18")
            assert (await client.get("/clinics/north/visits/v18/contact",
                                     headers=FRONT_DESK)).status_code == 404
            assert await redis.exists(f"{keys}:contact:north:v17")
            assert not smtp_server.to(addresses["v17"])
            # kept for the request only: no longer shown to the front desk (nor audited)
            held = await client.get("/clinics/north/visits/v17/contact", headers=FRONT_DESK)
            assert held.status_code == 404 and held.json()["code"] == "contact_expired"
            assert "kept only for the message deferred" in held.json()["detail"]
            assert ADDRESS_V17 not in held.text

            # 08:00: the request goes out, and the contact it needed is deleted with it
            await tick(eight)
            await eventually(lambda: smtp_server.to(addresses["v17"]), timeout=20)
            await app.state.sender.drain()
            [mail] = smtp_server.to(addresses["v17"])
            assert "how was your visit" in mail.subject and "/feedback/" in mail.text
            assert parsedate_to_datetime(mail.date) == eight
            assert not await redis.exists(f"{keys}:contact:north:v17")
            assert await redis.zcard(f"{keys}:contact-expiry") == 0
            assert {v: n["status"] for v, n in (await requests(client)).items()} == {
                "v17": "sent", "v18": "sent", "v19": "cancelled"}
            assert not smtp_server.to(addresses["v19"])
            assert len(smtp_server.to(addresses["v18"])) == 1
    finally:
        await redis.aclose()


async def test_a_cancelled_deferred_request_no_longer_keeps_its_contact(redis_url: str) -> None:
    """Cancelling a deferred message releases its hold on the contact, as sending or
    failing it does: before the contact's own expiry the contact is kept until then only,
    after it the contact is deleted in the same step (store-level, real Redis)."""
    redis = Redis.from_url(redis_url)
    store = NotificationStore(redis, f"t{uuid.uuid4().hex[:10]}")
    # ahead of the real clock: Redis expires keys on its own clock
    now = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    own, held = now + timedelta(hours=2), now + timedelta(hours=10)

    async def apply(changes: NotificationChanges) -> None:
        async with redis.pipeline(transaction=True) as pipe:
            pipe.multi()
            store.queue_changes(pipe, changes)
            await pipe.execute()

    try:
        for visit in ("v1", "v2"):
            await store.save_contact(
                "north", visit, channel="email", address=f"{visit}@patients.example.org",
                preferences=Preferences(channel="email"), recorded_by="desk-2",
                recorded_at=now, expires_at=own, audit=b"{}")
            await apply(NotificationChanges(
                finished_at=now.isoformat(),
                notifications=[NewNotification(
                    f"fb-{visit}", "north", due_at=held.timestamp(), created_at=now.timestamp(),
                    fields={"notification_id": f"fb-{visit}", "clinic_id": "north",
                            "visit_id": visit, "kind": "feedback_request",
                            "audience": "patient", "status": "pending"})],
                contact_holds=[(f"fb-{visit}", "north", visit, held)]))
            assert await store.contact_expires_at("north", visit) == held.timestamp()

        # v1's request cancelled before the contact's own expiry: kept until then only
        await apply(NotificationChanges(finished_at=(now + timedelta(minutes=5)).isoformat(),
                                        cancels=[("fb-v1", "the patient left first")]))
        contact = store.contact_key("north", "v1")
        assert not any(k.startswith(b"hold:") for k in await redis.hgetall(contact))
        assert await store.contact_expires_at("north", "v1") == own.timestamp()
        assert await redis.zscore(store.contact_expiry_key, contact) == own.timestamp()
        # v2's cancelled past it: nothing keeps it any more, deleted in the same step
        await apply(NotificationChanges(finished_at=(own + timedelta(minutes=5)).isoformat(),
                                        cancels=[("fb-v2", "the patient left first")]))
        assert not await redis.exists(store.contact_key("north", "v2"))
        assert await redis.zscore(store.contact_expiry_key,
                                  store.contact_key("north", "v2")) is None
        assert await redis.hget(store.record_key("fb-v2"), "status") == b"cancelled"
    finally:
        await redis.aclose()
