"""The notifications service, wired: floor + estimates consumer and its ticker, sender,
outbox relay, API. Wiring only."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import httpx
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from services.notifications.accuracy import AccuracyPlan
from services.notifications.accuracy_api import make_accuracy_router
from services.notifications.accuracy_store import AccuracyProjection
from services.notifications.api import AlertHub, make_router
from services.notifications.channels import (
    Channel,
    EmailChannel,
    LogChannel,
    PagingWebhook,
    SmsGateway,
)
from services.notifications.complaints_api import make_complaints_router
from services.notifications.complaints_store import ComplaintStore
from services.notifications.consumer import NotifierProjection
from services.notifications.delivery import (
    HEARTBEAT_EVERY_SECONDS,
    SEND_EVERY_SECONDS,
    NotificationSender,
)
from services.notifications.domain import RuleBook
from services.notifications.domain.rules import hold_span
from services.notifications.feedback_api import make_feedback_link, make_feedback_router
from services.notifications.feedback_store import FeedbackStore
from services.notifications.names import NameBook
from services.notifications.pages import make_pages_router, static_files
from services.notifications.plan import NotificationChanges
from services.notifications.satisfaction import SatisfactionPlan
from services.notifications.satisfaction_api import make_satisfaction_router
from services.notifications.satisfaction_store import SatisfactionProjection
from services.notifications.store import NotificationStore
from shared.barrier import ProjectionBarrier
from shared.clock import Clock
from shared.directory import REFRESH_SECONDS as NAMES_REFRESH_SECONDS
from shared.directory import directory_consumer
from shared.idempotency import IdempotencyStore
from shared.kafka import dead_letter_topic, session, topic
from shared.outbox import OutboxRelay
from shared.service import ServiceRuntime, make_http_app, stop_tasks
from shared.settings import NotificationsSettings
from shared.topics import AUDIT, DIRECTORY, ESTIMATES, FLOOR, NOTIFICATIONS, TOLD

OUTBOX_EVERY_SECONDS = 0.5
ACCURACY_GAUGES_EVERY_SECONDS = 60  # today's accuracy gauges, also across midnight
COMPLAINTS_EVERY_SECONDS = 30  # complaints not acknowledged in time are escalated


def build_channels(settings: NotificationsSettings,
                   client: httpx.AsyncClient) -> dict[str, Channel]:
    """The channels this deployment can use: e-mail with a mail server, SMS with a gateway,
    paging with a webhook (each only when configured), the log in development."""
    timeout = settings.notifications_send_timeout_seconds
    channels: dict[str, Channel] = {}
    if settings.smtp_host:
        channels["email"] = EmailChannel(
            host=settings.smtp_host, port=settings.smtp_port, sender=settings.smtp_sender,
            timeout=timeout, username=settings.smtp_username,
            password=settings.smtp_password.get_secret_value() if settings.smtp_password
            else None, starttls=settings.smtp_starttls)
    if settings.env != "production":
        channels["log"] = LogChannel()
    if settings.sms_gateway_url:
        channels["sms"] = SmsGateway(url=settings.sms_gateway_url,
                                     secret=settings.sms_hmac_secret.get_secret_value(),
                                     client=client, timeout=timeout)
    if settings.paging_webhook_url:
        channels["webhook"] = PagingWebhook(url=settings.paging_webhook_url,
                                            secret=settings.paging_hmac_secret.get_secret_value(),
                                            client=client, timeout=timeout)
    return channels


def create_app(settings: NotificationsSettings, clock: Clock | None = None) -> FastAPI:
    """Build the notifications service; nothing connects until the app starts. ``clock``
    is the time every part reads (the system's by default; tests pass their own)."""
    try:
        rules = RuleBook.parse(json.loads(settings.notifications_rules))
    except ValueError as exc:
        raise ValueError(f"CLINICFLOW_NOTIFICATIONS_RULES: {exc}") from None
    names = NameBook.of(settings, rules)
    runtime = ServiceRuntime(settings, "notifications", clock=clock)
    store = NotificationStore(runtime.redis, settings.redis_prefix)
    notifications_topic = topic(NOTIFICATIONS, settings)
    floor_topic = topic(FLOOR, settings)
    client = httpx.AsyncClient()
    channels = build_channels(settings, client)

    relay = OutboxRelay(store.outbox, runtime.send, {
        "notifications": notifications_topic,
        "audit": topic(AUDIT, settings),
        "told": topic(TOLD, settings),
        "deadletter": dead_letter_topic(settings),
    }, service="notifications", clock=runtime.clock)
    sender = NotificationSender(
        store, channels, clock=runtime.clock, names=names,
        notifications_topic=notifications_topic,
        concurrency=settings.notifications_send_concurrency,
        send_timeout=settings.notifications_send_timeout_seconds,
        max_attempts=settings.notifications_max_attempts,
        retry_base=settings.notifications_retry_base_seconds,
        retry_max=settings.notifications_retry_max_seconds,
        on_settled=relay.kick.set,
        # after checkout: the feedback form's signed, expiring link (feedback_api.py)
        feedback_link=make_feedback_link(
            settings.notifications_feedback_secret.get_secret_value(),
            settings.notifications_public_url,
            timedelta(hours=settings.notifications_feedback_link_hours), runtime.clock),
    )

    async def stored(changes: NotificationChanges) -> None:
        # what a batch or tick decided goes out now, not at the next tick
        sender.send(n.notification_id for n in changes.notifications)
        if changes.outbox:
            relay.kick.set()

    notifier = NotifierProjection(
        runtime.broker, store, rules, runtime.clock, names=names, prefix=settings.redis_prefix,
        floor_topic=floor_topic, estimates_topic=topic(ESTIMATES, settings),
        group_id=settings.notifications_group_id,
        paging=bool(settings.paging_webhook_url), on_stored=stored,
        on_dead_letters=relay.kick.set,
        # a deferred message keeps its contact while the sender's retries can still run
        hold=hold_span(settings.notifications_max_attempts,
                       settings.notifications_retry_base_seconds,
                       settings.notifications_retry_max_seconds,
                       settings.notifications_send_timeout_seconds),
        max_records=settings.notifications_batch_max,
        batch_timeout_ms=settings.notifications_batch_timeout_ms,
        fetch_max_wait_ms=settings.notifications_batch_timeout_ms,
        # how soon partitions of a dead instance move to a live one
        **session(settings.notifications_session_timeout_ms),
        # a clinic's floor and estimates partitions (same key, same count) stay together
        partition_assignment_strategy=(RangePartitionAssignor,),
        title="notifications.floor-and-estimates",
        description="Floor events and wait estimates -> patient messages and nurse alerts.",
    )
    # told records and the floor's roomings -> how right the told waits were
    accuracy = AccuracyProjection(
        runtime.broker, runtime.redis, store.outbox,
        AccuracyPlan(zone=lambda clinic_id: names(clinic_id).zone, floor_topic=floor_topic),
        runtime.clock, prefix=settings.redis_prefix, floor_topic=floor_topic,
        told_topic=topic(TOLD, settings),
        group_id=f"{settings.notifications_group_id}-accuracy",
        configured=names.configured, on_dead_letters=relay.kick.set,
        max_records=settings.notifications_batch_max,
        batch_timeout_ms=settings.notifications_batch_timeout_ms,
        fetch_max_wait_ms=settings.notifications_batch_timeout_ms,
        **session(settings.notifications_session_timeout_ms))
    # complaints (logged by staff, raised by low ratings) and waits x satisfaction
    complaints = ComplaintStore(
        runtime.redis, settings.redis_prefix, store.outbox,
        retention_days=settings.notifications_feedback_retention_days,
        zone=lambda clinic_id: names(clinic_id).zone, configured=names.configured)
    satisfaction = SatisfactionProjection(
        runtime.broker, runtime.redis, store.outbox,
        SatisfactionPlan(zone=lambda clinic_id: names(clinic_id).zone,
                         floor_topic=floor_topic),
        complaints, prefix=settings.redis_prefix, floor_topic=floor_topic,
        told_topic=topic(TOLD, settings), notifications_topic=notifications_topic,
        group_id=f"{settings.notifications_group_id}-satisfaction",
        on_stored=relay.kick.set, on_dead_letters=relay.kick.set,
        max_records=settings.notifications_batch_max,
        batch_timeout_ms=settings.notifications_batch_timeout_ms,
        fetch_max_wait_ms=settings.notifications_batch_timeout_ms,
        **session(settings.notifications_session_timeout_ms))
    runtime.every(settings.notifications_tick_seconds, notifier.tick, "notifier-tick")
    # tests tick it themselves (tick seconds 0), as the notifier's
    runtime.every(COMPLAINTS_EVERY_SECONDS if settings.notifications_tick_seconds > 0 else 0,
                  complaints.tick, "complaints-escalation", needs_kafka=False)
    runtime.every(ACCURACY_GAUGES_EVERY_SECONDS, accuracy.tick, "accuracy-gauges",
                  needs_kafka=False)
    runtime.every(SEND_EVERY_SECONDS, sender.tick, "sender", needs_kafka=False)
    # the display names imports brought (clinicflow.directory.v1), this service's own copy
    names_runner, imported = directory_consumer(
        runtime.broker, runtime.redis, settings.redis_prefix, service="notifications",
        topic=topic(DIRECTORY, settings),
        group_id=f"{settings.notifications_group_id}-directory", outbox=store.outbox,
        on_dead_letters=relay.kick.set)
    names.use_imported(imported)
    runtime.every(NAMES_REFRESH_SECONDS, imported.refresh, "directory-names",
                  needs_kafka=False)
    runtime.every(HEARTBEAT_EVERY_SECONDS, sender.heartbeat, "sender-heartbeat",
                  needs_kafka=False)

    hub = AlertHub(runtime, store, settings.notifications_sse_max_total)
    relaying: list[asyncio.Task[None]] = []

    async def start() -> None:
        await hub.start()
        relaying.append(asyncio.create_task(
            relay.run(OUTBOX_EVERY_SECONDS, ready=lambda: runtime.kafka_started),
            name="notifications-outbox"))

    async def stop() -> None:
        sender.close()
        await sender.drain()
        await relay.stop(relaying)
        await stop_tasks(relaying)
        await relay.drain_at_shutdown(runtime.kafka_started)  # what the last sends reported
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
    app.state.notifier = notifier
    app.state.accuracy = accuracy
    app.state.complaints = complaints
    app.state.satisfaction = satisfaction
    app.state.names_runner = names_runner
    app.state.imported_names = imported
    app.state.sender = sender
    app.state.outbox_relay = relay
    app.state.store = store
    satisfied = ProjectionBarrier(lambda: satisfaction.runner.kafka,
                                  satisfaction.projection.offsets, floor_topic,
                                  what="notifications (complaints)",
                                  timeout=settings.notifications_barrier_timeout_seconds)

    async def visit_known(clinic_id: str, visit_id: str) -> bool:
        # the satisfaction rows hold every visit that checked in, once read to now
        await satisfied.caught_up(clinic_id)
        return await satisfaction.store.known(clinic_id, visit_id)

    barrier = ProjectionBarrier(lambda: notifier.runner.kafka, notifier.projection.offsets,
                                floor_topic, what="notifications",
                                timeout=settings.notifications_barrier_timeout_seconds)
    app.include_router(make_router(
        runtime, store, rules, names, hub,
        IdempotencyStore(runtime.redis, settings.redis_prefix), barrier,
        channels=frozenset(channels) & {"email", "sms", "log"}))
    app.include_router(make_accuracy_router(accuracy.figures, accuracy.today))
    app.include_router(make_satisfaction_router(
        satisfaction.store, runtime.clock, lambda clinic_id: names(clinic_id).zone))
    feedback = FeedbackStore(runtime.redis, settings.redis_prefix, store.outbox,
                             retention_days=settings.notifications_feedback_retention_days)
    app.include_router(make_feedback_router(
        feedback, settings.notifications_feedback_secret.get_secret_value(), runtime.clock,
        names))
    app.include_router(make_complaints_router(
        complaints, IdempotencyStore(runtime.redis, settings.redis_prefix), runtime.clock,
        lambda clinic_id: names(clinic_id).zone, feedback_text=feedback.text,
        visit_known=visit_known))
    # the front desk's follow-up list (a page shell; its data from the routes above)
    app.include_router(make_pages_router(names))
    app.mount("/static", static_files(), name="static")
    return app
