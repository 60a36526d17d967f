"""Shared pieces of the billing tests (no tests here): the service's settings for one test,
running it in-process, patients checking in on the floor (as checkin publishes them),
reading its topics, and replaying the floor as flow applies it. Test modules import from
here."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest

from services.billing.app import create_app
from services.billing.store import BillingStore
from shared import events as ev
from shared.admin import ensure_topics
from shared.barrier import ProjectionBarrier
from shared.clock import Clock
from shared.floor.clinic_flow import ClinicFlow
from shared.floor.model import NotApplicable
from shared.outbox import OutboxRelay
from shared.settings import BillingSettings
from shared.topics import DEAD_LETTER, FLOOR, LEDGER, topic_name
from tests.helpers import auth, eventually, producer, read_topic, serving

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


def keyed(headers: dict[str, str], key: str | None = None) -> dict[str, str]:
    """``headers`` with an Idempotency-Key (a new one unless given): what a desk sends with
    each payment and refund, and again unchanged when it retries one."""
    return {**headers, "Idempotency-Key": key or uuid.uuid4().hex}


@contextlib.asynccontextmanager
async def running_billing(env: dict[str, Any],
                          clock: Clock | None = None) -> AsyncIterator[httpx.AsyncClient]:
    """The billing service in this event loop, ready (Kafka up, projection assigned)."""
    app = create_app(BillingSettings(**env), clock=clock)
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


def barrier_of(client: httpx.AsyncClient) -> ProjectionBarrier:
    """The desk's barrier: ``caught_up(clinic)`` returns once the ledger projection holds
    the clinic's ledger partition to its end."""
    barrier: ProjectionBarrier = client.app.state.barrier  # type: ignore[attr-defined]
    return barrier


def floor_barrier_of(client: httpx.AsyncClient) -> ProjectionBarrier:
    """``caught_up(clinic)`` returns once billing's floor consumer holds the clinic's floor
    partition to its end."""
    barrier: ProjectionBarrier = client.app.state.floor_barrier  # type: ignore[attr-defined]
    return barrier


def arrival(clinic: str, visit: str, *, patient_ref: str | None = None,
            provider_id: str | None = None, at: datetime | None = None) -> ev.Event:
    """``patient.arrived`` as checkin publishes it when the patient checks in."""
    return ev.make_event(
        ev.PatientArrived(visit_id=visit, ticket_code=f"A-{abs(hash(visit)) % 1000}",
                          patient_ref=patient_ref, provider_id=provider_id,
                          visit_type="follow_up"),
        clinic_id=clinic, source="checkin", occurred_at=at or datetime.now(UTC),
        correlation_id=visit)


async def publish_floor(env: dict[str, Any], *events: ev.Event) -> None:
    """Publish floor events as their services do (keyed by clinic, Kafka's partitioner)."""
    async with producer(env["kafka_bootstrap"]) as kafka:
        for event in events:
            await kafka.send_and_wait(topic_name(FLOOR, env["topic_prefix"]), ev.encode(event),
                                      key=event.clinic_id.encode())


async def check_in(env: dict[str, Any], clinic: str, *visits: str, **arriving: Any) -> None:
    """The patients of ``visits`` check in at ``clinic`` (their arrivals on the floor)."""
    await publish_floor(env, *(arrival(clinic, v, **arriving) for v in visits))


async def not_appliable_on_the_floor(env: dict[str, Any]) -> list[str]:
    """Every fact on this test's floor topic applied in order as flow applies it (the
    shared floor model): what it could not apply, and why (flow would dead-letter it)."""
    floors: dict[str, ClinicFlow] = {}
    refused: list[str] = []
    for event in await floor(env):
        clinic = floors.setdefault(event.clinic_id, ClinicFlow(event.clinic_id))
        try:
            clinic.apply(event.payload, event.occurred_at, event.envelope.event_id)
        except NotApplicable as exc:
            refused.append(f"{event.event_type} {event.envelope.event_id}: {exc}")
    return refused


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
