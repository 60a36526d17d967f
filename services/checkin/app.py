"""The check-in service, wired: schedule import, arrivals, kiosk, cancel, no-shows, wait
lookups, the clinic's names; the projection of the floor and estimates topics (the
shared runner); the dead-letter outbox relay; the no-show sweep; the cancel's barrier.
Wiring only: the rules are in domain.py, the commands in desk.py, the projection's plan
in projection.py, the keys in store.py, the routes in api.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import timedelta

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from services.checkin.api import make_router
from services.checkin.desk import CheckinDesk, DeskConfig, ScheduleRejected
from services.checkin.domain import visit_type_table
from services.checkin.ehr import EhrCommands
from services.checkin.feeds import Feeds
from services.checkin.fhir_api import make_fhir_router
from services.checkin.hl7.feed import Hl7Feed
from services.checkin.hl7.mllp import MllpServer
from services.checkin.limiter import LookupLimiter
from services.checkin.pages import make_pages_router, static_files
from services.checkin.projection import (
    CheckinChanges,
    ProjectionState,
    checkin_reader,
    plan_visits,
)
from services.checkin.schemas import rejected_schedule
from services.checkin.store import CheckinStore, VisitProjectionStore
from shared import events as ev
from shared.barrier import ProjectionBarrier
from shared.clock import Clock
from shared.directory import OUTBOX_ROLE as DIRECTORY_ROLE
from shared.idempotency import IdempotencyStore
from shared.kafka import dead_letter_topic, session, topic
from shared.logging import get_logger
from shared.metrics import EVENTS_PUBLISHED
from shared.outbox import Outbox, OutboxRelay
from shared.projection import Inbound, Planned, ProjectionRunner, RedisProjection
from shared.service import ServiceRuntime, make_http_app, stop_tasks
from shared.settings import CheckinSettings
from shared.told import ToldLog
from shared.topics import DIRECTORY, ESTIMATES, FLOOR, TOLD
from shared.visit_end import VisitEnds

# the relay publishes dead letters as soon as a batch queued some; this is how often it
# looks anyway (entries left by an instance that stopped before relaying them)
OUTBOX_CHECK_SECONDS = 5.0

log = get_logger("clinicflow.checkin")


class KafkaNotConnected(RuntimeError):
    pass


def create_app(settings: CheckinSettings, clock: Clock | None = None) -> FastAPI:
    """Build the checkin service; nothing connects until the app starts. ``clock``
    (default: the system's) gives every command, lookup and no-show sweep its time."""
    runtime = ServiceRuntime(settings, "checkin", clock=clock)
    store = CheckinStore(runtime.redis, settings.redis_prefix)
    clinics = settings.clinic_directory()  # each clinic's zone: its days, its clock
    warning = settings.zone_warning()
    if warning is not None:
        log.warning("clinic zones disagree between services", detail=warning)
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

    # the projection: dead letters queued in the batch's transaction, relayed to Kafka
    outbox = Outbox(runtime.redis, store.outbox_prefix)

    relay = OutboxRelay(outbox, runtime.send, {"deadletter": dead_letter_topic(settings),
                                              "told": topic(TOLD, settings),
                                              DIRECTORY_ROLE: topic(DIRECTORY, settings)},
                        service="checkin", clock=runtime.clock)
    # the display names imports and feeds bring, published when new or changed
    store.names_queued = relay.kick.set
    # the ranges the kiosk and the status lookup tell, through the same outbox
    told = ToldLog(runtime.redis, settings.redis_prefix, outbox, source="checkin",
                   queued=relay.kick.set)

    def plan(records: list[Inbound], state: ProjectionState) -> Planned[CheckinChanges]:
        return plan_visits(records, state, clinics.zone)

    projection = RedisProjection(runtime.redis, settings.redis_prefix, consumer="checkin",
                                 store=VisitProjectionStore(store), plan=plan, outbox=outbox)
    runner = ProjectionRunner(
        runtime.broker, projection, checkin_reader(floor_topic, estimates_topic),
        service="checkin", consumer="checkin", topics=[floor_topic, estimates_topic],
        group_id=settings.checkin_group_id, on_dead_letters=relay.kick.set,
        **session(settings.checkin_session_timeout_ms),
        title="checkin.floor-and-estimates",
        description="Which visits still wait, their ticket codes and flow's latest estimate "
                    "(for the kiosk and the status lookup); arrival and no-show marks.")

    barrier = ProjectionBarrier(lambda: runner.kafka, projection.offsets, floor_topic,
                                what="checkin's floor consumer",
                                timeout=settings.checkin_barrier_timeout_seconds)
    desk = CheckinDesk(store, publish, DeskConfig(
        clinics=clinics,
        late_after=timedelta(minutes=settings.checkin_late_after_minutes),
        no_show_after=timedelta(minutes=settings.checkin_no_show_after_minutes),
        identity_secret=settings.checkin_identity_secret.get_secret_value().encode(),
        visit_types=visit_type_table(settings.checkin_visit_type_map()),
    ), barrier=barrier.caught_up, visit_ends=VisitEnds(runtime.redis, settings.redis_prefix))
    runtime.every(settings.checkin_no_show_check_seconds, desk.sweep_no_shows, "no-show-sweep")

    # the EHR feeds: HL7 v2 over MLLP (CLINICFLOW_CHECKIN_HL7_PORT; 0: none), into the
    # desk's own commands
    feeds = Feeds.parse(settings.checkin_feeds)
    ehr = EhrCommands(desk, store)
    hl7_feed = Hl7Feed(ehr, feeds, runtime.clock,
                       max_bytes=settings.checkin_hl7_max_message_bytes)
    mllp = MllpServer(hl7_feed.answer, settings.checkin_hl7_host, settings.checkin_hl7_port,
                      settings.checkin_hl7_max_message_bytes) \
        if settings.checkin_hl7_port else None

    tasks: list[asyncio.Task[None]] = []

    async def start() -> None:
        tasks.append(asyncio.create_task(
            relay.run(OUTBOX_CHECK_SECONDS, lambda: runtime.kafka_started),
            name="checkin-outbox-relay"))
        if mllp is not None:
            await mllp.start()

    async def stop() -> None:
        if mllp is not None:
            await mllp.stop()
        await relay.stop(tasks)
        await stop_tasks(tasks)
        await relay.drain_at_shutdown(runtime.kafka_started)

    app = make_http_app(
        runtime,
        title="clinicflow checkin",
        description="Front desk and kiosk: the day's schedule (CSV, FHIR R4), arrivals with "
                    "ticket codes, cancellations, no-shows and the follow-up list, and where "
                    "a waiting patient is in line, each clinic's providers and rooms by name. "
                    "Every day and time is the clinic's own (CLINICFLOW_CLINICS). Bearer "
                    "tokens. Retries never duplicate: a walk-in requires an Idempotency-Key "
                    "(428 without one); the other commands are deduplicated on what they "
                    "name (appointment, visit) and take the key to replay their answer.",
        on_startup=[start],
        on_shutdown=[stop],
    )

    @app.exception_handler(ScheduleRejected)
    async def rejected(_request: Request, exc: ScheduleRejected) -> JSONResponse:
        # every bad row listed beside the refusal (the shared handler gives detail only)
        return JSONResponse(status_code=422, content=rejected_schedule(exc))

    limiter = LookupLimiter(store, settings.checkin_lookup_rate_per_minute,
                            settings.checkin_lookup_misses_per_minute)
    app.include_router(make_router(desk, IdempotencyStore(runtime.redis, settings.redis_prefix),
                                   limiter, runtime.clock, told, feeds))
    app.include_router(make_fhir_router(desk, ehr, store, feeds, runtime.clock,
                                        IdempotencyStore(runtime.redis, settings.redis_prefix)))
    app.include_router(make_pages_router(clinics))
    app.mount("/static", static_files(), name="static")
    app.state.desk = desk
    app.state.store = store
    app.state.runner = runner
    app.state.relay = relay
    app.state.hl7_feed = hl7_feed
    app.state.mllp = mllp
    return app
