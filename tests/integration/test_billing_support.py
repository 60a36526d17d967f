"""Shared pieces of the billing tests (no tests here): the service's settings for one test,
running it in-process, and reading its ledger topic. Test modules import from here."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from services.billing.app import create_app
from services.billing.barrier import LedgerBarrier
from services.billing.store import BillingStore
from shared import events as ev
from shared.admin import ensure_topics
from shared.outbox import OutboxRelay
from shared.settings import BillingSettings
from shared.topics import DEAD_LETTER, FLOOR, LEDGER, topic_name
from tests.helpers import auth, eventually, read_topic, serving

BILLING = auth("dev-billing")
MANAGER = auth("dev-manager")
FRONT_DESK = auth("dev-front-desk")


@pytest.fixture
async def billing_env(kafka_bootstrap: str, redis_url: str, topic_prefix: str) -> dict[str, Any]:
    """Settings for one test: its own topics, consumer group and Redis keys; no relay loop
    (a test publishes the outbox's dead letters with ``relay_of(client).tick``)."""
    await ensure_topics(kafka_bootstrap, topic_prefix)
    return {
        "kafka_bootstrap": kafka_bootstrap,
        "redis_url": redis_url,
        "topic_prefix": topic_prefix,
        "redis_prefix": topic_prefix.rstrip("."),
        "billing_group_id": f"{topic_prefix}billing",
        "billing_batch_timeout_ms": 10,
        "billing_outbox_relay_seconds": 0,
    }


@contextlib.asynccontextmanager
async def running_billing(env: dict[str, Any]) -> AsyncIterator[httpx.AsyncClient]:
    """The billing service in this event loop, ready (Kafka up, projection assigned)."""
    app = create_app(BillingSettings(**env))
    async with serving(app) as base_url, httpx.AsyncClient(base_url=base_url,
                                                            timeout=20) as client:
        async def ready() -> bool:
            return (await client.get("/readyz")).status_code == 200

        await eventually(ready, timeout=60)
        client.app = app  # type: ignore[attr-defined]
        yield client


def store_of(client: httpx.AsyncClient) -> BillingStore:
    store: BillingStore = client.app.state.store  # type: ignore[attr-defined]
    return store


def barrier_of(client: httpx.AsyncClient) -> LedgerBarrier:
    """The desk's barrier: ``caught_up(clinic)`` returns once the ledger projection holds
    the clinic's ledger partition to its end."""
    barrier: LedgerBarrier = client.app.state.barrier  # type: ignore[attr-defined]
    return barrier


def relay_of(client: httpx.AsyncClient) -> OutboxRelay:
    relay: OutboxRelay = client.app.state.outbox_relay  # type: ignore[attr-defined]
    return relay


async def dead_letters(env: dict[str, Any], expect: int | None = None) -> list[dict[str, Any]]:
    """Every dead letter on this test's dead-letter topic (JSON)."""
    records = await read_topic(env["kafka_bootstrap"],
                               topic_name(DEAD_LETTER, env["topic_prefix"]), expect=expect)
    return [orjson.loads(r.value) for r in records]


async def ledger(env: dict[str, Any], expect: int | None = None) -> list[ev.Event]:
    """Every event on this test's ledger topic."""
    records = await read_topic(env["kafka_bootstrap"],
                               topic_name(LEDGER, env["topic_prefix"]), expect=expect)
    return [ev.decode(r.value) for r in records]


async def floor(env: dict[str, Any], expect: int | None = None) -> list[ev.Event]:
    records = await read_topic(env["kafka_bootstrap"],
                               topic_name(FLOOR, env["topic_prefix"]), expect=expect)
    return [ev.decode(r.value) for r in records]


def of_type(events: list[ev.Event], event_type: str) -> list[ev.Event]:
    return [e for e in events if e.event_type == event_type]
