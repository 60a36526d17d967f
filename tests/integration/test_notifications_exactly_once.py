"""Exactly once: a notifier killed with -9 while sending, and restarted, sends nothing
twice; records delivered again change nothing, nor do records applied by the version
before the shared runner; records that arrive while Redis is down are applied once it is
back; contact details never reach the log."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from services.notifications.app import create_app
from shared import events as ev
from shared.projection import partition_for
from shared.settings import NotificationsSettings
from shared.topics import ESTIMATES, FLOOR, topic_name
from tests.helpers import ServiceProcess, eventually, read_topic, serving
from tests.integration.notifications_support import (
    FRONT_DESK,
    MailCatcher,
    arrival,
    estimate,
    floor_event,
    notifications_service,
    notifier_has_read_everything,
    publish_estimates,
    publish_floor,
    record_contact,
    rules_json,
)
from tools.stack import LocalStack

SETTLED = {"sent", "unconfirmed"}


def address(visit: str) -> str:
    return f"{visit}@patients.example.org"


async def notifications(base_url: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=base_url) as client:
        answer = await client.get("/clinics/north/notifications?limit=500", headers=FRONT_DESK)
        listed: list[dict[str, Any]] = answer.json()["notifications"]
        return listed


@pytest.mark.reliability(
    "notifications killed with -9 while sending, restarted",
    "no message sent twice; every due message sent",
)
async def test_a_notifier_killed_while_sending_and_restarted_sends_no_duplicates(
    notifications_env: dict[str, Any], smtp_server: MailCatcher, tmp_path: Path,
) -> None:
    smtp_server.delay = 0.1  # a slow mail server: the kill lands while messages are out
    concurrency = 2
    settings = {**notifications_env,
                "notifications_send_concurrency": concurrency,
                "notifications_session_timeout_ms": 2000,
                "notifications_rules": rules_json(settle_seconds=0.5,
                                                  come_back_lead_minutes=10),
                "log_format": "json"}
    env = {f"CLINICFLOW_{k.upper()}": str(v) for k, v in settings.items()}
    bootstrap, prefix = settings["kafka_bootstrap"], settings["topic_prefix"]
    log_path = tmp_path / "notifications.log"
    service = ServiceProcess("notifications", env, log_path)
    patients = [f"v{n:02}" for n in range(1, 25)]
    outside = patients[:6]
    now = datetime.now(UTC)
    service.start()
    try:
        await service.wait_ready()
        await publish_floor(bootstrap, prefix, [
            arrival(v, f"A-{n}", "dr-lee", now) for n, v in enumerate(patients, 1)])
        async with httpx.AsyncClient(base_url=service.url) as client:
            for visit in patients:
                await record_contact(client, visit, "email", address(visit),
                                     wait_anywhere=visit in outside)
        await publish_estimates(bootstrap, prefix, [
            estimate(v, f"A-{n}", "dr-lee", 20 + 5 * n, now) for n, v in enumerate(patients, 1)])
        # the whole clinic runs 30 minutes late: 24 warnings, sent two at a time
        delay = floor_event(ev.DelayAnnounced(provider_id=None, minutes=30), now)
        await publish_floor(bootstrap, prefix, [delay])
        await publish_estimates(bootstrap, prefix, [
            estimate(v, f"A-{n}", "dr-lee", 50 + 5 * n, now) for n, v in enumerate(patients, 1)])
        await eventually(lambda: len(smtp_server.mails) >= 4, timeout=30)
        service.kill()
        # while it is down, flow says the six patients waiting outside are nearly up
        later = now + timedelta(seconds=5)
        await publish_estimates(bootstrap, prefix, [
            estimate(v, f"A-{n}", "dr-lee", 8, later, position=1)
            for n, v in enumerate(outside, 1)])
        service.start()
        await service.wait_ready()

        async def all_settled() -> list[dict[str, Any]] | None:
            listed = await notifications(service.url)
            done = len(listed) == 30 and all(n["status"] in SETTLED for n in listed)
            return listed if done else None

        listed = await eventually(all_settled, timeout=60)
    finally:
        service.stop()

    received = Counter(m.message_id for m in smtp_server.mails)
    assert max(received.values()) == 1, f"sent twice: {received.most_common(3)}"
    by_status: dict[str, set[str]] = {"sent": set(), "unconfirmed": set()}
    for n in listed:
        by_status[n["status"]].add(f"<{n['notification_id']}@clinicflow.invalid>")
    assert by_status["sent"] <= set(received)  # every "sent" reached the server once
    assert set(received) <= by_status["sent"] | by_status["unconfirmed"]
    assert len(by_status["unconfirmed"]) <= concurrency  # only what was out at the kill
    assert Counter(n["kind"] for n in listed) == {"delay_warning": 24, "come_back_now": 6}
    # and the log never shows an address
    assert "patients.example.org" not in log_path.read_text()


@pytest.mark.reliability(
    "floor and estimate records redelivered",
    "no second message for the same trigger",
)
async def test_records_delivered_again_change_nothing(
    notifications_env: dict[str, Any], smtp_server: MailCatcher,
) -> None:
    bootstrap, prefix = notifications_env["kafka_bootstrap"], notifications_env["topic_prefix"]
    now = datetime.now(UTC)
    async with notifications_service(notifications_env) as (app, client):
        await publish_floor(bootstrap, prefix, [
            arrival("v1", "A-1", "dr-lee", now), arrival("v2", "A-2", "dr-lee", now)])
        for visit in ("v1", "v2"):
            await record_contact(client, visit, "email", address(visit))
        await publish_floor(bootstrap, prefix, [
            floor_event(ev.RoomReady(room_id="room-1"), now),
            floor_event(ev.DelayAnnounced(provider_id="dr-lee", minutes=20), now)])
        await publish_estimates(bootstrap, prefix, [
            estimate("v1", "A-1", "dr-lee", 25, now), estimate("v2", "A-2", "dr-lee", 35, now)])
        await eventually(lambda: len(smtp_server.mails) == 2, timeout=20)
        before = await notifications(str(client.base_url))
        alerts_before = (await client.get("/clinics/north/alerts",
                                          headers={"Authorization": "Bearer dev-nurse"})).json()
        # Kafka hands the same records over again (a rebalance, a lost commit)
        again = [*await read_topic(bootstrap, topic_name(FLOOR, prefix)),
                 *await read_topic(bootstrap, topic_name(ESTIMATES, prefix))]
        result = await app.state.notifier.runner.handle(again)
        assert (result.applied, result.already_applied, result.dead_letters) == (0, 6, [])
        assert await app.state.sender.tick(datetime.now(UTC)) == 0  # nothing new is due
        await app.state.sender.drain()
        assert await notifications(str(client.base_url)) == before
        assert (await client.get("/clinics/north/alerts",
                                 headers={"Authorization": "Bearer dev-nurse"})).json() == \
            alerts_before
    assert len(smtp_server.mails) == 2


async def test_offsets_stored_before_the_shared_runner_are_adopted_not_replayed(
    notifications_env: dict[str, Any], smtp_server: MailCatcher,
) -> None:
    bootstrap, prefix = notifications_env["kafka_bootstrap"], notifications_env["topic_prefix"]
    now = datetime.now(UTC)
    floor = topic_name(FLOOR, prefix)
    partition = partition_for(b"north", FLOOR.partitions)
    await publish_floor(bootstrap, prefix, [
        arrival("v1", "A-1", "dr-lee", now), arrival("v2", "A-2", "dr-lee", now),
        floor_event(ev.RoomReady(room_id="room-1"), now + timedelta(seconds=1))])
    app = create_app(NotificationsSettings(**notifications_env))
    store, projection = app.state.store, app.state.notifier.projection
    # the version before the shared runner had applied A-1's arrival (offset 0)
    redis = Redis.from_url(notifications_env["redis_url"])
    try:
        await redis.set(store.old_offset_key(floor, partition), 0)
        async with serving(app) as url, httpx.AsyncClient(base_url=url) as client:

            async def standing() -> list[dict[str, Any]]:
                answer = await client.get("/clinics/north/alerts",
                                          headers={"Authorization": "Bearer dev-nurse"})
                alerts: list[dict[str, Any]] = answer.json()["alerts"]
                return alerts

            alerts = await eventually(standing, timeout=20)
        assert [a["ticket_code"] for a in alerts] == ["A-2"]  # A-1 was not applied again
        assert await redis.get(store.old_offset_key(floor, partition)) is None
        assert await redis.get(projection.offsets.key((floor, partition))) == b"2"
    finally:
        await redis.aclose()


@pytest.mark.reliability(
    "Redis killed with -9 under the notifier while a delay streams in, then started again",
    "every affected patient told once: no floor record lost while Redis was away",
)
async def test_records_arriving_while_redis_is_down_are_applied_once_it_is_back(
    notifications_env: dict[str, Any], smtp_server: MailCatcher, own_stack: LocalStack,
) -> None:
    env = notifications_env
    bootstrap, prefix = env["kafka_bootstrap"], env["topic_prefix"]
    t0 = datetime.now(UTC) - timedelta(minutes=5)
    patients = [(f"v{n}", f"A-{n}") for n in range(1, 5)]
    app = create_app(NotificationsSettings(**env))
    async with serving(app) as url, httpx.AsyncClient(base_url=url) as client:
        await publish_floor(bootstrap, prefix, [arrival(v, t, "dr-lee", t0) for v, t in patients])
        for visit, _ in patients:
            await record_contact(client, visit, "email", f"{visit}@patients.example.org")
        await publish_estimates(bootstrap, prefix, [
            estimate(v, t, "dr-lee", 10.0 * (i + 1), t0) for i, (v, t) in enumerate(patients)])
        # applied: Redis answered the transaction, so its append-only file has it
        await notifier_has_read_everything(app, bootstrap, prefix)
        failed_before = batches_failed()
        await asyncio.to_thread(own_stack.stop_redis, True)
        # the delay and the new estimates reach the notifier while Redis is away
        delay = floor_event(ev.DelayAnnounced(provider_id="dr-lee", minutes=25,
                                              reason="emergency"), t0 + timedelta(minutes=2))
        await publish_floor(bootstrap, prefix, [delay])
        await publish_estimates(bootstrap, prefix, [
            estimate(v, t, "dr-lee", 10.0 * (i + 1) + 25, delay.occurred_at)
            for i, (v, t) in enumerate(patients)])
        await eventually(lambda: batches_failed() > failed_before, timeout=30)
        await asyncio.to_thread(own_stack.start_redis)
        await eventually(lambda: len(smtp_server.mails) >= len(patients), timeout=30)
        # everything read, every message sent and settled: nothing more can come
        await notifier_has_read_everything(app, bootstrap, prefix)
        await eventually(lambda: _all_settled(url, len(patients)), timeout=20)
        await app.state.sender.drain()
    told = sorted(address for m in smtp_server.mails for address in m.to)
    assert told == sorted(f"{v}@patients.example.org" for v, _ in patients)


def batches_failed() -> float:
    """Batches the notifier could not apply so far (this process)."""
    return REGISTRY.get_sample_value("clinicflow_batch_failures_total",
                                     {"service": "notifications",
                                      "consumer": "notifications"}) or 0.0


async def _all_settled(base_url: str, count: int) -> bool:
    listed = await notifications(base_url)
    return len(listed) == count and all(n["status"] in SETTLED for n in listed)
