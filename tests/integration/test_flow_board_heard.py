"""Flow answers a board GET and a new stream's snapshot from the newest board its hub heard
on the Redis subscription (no Redis read), on a real Redis server: the boards heard are
the boards written, and when the subscription is lost the hub forgets them and the board
is read from Redis again until the next one is heard."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any, cast

import pytest
from redis.asyncio import Redis

from services.flow.api import BoardHub, SnapshotReads
from services.flow.store import FlowStore
from shared.service import make_redis
from shared.settings import CommonSettings
from tests.helpers import eventually


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def test_boards_heard_on_the_subscription_are_served_and_forgotten_when_it_is_lost(
        redis: Redis, redis_url: str) -> None:
    store = FlowStore(redis, f"heard-{uuid.uuid4().hex[:8]}")
    # the hub's own client, built as every service builds it (it reconnects and subscribes
    # again by itself), its connections named so that the test can kill them
    name = f"heard-hub-{uuid.uuid4().hex[:8]}"
    listener = make_redis(CommonSettings(redis_url=f"{redis_url}?client_name={name}"))
    hub = BoardHub(cast(Any, SimpleNamespace(redis=listener)), store, max_total=10,
                   max_per_credential=10)
    reads = SnapshotReads(store, hub)
    await hub.start()
    try:
        await eventually(hub.listening.is_set, timeout=10)
        await redis.set(store._board("north"), b'{"n":0}')
        assert hub.heard("north") is None  # nothing heard yet: read from Redis
        assert await reads.read("north") == b'{"n":0}'

        await store.write({"north": b'{"n":1}', "south": b'{"s":1}'})
        await eventually(lambda: hub.heard("north") == b'{"n":1}', timeout=10)
        assert hub.heard("south") == b'{"s":1}'
        # a board changed behind the hub's back (no message) is not what it serves: the
        # answer comes from memory, not Redis
        await redis.set(store._board("north"), b'{"n":"unpublished"}')
        assert await reads.read("north") == b'{"n":1}'

        # the subscription is lost (its connection killed; the client subscribes again by
        # itself): what was heard is forgotten, reads go to Redis until the next board is
        # heard on the new subscription
        clients = (await redis.execute_command("CLIENT", "LIST", "TYPE", "pubsub")).decode()
        ids = [line.split()[0].split("=")[1] for line in clients.splitlines()
               if f" name={name} " in line]
        assert ids, clients
        for client_id in ids:
            await redis.execute_command("CLIENT", "KILL", "ID", client_id)
        await eventually(lambda: hub.heard("north") is None, timeout=10)
        assert await reads.read("north") == b'{"n":"unpublished"}'
        await eventually(hub.listening.is_set, timeout=10)
        await store.write({"north": b'{"n":2}'})
        await eventually(lambda: hub.heard("north") == b'{"n":2}', timeout=10)
        assert hub.heard("south") is None
    finally:
        await hub.stop()
        await listener.aclose()
