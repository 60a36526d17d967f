"""Complaints and waits x satisfaction on real Kafka and Redis: a low rating raises a
complaint once, staff log one (428 without an Idempotency-Key, 404 naming a visit never
checked in), acknowledge and resolve
it (404 for an unknown one, 409 for a step its status forbids; a step retried with its
Idempotency-Key answers as the first time, no second event), the escalation tick on an
injected clock escalates the one nobody acknowledged, once; each read of a complaint's
words is audited and not to be stored; the satisfaction report
joins waits, told estimates, ratings and complaints; with the service's Redis keys
flushed a rebuild from Kafka gives the same report. No event holds the patient's words."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from services.notifications.app import create_app
from services.notifications.feedback_store import Answer, FeedbackStore
from shared import events as ev
from shared.events_notifications import FeedbackGiven
from shared.settings import NotificationsSettings
from shared.topics import AUDIT, NOTIFICATIONS, TOLD, topic_name
from tests.fakes import FakeClock
from tests.helpers import auth, eventually, producer, read_topic, serving
from tests.integration.notifications_support import (
    FRONT_DESK,
    arrival,
    floor_event,
    publish_floor,
)

MANAGER = auth("dev-manager")
NINE = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)  # a Monday; the clinic's zone is UTC here
WORDS = "Jane Roe 1961-04-02 waited an hour"
FORM_WORDS = "my knee hurt and nobody called me"
REPORT = "/clinics/north/satisfaction?from=2026-03-02&to=2026-03-02"


def at(minute: float) -> datetime:
    return NINE + timedelta(minutes=minute)


async def report_when(client: httpx.AsyncClient, complaints: int) -> dict[str, Any]:
    async def ready() -> dict[str, Any] | None:
        found = (await client.get(REPORT, headers=MANAGER)).json()
        return found if found.get("visits") == 2 and found["complaints"] == complaints \
            else None
    result: dict[str, Any] = await eventually(ready, timeout=30)
    return result


async def test_complaints_escalation_and_a_report_rebuilt_from_kafka(
        notifications_env: dict[str, Any], redis_url: str) -> None:
    bootstrap, prefix = notifications_env["kafka_bootstrap"], notifications_env["topic_prefix"]
    await publish_floor(bootstrap, prefix, [
        arrival("v1", "A-1", "p1", at(0)), arrival("v2", "A-2", "p2", at(0)),
        floor_event(ev.PatientRoomed(visit_id="v2", room_id="r2"), at(8)),
        floor_event(ev.PatientRoomed(visit_id="v1", room_id="r1"), at(45)),
    ])
    async with producer(bootstrap) as kafka:
        for visit, minute in (("v1", 1), ("v2", 1)):  # both told 10 minutes (5-15)
            await kafka.send_and_wait(topic_name(TOLD, prefix), ev.encode(ev.make_event(
                ev.WaitTold(visit_id=visit, channel="kiosk", low=5, high=15,
                            wait_minutes=10, provider_id=None),
                clinic_id="north", source="test", occurred_at=at(minute))), key=b"north")
        for visit, rating, wait in (("v1", 1, "longer"), ("v2", 5, "about_right")):
            given = ev.make_event(FeedbackGiven(visit_id=visit, rating=rating, wait=wait,
                                                text_given=False),
                                  clinic_id="north", source="notifications",
                                  occurred_at=at(100), event_id=f"fb-{visit}")
            await kafka.send_and_wait(topic_name(NOTIFICATIONS, prefix), ev.encode(given),
                                      key=b"north")
            if visit == "v1":  # the outbox delivered it twice: still one complaint
                await kafka.send_and_wait(topic_name(NOTIFICATIONS, prefix),
                                          ev.encode(given), key=b"north")
    clock = FakeClock(at(110))  # 10:50
    app = create_app(NotificationsSettings(**notifications_env), clock=clock)
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        # the form answered (its own feedback.given, besides the two above): one complaint
        redis = Redis.from_url(redis_url)
        try:
            form = FeedbackStore(redis, notifications_env["redis_prefix"],
                                 app.state.store.outbox, retention_days=1)
            assert await form.take("north", "v1", Answer(1, "longer", FORM_WORDS), at(100))
        finally:
            await redis.aclose()
        # the low rating's complaint: on the front desk's list, due 11:40 (1 business hour)
        async def listed() -> list[dict[str, Any]]:
            answer = await client.get("/clinics/north/complaints", headers=FRONT_DESK)
            return answer.json()["complaints"]  # type: ignore[no-any-return]
        [raised] = await eventually(listed, timeout=30)
        assert (raised["visit_id"], raised["category"], raised["source"], raised["status"]) \
            == ("v1", "wait", "low_rating", "open")
        assert raised["due_at"] == "2026-03-02T11:40:00Z"
        assert FORM_WORDS not in str(raised)
        manager_view = await client.get(f"/clinics/north/complaints/{raised['complaint_id']}",
                                        headers=MANAGER)
        assert manager_view.json()["text"] == FORM_WORDS  # the patient's, manager only
        assert manager_view.headers["cache-control"] == "no-store"

        # staff log one: the key is required, a retry is the same complaint
        body = {"category": "billing", "source": "phone", "visit_id": "v2", "text": WORDS}
        keyless = await client.post("/clinics/north/complaints", json=body,
                                    headers=FRONT_DESK)
        assert keyless.status_code == 428, keyless.text
        stranger = await client.post(
            "/clinics/north/complaints", json={**body, "visit_id": "v-none"},
            headers={**FRONT_DESK, "Idempotency-Key": "c-0"})
        assert stranger.status_code == 404 and "v-none" in stranger.json()["detail"]
        first = await client.post("/clinics/north/complaints", json=body,
                                  headers={**FRONT_DESK, "Idempotency-Key": "c-1"})
        again = await client.post("/clinics/north/complaints", json=body,
                                  headers={**FRONT_DESK, "Idempotency-Key": "c-1"})
        assert first.status_code == again.status_code == 201, first.text
        staff = first.json()
        assert again.json()["complaint_id"] == staff["complaint_id"]
        assert WORDS not in first.text and staff["text"] is None
        own = f"/clinics/north/complaints/{staff['complaint_id']}"
        assert (await client.get(own, headers=FRONT_DESK)).status_code == 403
        assert (await client.get(own, headers=MANAGER)).json()["text"] == WORDS
        unknown_one = await client.get("/clinics/north/complaints/cp-none", headers=MANAGER)
        assert unknown_one.status_code == 404  # nothing read: nothing audited

        unknown = await client.post("/clinics/north/complaints/cp-none/acknowledge",
                                    headers=FRONT_DESK)
        assert unknown.status_code == 404 and "cp-none" in unknown.json()["detail"]
        # a click applied but unanswered, retried with its key: the first answer again (no
        # 409, no second event); another click (a new key) is refused
        click = {**FRONT_DESK, "Idempotency-Key": "ack-1"}
        acked = await client.post(f"{own}/acknowledge", headers=click)
        assert acked.status_code == 200, acked.text
        assert acked.json()["status"] == "acknowledged" and acked.json()["owner"]
        retried = await client.post(f"{own}/acknowledge", headers=click)
        assert retried.status_code == 200 and retried.json() == acked.json(), retried.text
        twice = await client.post(f"{own}/acknowledge",
                                  headers={**FRONT_DESK, "Idempotency-Key": "ack-2"})
        assert twice.status_code == 409 and twice.json()["code"] == "complaint_not_open"
        resolving = {**MANAGER, "Idempotency-Key": "resolve-1"}
        resolved = await client.post(f"{own}/resolve", headers=resolving)
        assert resolved.json()["status"] == "resolved"
        assert (await client.post(f"{own}/resolve", headers=resolving)).json() \
            == resolved.json()

        # nobody acknowledged the low rating's complaint: escalated at 11:40, once
        complaints = app.state.complaints
        before = REGISTRY.get_sample_value("clinicflow_complaints_escalated_total",
                                           {"clinic": "other"}) or 0
        assert await complaints.tick(at(159)) == 0
        assert await complaints.tick(at(160)) == 1
        assert await complaints.tick(at(200)) == 0
        assert REGISTRY.get_sample_value("clinicflow_complaints_escalated_total",
                                         {"clinic": "other"}) == before + 1
        [follow] = (await client.get("/clinics/north/complaints", headers=FRONT_DESK)
                    ).json()["complaints"]
        assert follow["complaint_id"] == raised["complaint_id"]
        clock.set(at(160))
        follow = (await client.get("/clinics/north/complaints", headers=FRONT_DESK)
                  ).json()["complaints"][0]
        assert follow["overdue"] and follow["escalated_at"] == "2026-03-02T11:40:00Z"

        report = await report_when(client, complaints=2)

    kinds = [ev.decode(r.value).event_type for r in await read_topic(
        bootstrap, topic_name(NOTIFICATIONS, prefix), expect=9)]
    assert sorted(k for k in kinds if k.startswith("complaint.")) == [
        "complaint.acknowledged", "complaint.escalated", "complaint.logged",
        "complaint.logged", "complaint.resolved"]
    records = await read_topic(bootstrap, topic_name(NOTIFICATIONS, prefix))
    # each read of a complaint's words is audited (who, which; never the words)
    audited = [ev.decode(r.value) for r in await read_topic(
        bootstrap, topic_name(AUDIT, prefix), expect=2)]
    assert sorted((e.event_type, e.payload.model_dump()["complaint_id"],
                   e.payload.model_dump()["reader_role"]) for e in audited) == sorted(
        ("complaint_text.read", c, "manager")
        for c in (raised["complaint_id"], staff["complaint_id"]))
    assert not any(b"Jane" in r.value or b"knee" in r.value for r in await read_topic(
        bootstrap, topic_name(AUDIT, prefix)))
    assert kinds.count("feedback.given") == 4  # v1 three times (one from the form), v2
    assert not any(b"Jane" in r.value or b"1961" in r.value or b"knee" in r.value
                   for r in records)

    # v1 waited 45 (30+), 34 longer than told, rated 1, complained (wait); v2 waited 8,
    # about as told, rated 5, complained (billing)
    assert report["by_told_band"]["longer_20_plus"]["mean_rating"] == 1.0
    assert report["by_told_band"]["within"]["mean_rating"] == 5.0
    assert report["by_wait_band"]["30+"]["complaints_by_category"] == {"wait": 1}
    assert report["by_wait_band"]["0-10"]["complaints_by_category"] == {"billing": 1}
    assert report["by_provider"]["p1"]["visits"] == 1
    assert report["finding"].startswith(
        "Patients who waited 20+ minutes longer than told rate 4.0 points lower")

    # Redis flushed (this service's keys): the report rebuilt from the topics
    redis = Redis.from_url(redis_url)
    try:
        keys = [key async for key in redis.scan_iter(f"{notifications_env['redis_prefix']}:*")]
        await redis.delete(*keys)
    finally:
        await redis.aclose()
    app = create_app(NotificationsSettings(**notifications_env), clock=FakeClock(at(300)))
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        assert await report_when(client, complaints=2) == report
