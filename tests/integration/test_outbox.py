"""The outbox relay against a real Redis: a stop lets the drain under way finish."""

from __future__ import annotations

import asyncio
import uuid

from redis.asyncio import Redis

from shared.outbox import Outbox, OutboxRelay, outbox_entry


async def test_a_stop_during_a_drain_lets_it_finish_so_nothing_goes_out_twice(
    redis_url: str,
) -> None:
    redis = Redis.from_url(redis_url)
    outbox = Outbox(redis, f"t{uuid.uuid4().hex[:8]}")
    published: list[bytes] = []
    publishing = asyncio.Event()
    release = asyncio.Event()

    async def publish(value: bytes, _topic: str, _key: bytes | None) -> None:
        publishing.set()
        await release.wait()  # the broker is slow to acknowledge
        published.append(value)

    relay = OutboxRelay(outbox, publish, {"audit": "audit-topic"}, service="test")
    try:
        pipe = redis.pipeline(transaction=True)
        outbox.queue(pipe, [outbox_entry("audit", "north", f'{{"n": {n}}}'.encode())
                            for n in range(3)])
        await pipe.execute()
        running = [asyncio.create_task(relay.run(60.0, ready=lambda: True))]
        relay.kick.set()
        await publishing.wait()  # the first entry is on its way to Kafka

        stopping = asyncio.create_task(relay.stop(running, timeout=30.0))
        await asyncio.sleep(0)  # one turn of the loop: the stop is asked, the publish waits
        assert not running[0].done()
        release.set()
        await stopping

        assert running[0].done() and not running[0].cancelled()  # ended by itself
        assert len(published) == 3
        assert await outbox.length() == 0  # each one trimmed as published
        assert await relay.tick() == 0  # the next relay has nothing to send again
    finally:
        release.set()
        await redis.delete(outbox.key, outbox.lock_key)
        await redis.aclose()
