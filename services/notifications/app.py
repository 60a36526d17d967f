"""The notifications service, wired: floor + estimates consumer, sender, outbox, API.
Wiring only."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable

import httpx
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from faststream import AckPolicy
from faststream.kafka import KafkaMessage

from services.notifications.api import AlertHub, make_router
from services.notifications.channels import (
    Channel,
    EmailChannel,
    LogChannel,
    PagingWebhook,
    SmsGateway,
)
from services.notifications.consumer import NotificationConsumer
from services.notifications.delivery import Dispatcher, OutboxPublisher
from services.notifications.domain import RuleBook
from services.notifications.store import NotificationStore
from shared.idempotency import IdempotencyStore
from shared.kafka import dead_letter_topic, topic
from shared.service import ServiceRuntime, make_http_app, stop_tasks
from shared.settings import NotificationsSettings
from shared.topics import AUDIT, ESTIMATES, FLOOR, NOTIFICATIONS


async def _raw_records(message: KafkaMessage) -> object:
    """Keep the batch as aiokafka records: the consumer decodes (and dead-letters) each."""
    return message.raw_message


def build_channels(settings: NotificationsSettings,
                   client: httpx.AsyncClient) -> dict[str, Channel]:
    """The channels this deployment can use (SMS and paging only when configured)."""
    timeout = settings.notifications_send_timeout_seconds
    channels: dict[str, Channel] = {
        "email": EmailChannel(
            host=settings.smtp_host, port=settings.smtp_port, sender=settings.smtp_sender,
            timeout=timeout, username=settings.smtp_username,
            password=settings.smtp_password.get_secret_value() if settings.smtp_password
            else None, starttls=settings.smtp_starttls),
        "log": LogChannel(),
    }
    if settings.sms_gateway_url:
        channels["sms"] = SmsGateway(url=settings.sms_gateway_url,
                                     secret=settings.sms_hmac_secret.get_secret_value(),
                                     client=client, timeout=timeout)
    if settings.paging_webhook_url:
        channels["webhook"] = PagingWebhook(url=settings.paging_webhook_url,
                                            secret=settings.paging_hmac_secret.get_secret_value(),
                                            client=client, timeout=timeout)
    return channels


def create_app(settings: NotificationsSettings) -> FastAPI:
    """Build the notifications service; nothing connects until the app starts."""
    try:
        rules = RuleBook.parse(json.loads(settings.notifications_rules))
    except ValueError as exc:
        raise ValueError(f"CLINICFLOW_NOTIFICATIONS_RULES: {exc}") from None
    runtime = ServiceRuntime(settings, "notifications")
    store = NotificationStore(runtime.redis, settings.redis_prefix)
    floor_topic, estimates_topic = topic(FLOOR, settings), topic(ESTIMATES, settings)
    notifications_topic = topic(NOTIFICATIONS, settings)
    client = httpx.AsyncClient()
    dispatcher = Dispatcher(
        store, build_channels(settings, client),
        notifications_topic=notifications_topic,
        concurrency=settings.notifications_send_concurrency,
        send_timeout=settings.notifications_send_timeout_seconds,
        max_attempts=settings.notifications_max_attempts,
        retry_base=settings.notifications_retry_base_seconds,
        retry_max=settings.notifications_retry_max_seconds,
    )
    outbox = OutboxPublisher(runtime, store, {
        "notifications": notifications_topic,
        "audit": topic(AUDIT, settings),
        "deadletter": dead_letter_topic(settings),
    })
    dispatcher.on_settled = outbox.kick

    def committed() -> None:
        dispatcher.kick.set()
        outbox.kick.set()

    consumer = NotificationConsumer(
        runtime, store, rules,
        floor_topic=floor_topic, estimates_topic=estimates_topic,
        notifications_topic=notifications_topic,
        paging=bool(settings.paging_webhook_url), on_committed=committed,
    )
    subscriber = runtime.broker.subscriber(
        floor_topic, estimates_topic,
        batch=True,
        group_id=settings.notifications_group_id,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.MANUAL,  # Kafka commits follow the Redis transaction
        max_records=settings.notifications_batch_max,
        batch_timeout_ms=settings.notifications_batch_timeout_ms,
        fetch_max_wait_ms=settings.notifications_batch_timeout_ms,
        # how soon partitions of a dead instance move to a live one
        session_timeout_ms=settings.notifications_session_timeout_ms,
        heartbeat_interval_ms=max(100, settings.notifications_session_timeout_ms // 3),
        # a clinic's floor and estimates partitions (same key, same count) stay together
        partition_assignment_strategy=(RangePartitionAssignor,),
        listener=consumer.listener(),
        decoder=_raw_records,
        title="notifications.floor-and-estimates",
        description="Floor events and wait estimates -> patient messages and nurse alerts.",
    )
    consumer.subscriber = subscriber

    @subscriber
    async def on_floor_and_estimates(records: list[object]) -> None:
        await consumer.handle(records)

    hub = AlertHub(runtime, store, settings.notifications_sse_max_total)
    tasks: list[asyncio.Task[None]] = []

    async def tick() -> None:
        while True:
            await asyncio.sleep(settings.notifications_tick_seconds)
            if runtime.kafka_started:
                with contextlib.suppress(Exception):
                    await consumer.tick()

    def spawn(name: str, loop: Callable[[], Awaitable[None]]) -> None:
        tasks.append(asyncio.create_task(loop(), name=f"notifications-{name}"))  # type: ignore[arg-type]

    async def start() -> None:
        await hub.start()
        spawn("sender", dispatcher.run)
        spawn("heartbeat", dispatcher.keep_alive)
        spawn("outbox", outbox.run)
        spawn("ticker", tick)

    async def stop() -> None:
        await stop_tasks(tasks)
        await dispatcher.drain()
        with contextlib.suppress(Exception):
            if runtime.kafka_started:
                await outbox.drain()
        await hub.stop()
        await client.aclose()

    app = make_http_app(
        runtime,
        title="clinicflow notifications",
        description="Warns waiting patients of delays, calls back patients waiting outside, "
        "alerts nurses when a room is ready. Contact details live only here.",
        on_startup=[start],
        on_shutdown=[stop],
    )
    if settings.notifications_cors_origins:
        # the nurse station page (served by flow) subscribes to the alert stream
        app.add_middleware(CORSMiddleware, allow_origins=settings.notifications_cors_origins,
                           allow_methods=["GET"], allow_headers=["Authorization",
                                                                 "Last-Event-ID"])
    app.state.consumer = consumer
    app.state.dispatcher = dispatcher
    app.state.outbox = outbox
    app.state.store = store
    app.include_router(make_router(
        runtime, store, rules, hub, IdempotencyStore(runtime.redis, settings.redis_prefix),
        sms_available=bool(settings.sms_gateway_url),
        allow_log_channel=settings.env != "production"))
    return app
