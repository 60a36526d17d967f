"""The outbox relay against a real Redis: a stop lets the batch under way finish, and
leaves the rest for the last drain."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from redis.asyncio import Redis

from shared.outbox import Outbox, OutboxRelay, outbox_entry


class SlowBroker:
    """What the relay publishes to: each publish waits until ``release`` (the broker is
    slow to acknowledge); ``publishing`` is set by the first."""

    def __init__(self) -> None:
        self.published: list[bytes] = []
        self.publishing = asyncio.Event()
        self.release = asyncio.Event()

    async def publish(self, value: bytes, _topic: str, _key: bytes | None) -> None:
        self.publishing.set()
        await self.release.wait()
        self.published.append(value)


def numbered(count: int) -> list[bytes]:
    return [f'{{"n": {n}}}'.encode() for n in range(count)]


@asynccontextmanager
async def relay_stopped_mid_drain(redis_url: str, entries: int, batch: int
                                  ) -> AsyncIterator[tuple[OutboxRelay, SlowBroker, Outbox,
                                                           asyncio.Task[None]]]:
    """``entries`` waiting in a fresh outbox, its relay's loop publishing the first of
    them when ``stop`` is asked; yields once the stop has returned."""
    redis = Redis.from_url(redis_url)
    outbox = Outbox(redis, f"t{uuid.uuid4().hex[:8]}")
    broker = SlowBroker()
    relay = OutboxRelay(outbox, broker.publish, {"audit": "audit-topic"}, service="test",
                        batch=batch)
    try:
        pipe = redis.pipeline(transaction=True)
        outbox.queue(pipe, [outbox_entry("audit", "north", value)
                            for value in numbered(entries)])
        await pipe.execute()
        running = asyncio.create_task(relay.run(60.0, ready=lambda: True))
        relay.kick.set()
        await broker.publishing.wait()  # the first entry is on its way to Kafka
        stopping = asyncio.create_task(relay.stop([running], timeout=30.0))
        await relay.kick.wait()  # the stop is asked (it wakes the loop) while the publish waits
        assert not running.done()
        broker.release.set()
        await stopping
        yield relay, broker, outbox, running
    finally:
        broker.release.set()
        await redis.delete(outbox.key, outbox.lock_key)
        await redis.aclose()


async def test_a_stop_during_a_drain_lets_it_finish_so_nothing_goes_out_twice(
    redis_url: str,
) -> None:
    async with relay_stopped_mid_drain(redis_url, 3, batch=200) as (relay, broker, outbox,
                                                                     running):
        assert running.done() and not running.cancelled()  # ended by itself
        assert broker.published == numbered(3)
        assert await outbox.length() == 0  # each one trimmed as published
        assert await relay.tick() == 0  # the next relay has nothing to send again


async def test_a_stop_with_a_backlog_ends_after_the_batch_under_way_and_the_rest_waits(
    redis_url: str,
) -> None:
    # a backlog drained to its end outlasted stop's wait and was cancelled mid-publish:
    # that event went out again with the next drain (seen as one duplicate nurse alert
    # in a few thousand when the notifier stopped with its outbox behind)
    async with relay_stopped_mid_drain(redis_url, 7, batch=2) as (relay, broker, outbox,
                                                                   running):
        assert running.done() and not running.cancelled()
        assert broker.published == numbered(2)  # its batch, and no further
        assert await outbox.length() == 5  # the rest waits in Redis
        await relay.drain_at_shutdown(ready=False)  # Kafka down: kept for the next start
        assert await outbox.length() == 5
        await relay.drain_at_shutdown(ready=True)  # the last drain sends it, each once
        assert broker.published == numbered(7)
        assert await outbox.length() == 0


async def test_a_drainer_whose_lock_lapsed_trims_nothing_so_nothing_is_lost(
    redis_url: str,
) -> None:
    # a batch slower than the lock (15 s): another instance's relay takes the lock and the
    # same head; the late one trimmed as many again, entries nobody had published
    redis = Redis.from_url(redis_url)
    outbox = Outbox(redis, f"t{uuid.uuid4().hex[:8]}")
    try:
        pipe = redis.pipeline(transaction=True)
        outbox.queue(pipe, [outbox_entry("audit", "north", value) for value in numbered(4)])
        await pipe.execute()
        late = await outbox.take(2)
        assert late is not None
        await redis.delete(outbox.lock_key)  # its lock lapsed while it published
        other = await outbox.take(2)
        assert other is not None and other[1] == late[1]
        assert await outbox.done(other[0], 2)
        assert not await outbox.done(late[0], 2)  # lapsed: trims nothing
        assert await outbox.length() == 2  # the two nobody has published yet
    finally:
        await redis.delete(outbox.key, outbox.lock_key)
        await redis.aclose()


async def test_the_last_drain_sends_what_waited_when_it_began_not_what_keeps_coming(
    redis_url: str,
) -> None:
    # at shutdown the consumers still queue: a drain to an empty list could run past the
    # grace period and be cut between a publish and its trim
    redis = Redis.from_url(redis_url)
    outbox = Outbox(redis, f"t{uuid.uuid4().hex[:8]}")
    published: list[bytes] = []

    async def publish(value: bytes, _topic: str, _key: bytes | None) -> None:
        published.append(value)
        if len(published) <= 5:  # each publish, another entry queued behind
            pipe = redis.pipeline(transaction=True)
            outbox.queue(pipe, [outbox_entry("audit", "north", b'{"later": true}')])
            await pipe.execute()

    relay = OutboxRelay(outbox, publish, {"audit": "audit-topic"}, service="test", batch=1)
    try:
        pipe = redis.pipeline(transaction=True)
        outbox.queue(pipe, [outbox_entry("audit", "north", value) for value in numbered(3)])
        await pipe.execute()
        await relay.drain_at_shutdown(ready=True)
        assert published == numbered(3)
        assert await outbox.length() == 3  # queued meanwhile: the next start sends them
    finally:
        await redis.delete(outbox.key, outbox.lock_key)
        await redis.aclose()


async def test_what_waits_is_shown_also_when_kafka_refuses_a_publish(redis_url: str) -> None:
    # the outbox gauge was set only after a drain that went through: with Kafka down the
    # outbox grew and the gauge kept showing it empty
    from prometheus_client import REGISTRY

    redis = Redis.from_url(redis_url)
    outbox = Outbox(redis, f"t{uuid.uuid4().hex[:8]}")
    service = f"test-{uuid.uuid4().hex[:6]}"

    async def refused(_value: bytes, _topic: str, _key: bytes | None) -> None:
        raise ConnectionError("Kafka is unreachable")

    relay = OutboxRelay(outbox, refused, {"audit": "audit-topic"}, service=service)
    try:
        pipe = redis.pipeline(transaction=True)
        outbox.queue(pipe, [outbox_entry("audit", "north", value) for value in numbered(3)])
        await pipe.execute()
        with pytest.raises(ConnectionError):
            await relay.tick()
        assert REGISTRY.get_sample_value("clinicflow_outbox_events", {"service": service}) == 3
        assert await outbox.length() == 3
    finally:
        await redis.delete(outbox.key, outbox.lock_key)
        await redis.aclose()
