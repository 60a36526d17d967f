"""The flow service, wired: floor projection, board API, SSE, screens. Wiring only."""

from __future__ import annotations

from fastapi import FastAPI

from services.flow.api import BoardHub, make_router
from services.flow.consumer import CONSUMER, FlowProjection
from services.flow.metrics import Labels
from services.flow.names import BoardNames
from services.flow.pages import make_pages_router, static_files
from services.flow.processor import floor_reader
from services.flow.store import FlowStore
from shared.clock import Clock
from shared.directory import REFRESH_SECONDS as NAMES_REFRESH_SECONDS
from shared.directory import directory_consumer
from shared.idempotency import IdempotencyStore
from shared.kafka import dead_letter_topic, session, topic
from shared.outbox import OutboxRelay
from shared.projection import ProjectionRunner
from shared.service import ServiceRuntime, make_http_app
from shared.settings import FlowSettings
from shared.topics import DIRECTORY, ESTIMATES, FLOOR, TOLD

# how often the dead letters checkpoints queued are published (what one instance queued,
# any instance relays)
DEAD_LETTER_RELAY_SECONDS = 1.0


def create_app(settings: FlowSettings, clock: Clock | None = None) -> FastAPI:
    """Build the flow service; nothing connects until the app starts. ``clock``: the
    time its adapters and periodic jobs read (the system clock when None)."""
    runtime = ServiceRuntime(settings, "flow", clock=clock)
    store = FlowStore(runtime.redis, settings.redis_prefix)
    floor_topic = topic(FLOOR, settings)

    floor = FlowProjection(
        store, runtime.send, runtime.clock,
        estimates_topic=topic(ESTIMATES, settings),
        publish_estimates=settings.flow_publish_estimates,
        told_topic=topic(TOLD, settings),  # the waiting-room screen's ranges, as told
        checkpoint_seconds=settings.flow_checkpoint_seconds,
        labels=Labels(settings.clinic_directory()),
    )
    runner = ProjectionRunner(
        runtime.broker, floor, floor_reader(floor_topic),
        service="flow", consumer=CONSUMER, topics=[floor_topic],
        group_id=settings.flow_group_id,
        max_records=settings.flow_batch_max,
        batch_timeout_ms=settings.flow_batch_timeout_ms,
        fetch_max_wait_ms=settings.flow_batch_timeout_ms,
        max_partition_fetch_bytes=4 * 1024 * 1024,
        **session(settings.flow_session_timeout_ms),
        title="flow.floor",
        description="Applies every floor event to the clinic's live state and estimates.",
    )
    floor.kafka = runner  # lag, and Kafka commits of the checkpoints the jobs below store
    dead_letters = OutboxRelay(store.outbox, runtime.send,
                               {"deadletter": dead_letter_topic(settings)}, service="flow",
                               clock=runtime.clock)
    runtime.every(settings.flow_tick_seconds, floor.refresh_boards, "board-refresh")
    # a burst followed by silence must not leave its tail out of the checkpoint
    runtime.every(settings.flow_checkpoint_seconds, floor.flush_when_idle, "idle-checkpoint")
    runtime.every(DEAD_LETTER_RELAY_SECONDS, dead_letters.tick, "dead-letter-relay")
    # the display names imports brought (clinicflow.directory.v1), flow's own copy
    names_runner, imported = directory_consumer(
        runtime.broker, runtime.redis, settings.redis_prefix, service="flow",
        topic=topic(DIRECTORY, settings), group_id=f"{settings.flow_group_id}-directory",
        outbox=store.outbox)
    runtime.every(NAMES_REFRESH_SECONDS, imported.refresh, "directory-names",
                  needs_kafka=False)

    hub = BoardHub(runtime, store, settings.flow_sse_max_total,
                   settings.flow_sse_max_per_credential)

    async def last_checkpoint() -> None:
        await hub.stop()
        if runtime.kafka_started:
            # dead letters it queues wait in Redis for the next relay (any flow instance)
            try:
                await floor.flush(runtime.clock.now())
            except Exception as exc:  # what was not stored is replayed after the restart
                runtime.log.warning("last checkpoint on shutdown failed", error=repr(exc))

    app = make_http_app(
        runtime,
        title="clinicflow flow",
        description="The floor: live clinic state, wait estimates, boards and staff commands.",
        on_startup=[hub.start],
        on_shutdown=[last_checkpoint],
    )
    app.state.projection = floor
    app.state.runner = runner
    app.state.names_runner = names_runner
    app.state.imported_names = imported
    app.include_router(make_router(runtime, store, hub, floor_topic,
                                   IdempotencyStore(runtime.redis, settings.redis_prefix),
                                   clinics=settings.clinic_directory(),
                                   names=BoardNames(settings.clinic_directory(), imported,
                                                    lambda: imported.changes),
                                   imported=imported))
    app.include_router(make_pages_router(settings))
    app.mount("/static", static_files(), name="static")
    return app
