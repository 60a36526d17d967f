"""Network faults: the network to Redis cut while events stream in, and a flow instance
paused past its session so that the group moves its partitions while it sleeps.

Both end with the same checks as the other fault tests: every board equals a board rebuilt
from the topic, the day's counts show nothing applied twice, and the checkpoint in Redis
has reached the end of every partition."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
from redis.asyncio import Redis

from services.flow.store import FlowStore
from services.notifications.app import create_app
from shared import events as ev
from shared.admin import ensure_topics
from shared.settings import NotificationsSettings
from shared.topics import FLOOR, topic_name
from tests.helpers import ServiceProcess, eventually, producer, read_topic, serving
from tests.integration.flow_support import (
    NURSE,
    a_day,
    boards_match_a_rebuild,
    flow_settings,
    get_board,
    publish,
    service_env,
)
from tests.integration.notifications_support import (
    FRONT_DESK,
    MailCatcher,
    arrival,
    estimate,
    floor_event,
    publish_estimates,
    publish_floor,
    record_contact,
)
from tests.integration.tcp_proxy import TcpProxy


@pytest.fixture
async def flow_env(kafka_bootstrap: str, redis_url: str, topic_prefix: str) -> dict[str, Any]:
    await ensure_topics(kafka_bootstrap, topic_prefix)
    return flow_settings(kafka_bootstrap, redis_url, topic_prefix)


def through(proxy: TcpProxy, redis_url: str) -> str:
    """``redis_url`` with the proxy in between."""
    parts = urlsplit(redis_url)
    auth = parts.netloc.rpartition("@")[0]
    host = f"{auth}@127.0.0.1:{proxy.port}" if auth else f"127.0.0.1:{proxy.port}"
    return urlunsplit(parts._replace(netloc=host))


async def stream(bootstrap: str, topic: str, events: list[ev.Event], seconds: float) -> None:
    """Publish ``events`` evenly over about ``seconds``: a steady stream from the floor."""
    pause = seconds / len(events)
    async with producer(bootstrap) as client:
        for event in events:
            await client.send_and_wait(topic, ev.encode(event), key=event.clinic_id.encode())
            await asyncio.sleep(pause)


async def redis_unready(client: httpx.AsyncClient) -> dict[str, Any] | None:
    """The service's readiness answer while it says Redis is unreachable."""
    answer = await client.get("/readyz", timeout=15)
    body: dict[str, Any] = answer.json()
    return body if answer.status_code == 503 and body["checks"]["redis"] != "ok" else None


async def stored_offsets(redis_url: str, prefix: str, floor: str) -> dict[int, int]:
    """The checkpointed offset of each partition of the floor topic (read past any proxy)."""
    redis = Redis.from_url(redis_url)
    try:
        store = FlowStore(redis, prefix)
        stored = {p: (await store.load_partition(floor, p))[0] for p in range(FLOOR.partitions)}
        return {p: offset for p, offset in stored.items() if offset is not None}
    finally:
        await redis.aclose()


async def checkpoint_at_the_end(redis_url: str, prefix: str, bootstrap: str,
                                floor: str) -> None:
    """Every partition's checkpoint reaches its last record (none left to apply again)."""
    last: dict[int, int] = {}
    for record in await read_topic(bootstrap, floor):
        last[record.partition] = max(last.get(record.partition, -1), record.offset)

    async def reached() -> dict[int, int] | None:
        stored = await stored_offsets(redis_url, prefix, floor)
        return stored if stored == last else None

    await eventually(reached, timeout=30)


def applied_events(metrics: str) -> float:
    """Flow's count of events applied (not skipped as duplicates or already applied)."""
    for line in metrics.splitlines():
        if line.startswith("clinicflow_events_consumed_total{") and 'outcome="applied"' in line \
                and 'service="flow"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.reliability(
    "the network between flow and Redis cut for ~10 s mid-stream: connections reset and "
    "refused, then a black hole that accepts and answers nothing; then restored",
    "/readyz says Redis is unreachable while it lasts; the same process recovers by itself; "
    "every board equals a board rebuilt from the topic, each event applied exactly once, "
    "the checkpoint reaches the end of every partition",
)
async def test_flow_rides_out_a_cut_network_to_redis_without_losing_or_repeating_events(
    flow_env: dict[str, Any], tmp_path: Path,
) -> None:
    bootstrap, floor = flow_env["kafka_bootstrap"], topic_name(FLOOR, flow_env["topic_prefix"])
    clinics = ("north", "south", "east")
    day = a_day(clinics, visits=30)
    async with TcpProxy(urlsplit(flow_env["redis_url"]).port or 6379) as proxy:
        settings = {**flow_env, "redis_url": through(proxy, flow_env["redis_url"]),
                    "log_format": "json"}
        service = ServiceProcess("flow", service_env(settings), tmp_path / "flow.log")
        service.start()
        try:
            await service.wait_ready()
            streaming = asyncio.create_task(stream(bootstrap, floor, day, seconds=12))
            async with httpx.AsyncClient(base_url=service.url, timeout=20) as client:
                await eventually(lambda: get_board(client, "north", NURSE), timeout=30)
                await proxy.cut("reset")
                assert await eventually(lambda: redis_unready(client), timeout=30)
                await asyncio.sleep(3)  # the outage lasts; events keep coming
                await proxy.cut("blackhole")
                await asyncio.sleep(6)  # longer than the Redis client's 5 s socket timeout
                assert await redis_unready(client), "a black-holed Redis reported ready"
                assert not streaming.done(), "the stream ended before the network came back"
                await proxy.restore()
                await streaming
                await service.wait_ready(60)
                await boards_match_a_rebuild(client, bootstrap, floor, clinics, visits=30)
                assert applied_events((await client.get("/metrics")).text) == len(day)
            assert service.process is not None and service.process.poll() is None
            await checkpoint_at_the_end(flow_env["redis_url"], flow_env["redis_prefix"],
                                        bootstrap, floor)
        finally:
            service.stop()


@asynccontextmanager
async def watching_checkpoints(redis_url: str, prefix: str,
                               floor: str) -> AsyncIterator[list[str]]:
    """Poll the stored offsets while the block runs; yields the regressions seen (a
    partition's checkpoint going back means an older state overwrote a newer one)."""
    regressions: list[str] = []
    highest: dict[int, int] = {}

    done = asyncio.Event()

    async def watch() -> None:
        while not done.is_set():
            for partition, offset in (await stored_offsets(redis_url, prefix, floor)).items():
                if offset < highest.get(partition, -1):
                    regressions.append(f"partition {partition}: {highest[partition]} -> {offset}")
                highest[partition] = max(offset, highest.get(partition, -1))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), 0.02)

    task = asyncio.create_task(watch())
    try:
        yield regressions
    finally:
        # told to stop, not cancelled: a cancellation that lands inside redis-py's
        # connection teardown can be swallowed (Python 3.11's timeouts), and the watcher
        # then polled on while the test waited for it, past pytest's timeout
        done.set()
        await task


def log_lines(path: Path, text: str) -> int:
    return path.read_text().count(text)


@pytest.mark.reliability(
    "two flow instances in one group; one frozen (SIGSTOP) mid-stream past its session "
    "timeout, holding applied but unstored batches, then woken (SIGCONT)",
    "its partitions move; its late checkpoint is refused (fenced), so no stored offset ever "
    "goes back; every board equals a board rebuilt from the topic, nothing applied twice",
)
async def test_an_instance_paused_past_its_session_wakes_up_unable_to_overwrite_newer_state(
    flow_env: dict[str, Any], tmp_path: Path,
) -> None:
    bootstrap, floor = flow_env["kafka_bootstrap"], topic_name(FLOOR, flow_env["topic_prefix"])
    prefix = flow_env["redis_prefix"]
    # the sleeper checkpoints rarely, so it is frozen holding work it has not stored
    sleeper = ServiceProcess("flow", service_env({
        **flow_env, "flow_session_timeout_ms": 3000, "flow_checkpoint_seconds": 300,
        "log_format": "json"}), tmp_path / "sleeper.log")
    keeper = ServiceProcess("flow", service_env({
        **flow_env, "flow_session_timeout_ms": 3000, "log_format": "json"}),
        tmp_path / "keeper.log")
    clinics = tuple(f"clinic-{n}" for n in range(8))  # spread over the partitions
    # the clinics' days side by side (each clinic's own order kept): all of them live
    day = sorted(a_day(clinics, visits=30), key=lambda event: event.occurred_at)
    half = len(day) // 2
    sleeper.start()
    keeper.start()
    try:
        await sleeper.wait_ready()
        await keeper.wait_ready()
        # the keeper's first assignment is the group split between the two
        await eventually(lambda: log_lines(keeper.log_path, "rebuilding partition"), timeout=30)
        async with watching_checkpoints(flow_env["redis_url"], prefix, floor) as regressions, \
                httpx.AsyncClient(base_url=keeper.url, timeout=20) as client:
            await publish(bootstrap, floor, day[:half])
            # both have applied their share: every clinic's board is drawn
            await eventually(lambda: _all_drawn(client, clinics), timeout=30)
            assert sleeper.process is not None
            os.kill(sleeper.process.pid, signal.SIGSTOP)
            try:
                await stream(bootstrap, floor, day[half:], seconds=4)
                # the keeper now holds every partition, and has stored it all
                await boards_match_a_rebuild(client, bootstrap, floor, clinics, visits=30)
                await checkpoint_at_the_end(flow_env["redis_url"], prefix, bootstrap, floor)
                rejoined = log_lines(sleeper.log_path, "partition from")
            finally:
                os.kill(sleeper.process.pid, signal.SIGCONT)
            # the sleeper wakes, finds itself out of the group, joins again: both get a share
            await eventually(lambda: log_lines(sleeper.log_path, "partition from") > rejoined,
                             timeout=45)
            await sleeper.wait_ready()
            await boards_match_a_rebuild(client, bootstrap, floor, clinics, visits=30)
            await checkpoint_at_the_end(flow_env["redis_url"], prefix, bootstrap, floor)
        assert regressions == [], f"an older checkpoint overwrote a newer one: {regressions}"
        assert "late checkpoint is dropped" in sleeper.log_path.read_text()
    finally:
        sleeper.stop()
        keeper.stop()


async def _all_drawn(client: httpx.AsyncClient, clinics: tuple[str, ...]) -> bool:
    for clinic in clinics:
        board = await get_board(client, clinic, NURSE)
        if not board or not board["counts"].get("checked_out"):
            return False
    return True


@pytest.mark.reliability(
    "the network between the notifier and Redis cut (reset, then a black hole) while a "
    "delay and new estimates stream in; then restored",
    "every affected patient told once, no message sent twice, the notifier recovers by itself",
)
async def test_a_notifier_cut_off_from_redis_tells_each_patient_once_when_it_is_back(
    notifications_env: dict[str, Any], smtp_server: MailCatcher,
) -> None:
    env = notifications_env
    bootstrap, prefix = env["kafka_bootstrap"], env["topic_prefix"]
    t0 = datetime.now(UTC) - timedelta(minutes=5)
    patients = [(f"v{n}", f"A-{n}") for n in range(1, 7)]
    async with TcpProxy(urlsplit(env["redis_url"]).port or 6379) as proxy:
        settings = NotificationsSettings(**{**env, "redis_url": through(proxy, env["redis_url"])})
        async with serving(create_app(settings)) as url, \
                httpx.AsyncClient(base_url=url, timeout=20) as client:
            # the patients check in first: a contact is taken only for a visit on the floor
            await publish_floor(bootstrap, prefix,
                                [arrival(v, t, "dr-lee", t0) for v, t in patients])
            for visit, _ in patients:
                await record_contact(client, visit, "email", f"{visit}@patients.example.org")
            await publish_estimates(bootstrap, prefix, [
                estimate(v, t, "dr-lee", 10.0 * (i + 1), t0) for i, (v, t) in enumerate(patients)])
            await proxy.cut("reset")
            assert await eventually(lambda: redis_unready(client), timeout=30)
            delay = floor_event(ev.DelayAnnounced(provider_id="dr-lee", minutes=25,
                                                  reason="emergency"), t0 + timedelta(minutes=2))
            await publish_floor(bootstrap, prefix, [delay])
            await proxy.cut("blackhole")
            await publish_estimates(bootstrap, prefix, [
                estimate(v, t, "dr-lee", 10.0 * (i + 1) + 25, delay.occurred_at)
                for i, (v, t) in enumerate(patients)])
            await asyncio.sleep(6)  # longer than the Redis client's 5 s socket timeout
            assert smtp_server.mails == [], "a message went out while Redis was unreachable"
            await proxy.restore()
            await eventually(lambda: len(smtp_server.mails) >= len(patients), timeout=60)
            # every message recorded as sent, none left to go out again
            await eventually(lambda: _all_sent(client, len(patients)), timeout=30)
    told = sorted(address for m in smtp_server.mails for address in m.to)
    assert told == sorted(f"{v}@patients.example.org" for v, _ in patients)
    assert len({m.message_id for m in smtp_server.mails}) == len(smtp_server.mails)


async def _all_sent(client: httpx.AsyncClient, count: int) -> bool:
    answer = await client.get("/clinics/north/notifications?limit=100",
                              headers=FRONT_DESK)
    listed = answer.json()["notifications"]
    return len(listed) == count and all(n["status"] == "sent" for n in listed)
