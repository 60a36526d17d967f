"""The billing service, wired: fee schedule (validated at start-up), checkout desk and
money API, the ledger projection and the floor consumer (both run by the shared
``ProjectionRunner``), and the outbox their dead letters leave by. Wiring only."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from services.billing.api import make_router
from services.billing.desk import Desk
from services.billing.fees import FeeScheduleFile
from services.billing.floor import FLOOR_CONSUMER, BillingFloorProjection, floor_reader
from services.billing.metrics import BARRIER_SECONDS, observe_ledger_batch
from services.billing.projection import LEDGER_CONSUMER, ledger_reader, plan_ledger
from services.billing.store import BillingStore, LedgerProjectionStore
from shared.barrier import ProjectionBarrier
from shared.clock import Clock
from shared.kafka import dead_letter_topic, session, topic
from shared.metrics import EVENTS_PUBLISHED
from shared.outbox import Outbox, OutboxRelay
from shared.projection import Offsets, ProjectionRunner, RedisProjection
from shared.service import ServiceRuntime, make_http_app
from shared.settings import BillingSettings
from shared.topics import FLOOR, LEDGER
from shared.visit_end import VisitEnds

SERVICE = "billing"


def create_app(settings: BillingSettings, clock: Clock | None = None) -> FastAPI:
    """Build the billing service; nothing connects until the app starts. An invalid fee
    schedule stops it here (``FeeScheduleError`` names the file and its bad lines)."""
    fees = FeeScheduleFile(settings.fee_schedule_path)
    runtime = ServiceRuntime(settings, SERVICE, clock=clock)
    redis, prefix = runtime.redis, settings.redis_prefix
    store = BillingStore(redis, prefix)
    ledger_topic, floor_topic = topic(LEDGER, settings), topic(FLOOR, settings)
    published_as = {ledger_topic: "ledger", floor_topic: "floor",
                    dead_letter_topic(settings): "deadletter"}

    async def publish(value: bytes, to_topic: str, key: bytes | None) -> None:
        await runtime.broker.publish(value, to_topic, key=key)
        EVENTS_PUBLISHED.labels(SERVICE, published_as.get(to_topic, "other")).inc()

    outbox = Outbox(redis, store.prefix)
    relay = OutboxRelay(outbox, runtime.send, {"deadletter": dead_letter_topic(settings)},
                        service=SERVICE, clock=runtime.clock)
    runtime.every(settings.billing_outbox_relay_seconds, relay.tick, "outbox-relay")
    batches: dict[str, Any] = {"max_records": settings.billing_batch_max,
                               "batch_timeout_ms": settings.billing_batch_timeout_ms,
                               "fetch_max_wait_ms": settings.billing_batch_timeout_ms,
                               **session(settings.billing_session_timeout_ms)}

    ledger = RedisProjection(redis, prefix, consumer=LEDGER_CONSUMER,
                             store=LedgerProjectionStore(redis, prefix), plan=plan_ledger,
                             outbox=outbox, after=observe_ledger_batch)
    ledger_runner = ProjectionRunner(
        runtime.broker, ledger, ledger_reader(ledger_topic), service=SERVICE,
        consumer=LEDGER_CONSUMER, topics=[ledger_topic],
        group_id=f"{settings.billing_group_id}-ledger", title="billing.ledger-projection",
        description="Ledger entries -> the Redis projection that answers balances, "
        "receipts and reconciliation.", **batches)
    barrier = ProjectionBarrier(lambda: ledger_runner.kafka, ledger.offsets, ledger_topic,
                                what="the ledger projection", topic_role="ledger",
                                timeout=settings.billing_barrier_timeout_seconds,
                                observe=BARRIER_SECONDS.observe)
    # the floor runner (below) is built on the desk: the barrier asks for it once started
    floor_barrier = ProjectionBarrier(
        lambda: floor_runner.kafka, Offsets(redis, prefix, FLOOR_CONSUMER), floor_topic,
        what="billing's floor consumer", topic_role="floor",
        timeout=settings.billing_barrier_timeout_seconds)
    desk = Desk(store, fees, publish, ledger_topic=ledger_topic, floor_topic=floor_topic,
                clinics=settings.clinic_directory(),
                wait_seconds=settings.billing_command_wait_seconds,
                barrier=barrier.caught_up, floor_barrier=floor_barrier.caught_up,
                clock=runtime.clock,
                # a checkout and check-in's cancel of one visit: one of them ends it
                visit_ends=VisitEnds(redis, settings.redis_prefix))

    floor = BillingFloorProjection(desk, redis, prefix, outbox, runtime.clock)
    floor_runner = ProjectionRunner(
        runtime.broker, floor, floor_reader(floor_topic), service=SERVICE,
        consumer=FLOOR_CONSUMER, topics=[floor_topic], group_id=settings.billing_group_id,
        title="billing.floor", description="Arrivals (the visit, its patient ref and "
        "provider), providers in, visits ended (checked out, cancelled), checkouts from "
        "other clients (priced), undone facts (a checkout's charge voided, the visit open "
        "again).", **batches)

    app = make_http_app(
        runtime,
        title="clinicflow billing",
        description="Checkout desk, charges, payments and end-of-day reconciliation.",
    )
    app.state.store = store
    app.state.desk = desk
    app.state.barrier = barrier
    app.state.floor_barrier = floor_barrier
    app.state.ledger_runner = ledger_runner
    app.state.floor_runner = floor_runner
    app.state.outbox_relay = relay
    app.include_router(make_router(desk))
    return app
