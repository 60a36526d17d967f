"""The billing service, thin for now: the checkout desk publishes the checkout that
ends a visit on every screen. Wiring only."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Path, Request
from pydantic import BaseModel, Field

from shared import events as ev
from shared.auth import Principal, require_role
from shared.idempotency import IdempotencyStore, fingerprint
from shared.kafka import topic
from shared.metrics import EVENTS_PUBLISHED
from shared.service import ServiceRuntime, make_http_app
from shared.settings import BillingSettings
from shared.topics import FLOOR

_ID = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"


class Checkout(BaseModel):
    cpt_codes: list[Annotated[str, Field(pattern=r"^[0-9]{4}[0-9A-Z]$")]] = Field(
        default_factory=list, max_length=30, examples=[["99213"]]
    )
    icd10_codes: list[
        Annotated[str, Field(pattern=r"^[A-TV-Z][0-9][0-9A-Z](\.[0-9A-Z]{1,4})?$")]
    ] = Field(default_factory=list, max_length=30, examples=[["J06.9"]])


def create_app(settings: BillingSettings) -> FastAPI:
    runtime = ServiceRuntime(settings, "billing")
    floor_topic = topic(FLOOR, settings)
    idempotency = IdempotencyStore(runtime.redis, settings.redis_prefix)
    app = make_http_app(
        runtime,
        title="clinicflow billing",
        description="Checkout desk: ends the visit and prices it.",
    )

    @app.post(
        "/clinics/{clinic_id}/visits/{visit_id}/checkout",
        status_code=202,
        tags=["checkout"],
        summary="Check a patient out (ends the visit everywhere)",
    )
    async def checkout(
        clinic_id: Annotated[str, Path(pattern=_ID)],
        visit_id: Annotated[str, Path(pattern=_ID)],
        body: Checkout,
        request: Request,
        idempotency_key: Annotated[
            str | None, Header(alias="Idempotency-Key", max_length=200)
        ] = None,
        principal: Principal = Depends(require_role("billing", "front_desk", "manager")),
    ) -> Any:
        principal.require_clinic(clinic_id)
        raw = await request.body()

        async def publish() -> tuple[int, Any]:
            event = ev.make_event(
                ev.PatientCheckedOut(
                    visit_id=visit_id, cpt_codes=body.cpt_codes, icd10_codes=body.icd10_codes
                ),
                clinic_id=clinic_id,
                source="billing",
                correlation_id=visit_id,
            )
            await runtime.broker.publish(ev.encode(event), floor_topic, key=clinic_id.encode())
            EVENTS_PUBLISHED.labels("billing", event.event_type).inc()
            return 202, {"event_id": event.envelope.event_id, "visit_id": visit_id}

        if idempotency_key is None:
            return (await publish())[1]
        _status, answer, replayed = await idempotency.run(
            f"billing:{clinic_id}",
            idempotency_key,
            fingerprint(request.method, request.url.path, raw),
            publish,
        )
        return {**answer, "replayed": replayed}

    return app
