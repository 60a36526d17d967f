"""The check-in service, wired: schedule import, arrivals, kiosk, cancel, no-shows, wait
lookups; the projection consumer of the floor and estimates topics; the no-show sweep.
Wiring only: the rules are in domain.py, the commands in desk.py, the keys in store.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from faststream import AckPolicy
from faststream.kafka import KafkaMessage

from services.checkin.api import LookupLimiter, make_router, rejected_schedule
from services.checkin.consumer import ProjectionConsumer, pause_after_error
from services.checkin.desk import CheckinDesk, DeskConfig, ScheduleRejected
from services.checkin.domain import CheckinRefused
from services.checkin.pages import make_pages_router, static_files
from services.checkin.store import CheckinStore
from shared import events as ev
from shared.idempotency import IdempotencyStore
from shared.kafka import dead_letter_topic, topic
from shared.logging import get_logger
from shared.metrics import EVENTS_PUBLISHED
from shared.service import ServiceRuntime, make_http_app, stop_tasks
from shared.settings import CheckinSettings
from shared.topics import ESTIMATES, FLOOR

log = get_logger("clinicflow.checkin")


class KafkaNotConnected(RuntimeError):
    pass


async def _raw_records(message: KafkaMessage) -> object:
    """Keep the batch as aiokafka records: the consumer decodes (and dead-letters) each."""
    return message.raw_message


def create_app(settings: CheckinSettings) -> FastAPI:
    """Build the checkin service; nothing connects until the app starts."""
    runtime = ServiceRuntime(settings, "checkin")
    store = CheckinStore(runtime.redis, settings.redis_prefix)
    zone = ZoneInfo(settings.checkin_timezone)
    floor_topic = topic(FLOOR, settings)
    estimates_topic = topic(ESTIMATES, settings)

    async def publish(events: Sequence[ev.Event]) -> list[BaseException | None]:
        """Every event on the floor topic keyed by its clinic, each awaited (acks=all)."""
        if not runtime.kafka_started:
            return [KafkaNotConnected("kafka is not connected yet")] * len(events)
        sent = await asyncio.gather(
            *(runtime.broker.publish(ev.encode(e), floor_topic, key=e.clinic_id.encode())
              for e in events), return_exceptions=True)
        outcomes: list[BaseException | None] = []
        for event, outcome in zip(events, sent, strict=True):
            if isinstance(outcome, BaseException):
                outcomes.append(outcome)
            else:
                EVENTS_PUBLISHED.labels("checkin", event.event_type).inc()
                outcomes.append(None)
        return outcomes

    desk = CheckinDesk(store, publish, DeskConfig(
        zone=zone,
        late_after=timedelta(minutes=settings.checkin_late_after_minutes),
        no_show_after=timedelta(minutes=settings.checkin_no_show_after_minutes),
        identity_secret=settings.checkin_identity_secret.get_secret_value().encode(),
    ))
    consumer = ProjectionConsumer(runtime, store, estimates_topic=estimates_topic,
                                  dead_letter_topic=dead_letter_topic(settings), zone=zone)
    subscriber = runtime.broker.subscriber(
        floor_topic, estimates_topic,
        batch=True,
        group_id=settings.checkin_group_id,
        auto_offset_reset="earliest",
        # acked (committed) after the batch is in Redis; on an error the batch is sought
        # back and read again (what was applied is skipped by the stored offsets)
        ack_policy=AckPolicy.NACK_ON_ERROR,
        max_records=500,
        batch_timeout_ms=20,
        fetch_max_wait_ms=20,
        listener=consumer.listener(),
        decoder=_raw_records,
        title="checkin.floor-and-estimates",
        description="Which visits still wait, their ticket codes and flow's latest estimate "
                    "(for the kiosk and the status lookup); arrival and no-show marks.",
    )
    consumer.subscriber = subscriber

    @subscriber
    async def on_floor_and_estimates(records: list[object]) -> None:
        started = time.monotonic()
        try:
            await consumer.handle(records)
        except Exception as exc:
            log.warning("batch not applied; it will be read again", error=repr(exc))
            await pause_after_error(started)
            raise

    tasks: list[asyncio.Task[None]] = []

    async def sweep_regularly() -> None:
        while True:
            await asyncio.sleep(settings.checkin_no_show_check_seconds)
            if not runtime.kafka_started:
                continue
            try:
                await desk.sweep_no_shows(datetime.now(UTC))
            except Exception as exc:
                log.warning("no-show sweep failed; next one retries", error=repr(exc))

    async def start() -> None:
        tasks.append(asyncio.create_task(sweep_regularly(), name="checkin-no-shows"))

    async def stop() -> None:
        await stop_tasks(tasks)

    app = make_http_app(
        runtime,
        title="clinicflow checkin",
        description="Front desk and kiosk: the day's schedule (CSV, FHIR R4), arrivals with "
                    "ticket codes, cancellations, no-shows and the follow-up list, and where "
                    "a waiting patient is in line. Bearer tokens; every command takes an "
                    "Idempotency-Key.",
        on_startup=[start],
        on_shutdown=[stop],
    )

    @app.exception_handler(CheckinRefused)
    async def refused(_request: Request, exc: CheckinRefused) -> JSONResponse:
        return JSONResponse(status_code=exc.status, content={"detail": exc.detail})

    @app.exception_handler(ScheduleRejected)
    async def rejected(_request: Request, exc: ScheduleRejected) -> JSONResponse:
        return JSONResponse(status_code=422, content=rejected_schedule(exc))

    limiter = LookupLimiter(store, settings.checkin_lookup_rate_per_minute,
                            settings.checkin_lookup_misses_per_minute)
    app.include_router(make_router(desk, IdempotencyStore(runtime.redis, settings.redis_prefix),
                                   limiter))
    app.include_router(make_pages_router())
    app.mount("/static", static_files(), name="static")
    app.state.desk = desk
    app.state.store = store
    app.state.consumer = consumer
    return app
