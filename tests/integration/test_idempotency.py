"""Idempotency-Key handling on a real Redis: a request still running keeps its key
(others get 409 with Retry-After), and the key of a process that died mid-request frees
itself within seconds, so the client's retry runs the command."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from fastapi import HTTPException
from redis.asyncio import Redis

from shared import idempotency
from shared.idempotency import IdempotencyStore


@pytest.fixture
async def store(redis_url: str, redis_prefix: str,
                monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[IdempotencyStore]:
    monkeypatch.setattr(idempotency, "PENDING_TTL_SECONDS", 0.6)
    redis = Redis.from_url(redis_url)
    yield IdempotencyStore(redis, redis_prefix)
    await redis.aclose()


async def test_a_request_still_running_keeps_its_key_past_the_marker_lifetime(
    store: IdempotencyStore,
) -> None:
    runs: list[int] = []

    async def slow() -> tuple[int, Any]:
        runs.append(1)
        await asyncio.sleep(2.0)  # over three marker lifetimes
        return 201, {"ticket_code": "A-1"}

    first = asyncio.create_task(store.run("arrivals", "k1", "fp", slow))
    await asyncio.sleep(1.5)
    with pytest.raises(HTTPException) as refused:
        await store.run("arrivals", "k1", "fp", slow)
    assert refused.value.status_code == 409
    assert refused.value.headers == {"Retry-After": "1"}
    assert await first == (201, {"ticket_code": "A-1"}, False)
    assert await store.run("arrivals", "k1", "fp", slow) == (201, {"ticket_code": "A-1"}, True)
    assert len(runs) == 1


async def test_the_key_of_a_process_that_died_mid_request_frees_itself(
    store: IdempotencyStore, redis_url: str, redis_prefix: str,
) -> None:
    # what a process killed with -9 leaves: the pending marker, nobody renewing it
    redis = Redis.from_url(redis_url)
    await redis.set(f"{redis_prefix}:idem:arrivals:k2",
                    orjson.dumps({"state": "pending", "fingerprint": "fp"}), px=600)
    await redis.aclose()

    async def arrive() -> tuple[int, Any]:
        return 201, {"ticket_code": "A-2"}

    with pytest.raises(HTTPException) as refused:
        await store.run("arrivals", "k2", "fp", arrive)
    assert refused.value.status_code == 409
    await asyncio.sleep(0.8)
    assert await store.run("arrivals", "k2", "fp", arrive) == (201, {"ticket_code": "A-2"},
                                                                False)


async def test_a_key_is_the_callers_own(store: IdempotencyStore) -> None:
    # a manager's request with the key a nurse used runs as its own request; each caller's
    # retry replays its own first answer
    runs: list[str] = []

    async def as_caller(role: str, name: str) -> tuple[int, Any, bool]:
        idempotency.bind_caller(role, name)

        async def act() -> tuple[int, Any]:
            runs.append(name)
            return 202, {"by": name}

        return await store.run("flow:north", "shared-key", "fp", act)

    nurse = await asyncio.create_task(as_caller("nurse", "dev-nurse"))
    manager = await asyncio.create_task(as_caller("manager", "dev-manager"))
    assert nurse == (202, {"by": "dev-nurse"}, False)
    assert manager == (202, {"by": "dev-manager"}, False)
    assert await asyncio.create_task(as_caller("nurse", "dev-nurse")) == \
        (202, {"by": "dev-nurse"}, True)
    assert runs == ["dev-nurse", "dev-manager"]
