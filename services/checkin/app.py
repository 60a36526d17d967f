"""The check-in service, wired: front-desk arrivals published to the floor topic.

Arrivals: ``POST /clinics/{clinic_id}/arrivals`` (front desk, kiosk) gives the
patient a short ticket code that screens show instead of a name, publishes
``patient.arrived`` keyed by clinic, and honours ``Idempotency-Key``: a retried
request is the same arrival, answered the same way.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Header, Path, Request
from pydantic import AwareDatetime, BaseModel, Field

from shared import events as ev
from shared.auth import Principal, require_role
from shared.idempotency import IdempotencyStore, fingerprint
from shared.kafka import topic
from shared.logging import get_logger
from shared.metrics import EVENTS_PUBLISHED
from shared.service import ServiceRuntime, make_http_app
from shared.settings import CheckinSettings
from shared.topics import FLOOR

log = get_logger("clinicflow.checkin")
_ID = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
ClinicId = Annotated[str, Path(pattern=_ID, examples=["north"])]
LATE_AFTER = timedelta(minutes=10)


class ArrivalRequest(BaseModel):
    """A patient checking in: scheduled (with their appointment) or a walk-in."""

    provider_id: str | None = Field(None, pattern=_ID, description="null: first available",
                                    examples=["dr-lee"])
    visit_type: str = Field(min_length=1, max_length=40, examples=["follow_up"])
    priority: Literal["routine", "urgent"] = "routine"
    appointment_id: str | None = Field(None, pattern=_ID, examples=["apt-20260302-0815-lee"])
    scheduled_at: AwareDatetime | None = Field(None, description="null for a walk-in",
                                               examples=["2026-03-02T08:15:00-05:00"])
    patient_ref: str | None = Field(None, pattern=_ID,
                                    description="pseudonymous patient reference",
                                    examples=["p-7f3a9c"])


class Arrival(BaseModel):
    """The arrival as published: the ticket code is what screens show."""

    visit_id: str = Field(examples=["v-3f2a9c1e"])
    ticket_code: str = Field(examples=["A-17"])
    event_id: str
    late: bool
    replayed: bool = False


def create_app(settings: CheckinSettings) -> FastAPI:
    runtime = ServiceRuntime(settings, "checkin")
    floor_topic = topic(FLOOR, settings)
    idempotency = IdempotencyStore(runtime.redis, settings.redis_prefix)
    front_door = require_role("front_desk", "kiosk")

    async def next_ticket(clinic_id: str) -> str:
        """A short per-clinic, per-day ticket code (A-1, A-2, ...)."""
        day = datetime.now(UTC).strftime("%Y%m%d")
        key = f"{settings.redis_prefix}:checkin:ticket:{clinic_id}:{day}"
        number = int(await runtime.redis.incr(key))
        if number == 1:
            await runtime.redis.expire(key, 2 * 24 * 3600)
        letter = "ABCDEFGHJKLMNPRSTUVWXYZ"[(number - 1) // 9999 % 23]
        return f"{letter}-{(number - 1) % 9999 + 1}"

    app = make_http_app(runtime, title="clinicflow checkin",
                        description="Front desk and kiosk: arrivals and the day's schedule.")

    @app.post("/clinics/{clinic_id}/arrivals", status_code=201, response_model=Arrival,
              tags=["arrivals"], summary="Check a patient in (scheduled or walk-in)")
    async def check_in(clinic_id: ClinicId, body: ArrivalRequest, request: Request,
                       idempotency_key: Annotated[str | None, Header(
                           alias="Idempotency-Key", max_length=200)] = None,
                       principal: Principal = Depends(front_door)) -> Any:
        principal.require_clinic(clinic_id)
        raw = await request.body()

        async def arrive() -> tuple[int, Any]:
            now = datetime.now(UTC)
            visit_id = f"v-{uuid.uuid4().hex[:12]}"
            late = body.scheduled_at is not None and now > body.scheduled_at + LATE_AFTER
            payload = ev.PatientArrived(
                visit_id=visit_id, ticket_code=await next_ticket(clinic_id),
                patient_ref=body.patient_ref, appointment_id=body.appointment_id,
                provider_id=body.provider_id, visit_type=body.visit_type,
                scheduled_at=body.scheduled_at, priority=body.priority, late=late,
            )
            event = ev.make_event(payload, clinic_id=clinic_id, source="checkin",
                                  occurred_at=now, correlation_id=visit_id)
            await runtime.broker.publish(ev.encode(event), floor_topic,
                                         key=clinic_id.encode())
            EVENTS_PUBLISHED.labels("checkin", event.event_type).inc()
            log.info("patient checked in", clinic=clinic_id, visit_id=visit_id,
                     ticket=payload.ticket_code, by=principal.name)
            return 201, {"visit_id": visit_id, "ticket_code": payload.ticket_code,
                         "event_id": event.envelope.event_id, "late": late}

        if idempotency_key is None:
            _status, answer = await arrive()
            return Arrival(**answer)
        _status, answer, replayed = await idempotency.run(
            f"checkin:{clinic_id}", idempotency_key,
            fingerprint(request.method, request.url.path, raw), arrive)
        return Arrival(**answer, replayed=replayed)

    return app
