"""The flow service, wired: floor consumer, board API, SSE, screens. Wiring only."""

from __future__ import annotations

import asyncio
import contextlib

from fastapi import FastAPI
from faststream import AckPolicy
from faststream.kafka import KafkaMessage

from services.flow.api import BoardHub, make_router
from services.flow.consumer import FloorConsumer
from services.flow.pages import make_pages_router, static_files
from services.flow.store import FlowStore
from shared.idempotency import IdempotencyStore
from shared.kafka import dead_letter_topic, topic
from shared.service import ServiceRuntime, make_http_app, stop_tasks
from shared.settings import FlowSettings
from shared.topics import ESTIMATES, FLOOR


async def _raw_records(message: KafkaMessage) -> object:
    """Keep the batch as aiokafka records: flow decodes (and dead-letters) each itself."""
    return message.raw_message


def create_app(settings: FlowSettings) -> FastAPI:
    """Build the flow service; nothing connects until the app starts."""
    runtime = ServiceRuntime(settings, "flow")
    store = FlowStore(runtime.redis, settings.redis_prefix)
    floor_topic = topic(FLOOR, settings)
    consumer = FloorConsumer(
        runtime, store,
        floor_topic=floor_topic,
        estimates_topic=topic(ESTIMATES, settings),
        dead_letter_topic=dead_letter_topic(settings),
        publish_estimates=settings.flow_publish_estimates,
        checkpoint_seconds=settings.flow_checkpoint_seconds,
    )
    subscriber = runtime.broker.subscriber(
        floor_topic,
        batch=True,
        group_id=settings.flow_group_id,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.MANUAL,  # Kafka commits follow the Redis checkpoint
        max_records=settings.flow_batch_max,
        batch_timeout_ms=settings.flow_batch_timeout_ms,
        fetch_max_wait_ms=settings.flow_batch_timeout_ms,
        max_partition_fetch_bytes=4 * 1024 * 1024,
        session_timeout_ms=settings.flow_session_timeout_ms,
        heartbeat_interval_ms=max(100, settings.flow_session_timeout_ms // 3),
        listener=consumer.listener(),
        decoder=_raw_records,
        title="flow.floor",
        description="Applies every floor event to the clinic's live state and estimates.",
    )
    consumer.subscriber = subscriber

    @subscriber
    async def on_floor_events(records: list[object]) -> None:
        await consumer.handle(records)

    hub = BoardHub(runtime, store, settings.flow_sse_max_total,
                   settings.flow_sse_max_per_credential)
    ticker: list[asyncio.Task[None]] = []

    async def tick() -> None:
        while True:
            await asyncio.sleep(settings.flow_tick_seconds)
            with contextlib.suppress(Exception):
                await consumer.refresh_boards()

    async def checkpoint_when_idle() -> None:
        # a burst followed by silence must not leave its tail out of the checkpoint
        while True:
            await asyncio.sleep(settings.flow_checkpoint_seconds)
            with contextlib.suppress(Exception):
                await consumer.flush(idle_only=True)

    async def start() -> None:
        await hub.start()
        ticker.append(asyncio.create_task(tick(), name="flow-ticker"))
        ticker.append(asyncio.create_task(checkpoint_when_idle(), name="flow-checkpointer"))

    async def stop() -> None:
        await stop_tasks(ticker)
        await hub.stop()
        if runtime.kafka_started:
            with contextlib.suppress(Exception):
                await consumer.flush()

    app = make_http_app(
        runtime,
        title="clinicflow flow",
        description="The floor: live clinic state, wait estimates, boards and staff commands.",
        on_startup=[start],
        on_shutdown=[stop],
    )
    app.state.consumer = consumer
    app.include_router(make_router(runtime, store, hub, floor_topic,
                                   IdempotencyStore(runtime.redis, settings.redis_prefix)))
    app.include_router(make_pages_router(settings))
    app.mount("/static", static_files(), name="static")
    return app
