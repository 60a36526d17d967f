"""The notifications service, thin for now: it follows the wait estimates flow
publishes, so that later rules (delay warnings, "come back now" notices, nurse
alerts) have them at hand. Wiring only."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Depends, FastAPI
from faststream import AckPolicy

from shared import events as ev
from shared.auth import Principal, require_role
from shared.kafka import topic
from shared.metrics import EVENTS_CONSUMED
from shared.service import ServiceRuntime, make_http_app
from shared.settings import NotificationsSettings
from shared.topics import ESTIMATES


def create_app(settings: NotificationsSettings) -> FastAPI:
    runtime = ServiceRuntime(settings, "notifications")
    prefix = f"{settings.redis_prefix}:notifications"

    @runtime.broker.subscriber(
        topic(ESTIMATES, settings),
        group_id=settings.notifications_group_id,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.ACK,
        decoder=_raw,
        title="notifications.estimates",
    )
    async def on_wait_estimated(raw: bytes) -> None:
        try:
            event = ev.decode(raw)
        except ev.InvalidEvent:
            EVENTS_CONSUMED.labels("notifications", "invalid").inc()
            return
        if isinstance(event.payload, ev.WaitEstimated):
            key = f"{prefix}:estimate:{event.clinic_id}"
            await runtime.redis.hset(
                key, event.payload.visit_id, orjson.dumps(event.payload.model_dump(mode="json"))
            )
            await runtime.redis.expire(key, 24 * 3600)
        EVENTS_CONSUMED.labels("notifications", "applied").inc()

    app = make_http_app(
        runtime,
        title="clinicflow notifications",
        description="Warns waiting patients of delays; alerts nurses.",
    )

    @app.get(
        "/clinics/{clinic_id}/estimates",
        tags=["estimates"],
        summary="The latest wait estimate flow published for each waiting visit",
    )
    async def estimates(
        clinic_id: str,
        principal: Principal = Depends(require_role("front_desk", "nurse", "manager")),
    ) -> dict[str, Any]:
        principal.require_clinic(clinic_id)
        stored = await runtime.redis.hgetall(f"{prefix}:estimate:{clinic_id}")
        return {
            "clinic_id": clinic_id,
            "estimates": sorted(
                (orjson.loads(v) for v in stored.values()), key=lambda e: e["position"]
            ),
        }

    return app


async def _raw(message: Any) -> bytes:
    body: bytes = message.body
    return body
