"""The billing service, wired: fee schedule (validated at start-up), checkout desk and
money API, the ledger projection (a batch subscriber on the ledger topic whose Kafka
commits follow the Redis write) and the floor consumer (arrivals, checkouts from other
clients, undone checkouts). Wiring only."""

from __future__ import annotations

from fastapi import FastAPI
from faststream import AckPolicy
from faststream.kafka import KafkaMessage

from services.billing.api import make_router
from services.billing.desk import Desk
from services.billing.fees import FeeScheduleFile
from services.billing.floor import FloorConsumer
from services.billing.projection import LedgerProjection
from services.billing.store import BillingStore
from shared.kafka import dead_letter_topic, topic
from shared.metrics import EVENTS_PUBLISHED
from shared.service import ServiceRuntime, make_http_app
from shared.settings import BillingSettings
from shared.topics import FLOOR, LEDGER


async def _raw_records(message: KafkaMessage) -> object:
    """Keep the batch as aiokafka records: the projection decodes (and dead-letters) each."""
    return message.raw_message


def create_app(settings: BillingSettings) -> FastAPI:
    """Build the billing service; nothing connects until the app starts. An invalid fee
    schedule stops it here (``FeeScheduleError`` names the file and its bad lines)."""
    fees = FeeScheduleFile(settings.fee_schedule_path)
    runtime = ServiceRuntime(settings, "billing")
    store = BillingStore(runtime.redis, settings.redis_prefix)
    ledger_topic, floor_topic = topic(LEDGER, settings), topic(FLOOR, settings)

    async def publish(value: bytes, to_topic: str, key: bytes) -> None:
        await runtime.broker.publish(value, to_topic, key=key)
        EVENTS_PUBLISHED.labels("billing", "ledger" if to_topic == ledger_topic
                                else "floor").inc()

    projection = LedgerProjection(runtime, store, ledger_topic=ledger_topic,
                                  dead_letter_topic=dead_letter_topic(settings),
                                  barrier_timeout=settings.billing_barrier_timeout_seconds)
    desk = Desk(store, fees, publish, ledger_topic=ledger_topic, floor_topic=floor_topic,
                timezone_of=settings.timezone_of,
                wait_seconds=settings.billing_command_wait_seconds,
                barrier=projection.caught_up)
    subscriber = runtime.broker.subscriber(
        ledger_topic,
        batch=True,
        group_id=f"{settings.billing_group_id}-ledger",
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.MANUAL,  # Kafka commits follow the Redis transaction
        max_records=settings.billing_batch_max,
        batch_timeout_ms=settings.billing_batch_timeout_ms,
        fetch_max_wait_ms=settings.billing_batch_timeout_ms,
        listener=projection.listener(),
        decoder=_raw_records,
        title="billing.ledger-projection",
        description="Ledger entries -> the Redis projection that answers balances, "
        "receipts and reconciliation.",
    )
    projection.subscriber = subscriber

    @subscriber
    async def on_ledger_entries(records: list[object]) -> None:
        await projection.handle(records)

    floor = FloorConsumer(desk)
    floor_subscriber = runtime.broker.subscriber(
        floor_topic,
        batch=True,
        group_id=settings.billing_group_id,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.MANUAL,  # committed after the ledger commands took effect
        max_records=settings.billing_batch_max,
        batch_timeout_ms=settings.billing_batch_timeout_ms,
        fetch_max_wait_ms=settings.billing_batch_timeout_ms,
        decoder=_raw_records,
        title="billing.floor",
        description="Arrivals (patient ref), checkouts from other clients (priced), "
        "undone checkouts (charge voided).",
    )
    floor.subscriber = floor_subscriber

    @floor_subscriber
    async def on_floor_events(records: list[object]) -> None:
        await floor.handle(records)

    app = make_http_app(
        runtime,
        title="clinicflow billing",
        description="Checkout desk, charges, payments and end-of-day reconciliation.",
    )
    app.state.store = store
    app.state.desk = desk
    app.state.projection = projection
    app.state.floor = floor
    app.include_router(make_router(desk))
    return app
