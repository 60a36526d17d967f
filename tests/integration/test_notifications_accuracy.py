"""Told versus actual on real Kafka and Redis: told records and floor facts in, the day's
figures out (GET /clinics/{c}/accuracy, the gauges); then the service's Redis keys are
flushed and the projection rebuilds from Kafka to the same figures."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from fastapi import FastAPI
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from services.notifications.accuracy_store import AccuracyProjection
from services.notifications.app import create_app
from shared import events as ev
from shared.settings import NotificationsSettings
from shared.topics import FLOOR, TOLD, topic_name
from tests.fakes import FakeClock
from tests.helpers import auth, eventually, producer, read_topic, serving
from tests.integration.notifications_support import (
    FRONT_DESK,
    MailCatcher,
    arrival,
    estimate,
    floor_event,
    has_read_everything,
    notifications_service,
    publish_estimates,
    publish_floor,
)

MANAGER = auth("dev-manager")
NINE = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)  # the clinic's zone is UTC here


def told(visit: str, minute: float, low: float, high: float, point: float,
         channel: ev.ToldChannel, provider: str | None = "p1") -> ev.Event:
    return ev.make_event(ev.WaitTold(visit_id=visit, ticket_code="A-1", channel=channel,
                                     low=low, high=high, wait_minutes=point,
                                     provider_id=provider),
                         clinic_id="north", source="test",
                         occurred_at=NINE + timedelta(minutes=minute))


def at(minute: float) -> datetime:
    return NINE + timedelta(minutes=minute)


@contextlib.asynccontextmanager
async def service(env: dict[str, Any]) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    app = create_app(NotificationsSettings(**env), clock=FakeClock(at(120)))
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        yield app, client


async def caught_up(app: FastAPI, bootstrap: str, prefix: str) -> None:
    """Until the accuracy projection has applied every floor and told record published."""
    accuracy: AccuracyProjection = app.state.accuracy
    await has_read_everything(accuracy.projection, bootstrap, prefix, (FLOOR, TOLD),
                              timeout=30)


async def test_told_waits_are_scored_and_a_rebuild_from_kafka_gives_the_same_figures(
        notifications_env: dict[str, Any], redis_url: str) -> None:
    bootstrap, prefix = notifications_env["kafka_bootstrap"], notifications_env["topic_prefix"]
    await publish_floor(bootstrap, prefix, [
        arrival("v1", "A-1", "p1", at(0)), arrival("v2", "A-2", "p2", at(0)),
        arrival("v3", "A-3", None, at(5)),
        floor_event(ev.PatientRoomed(visit_id="v1", room_id="r1"), at(12)),
        floor_event(ev.ArrivalCancelled(visit_id="v3", reason="left_without_being_seen"),
                    at(30)),
        floor_event(ev.PatientRoomed(visit_id="v2", room_id="r2"), at(40)),
    ])
    told_records = [
        told("v1", 1, 5, 15, 10, "kiosk"),  # waited 11: inside, 1 off
        told("v1", 2, 5, 10, 8, "tv"),  # waited 10: inside, 2 off
        told("v2", 1, 10, 20, 15, "status", "p2"),  # waited 39: outside, 24 off
        told("v2", 20, 10, 15, 12, "sms", "p2"),  # waited 20: outside, 8 off
        told("v3", 6, 5, 15, 10, "kiosk", None),  # left: not scored
        told("v1", 13, 0, 5, 2, "tv"),  # after the rooming: not scored
    ]
    async with producer(bootstrap) as client:
        for event in told_records:
            await client.send_and_wait(topic_name(TOLD, prefix), ev.encode(event),
                                       key=b"north")
        # the producer's outbox sent one again (same event id)
        await client.send_and_wait(topic_name(TOLD, prefix), ev.encode(told_records[0]),
                                   key=b"north")
    async with service(notifications_env) as (app, client):
        await caught_up(app, bootstrap, prefix)
        answer = await client.get("/clinics/north/accuracy?date=2026-03-02", headers=MANAGER)
        assert answer.status_code == 200, answer.text
        figures = answer.json()
        nurse = await client.get("/clinics/north/accuracy", headers=auth("dev-nurse"))
        assert nurse.status_code == 403
        far = await client.get("/clinics/north/accuracy?date=2020-01-01", headers=MANAGER)
        assert far.status_code == 422 and far.json()["code"] == "date_out_of_range"
    assert figures["scored"] == 4 and figures["left"] == 1
    assert figures["share_inside_range"] == 0.5
    assert figures["mean_absolute_error_minutes"] == round((1 + 2 + 24 + 8) / 4, 2)
    assert figures["by_channel"]["tv"]["scored"] == 1
    assert figures["by_channel"]["kiosk"] == {
        "scored": 1, "mean_absolute_error_minutes": 1.0, "share_inside_range": 1.0,
        "rolling_average_mean_absolute_error_minutes": 11.0, "left": 1}
    assert figures["by_provider"]["p2"]["share_inside_range"] == 0.0
    assert set(figures["by_hour"]) == {"09"}
    # v2's sms told at 09:20: v1's 12-minute wait had finished, v2 had waited 20: the
    # rolling average said max(0, 12 - 20) = 0 more, the truth was 20
    assert figures["by_channel"]["sms"]["rolling_average_mean_absolute_error_minutes"] == 20
    assert REGISTRY.get_sample_value("clinicflow_told_share_inside_range",
                                     {"clinic": "other"}) == 0.5
    assert REGISTRY.get_sample_value("clinicflow_told_scored_today", {"clinic": "other"}) == 4

    # Redis flushed (this service's keys): rebuilt from both topics' beginnings
    redis = Redis.from_url(redis_url)
    try:
        keys = [key async for key in redis.scan_iter(f"{notifications_env['redis_prefix']}:*")]
        assert keys
        await redis.delete(*keys)
    finally:
        await redis.aclose()
    async with service(notifications_env) as (app, client):
        await caught_up(app, bootstrap, prefix)
        again = await client.get("/clinics/north/accuracy?date=2026-03-02", headers=MANAGER)
    assert again.json() == figures


async def test_a_sent_delay_warning_is_told_and_scored_when_the_patient_is_roomed(
        notifications_env: dict[str, Any], smtp_server: MailCatcher) -> None:
    bootstrap, prefix = notifications_env["kafka_bootstrap"], notifications_env["topic_prefix"]
    now = datetime.now(UTC).replace(microsecond=0)
    async with notifications_service(notifications_env) as (app, client):
        await publish_floor(bootstrap, prefix, [arrival("v17", "A-17", "dr-lee", now)])
        saved = await client.put("/clinics/north/visits/v17/contact", headers=FRONT_DESK,
                                 json={"channel": "email", "consent": True,
                                       "address": "a17@patients.example.org"})
        assert saved.status_code == 200, saved.text
        await publish_floor(bootstrap, prefix, [floor_event(
            ev.DelayAnnounced(provider_id="dr-lee", minutes=25), now)])
        await publish_estimates(bootstrap, prefix, [estimate("v17", "A-17", "dr-lee", 30, now)])
        await eventually(lambda: smtp_server.mails, timeout=20)
        [record] = await read_topic(bootstrap, topic_name(TOLD, prefix), expect=1)
        told_event = ev.decode(record.value)
        assert isinstance(told_event.payload, ev.WaitTold)
        point = told_event.payload.wait_minutes  # the estimate, aged to the decision
        assert (told_event.payload.channel, told_event.payload.low,
                told_event.payload.high) == ("email", 25.0, 35.0)
        assert 29.0 <= point <= 30.0
        # roomed 32 minutes after the warning went: inside 25-35, about 2 minutes off
        await publish_floor(bootstrap, prefix, [floor_event(
            ev.PatientRoomed(visit_id="v17", room_id="r1"),
            told_event.occurred_at + timedelta(minutes=32))])
        await caught_up(app, bootstrap, prefix)
        day = told_event.occurred_at.date().isoformat()
        figures = (await client.get(f"/clinics/north/accuracy?date={day}",
                                    headers=MANAGER)).json()
    assert figures["by_channel"]["email"]["scored"] == 1
    assert figures["share_inside_range"] == 1.0
    assert figures["mean_absolute_error_minutes"] == round(32 - point, 2)
