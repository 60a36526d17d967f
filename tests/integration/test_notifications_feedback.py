"""Feedback after the visit on real Kafka, Redis and SMTP: a patient who gave an e-mail is
checked out, gets one message with a signed link, opens the form, answers once; the
answer's event carries no text, the text is only in notifications' store, and the link
used again is refused."""

from __future__ import annotations

import re
from typing import Any

import orjson
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from shared import events as ev
from shared.topics import NOTIFICATIONS, topic_name
from tests.helpers import eventually, read_topic
from tests.integration.notifications_support import (
    FRONT_DESK,
    MailCatcher,
    arrival,
    floor_event,
    minutes_ago,
    notifications_service,
    publish_floor,
    record_contact,
)

PUBLIC = "https://north.clinic.example"
ADDRESS = "a17@patients.example.org"
WORRY = "my knee still hurts when I climb stairs"


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
