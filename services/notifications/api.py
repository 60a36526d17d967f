"""The notifications service's HTTP API: contacts, who has been told, nurse alerts.

Contact details are written and read here only by the front desk, and every
read is audited (an event on the audit topic: who, what, when; never the
value). Nothing else the API serves carries contact details.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from services.notifications import metrics as m
from services.notifications import records
from services.notifications.domain import Preferences, RuleBook, contact_expiry
from services.notifications.store import NotificationStore
from shared.auth import Principal, require_role
from shared.errors import NotFound, Rejected
from shared.idempotency import IdempotencyStore, fingerprint
from shared.logging import get_logger
from shared.refusals import REFUSALS
from shared.service import ServiceRuntime
from shared.sse import SseHub

log = get_logger("clinicflow.notifications.api")

_ID = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
ClinicId = Annotated[str, Path(pattern=_ID, examples=["north"])]
VisitId = Annotated[str, Path(pattern=_ID, examples=["v-20260302-017"])]
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=200)]

front_desk = require_role("front_desk")
staff = require_role("front_desk", "nurse", "manager")
nurses = require_role("nurse", "manager")
# the lobby screen sees ticket codes and what kind of message went out, nothing else
lobby = require_role("screen", "front_desk", "nurse", "manager")
TOLD_KINDS = ("delay_warning", "come_back_now", "ready_for_you")

_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]{2,}$")
_PHONE = re.compile(r"^\+[1-9][0-9]{7,14}$")


# ----------------------------------------------------------------- models


class ContactIn(BaseModel):
    """A patient's contact details and what they agreed to, entered by the front desk."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"channel": "sms", "address": "+15551234567", "consent": True, "wait_anywhere": True},
        {"channel": "email", "address": "patient@example.org", "consent": True},
    ]})

    channel: Literal["email", "sms", "log"] = Field(
        description="'log' is for development: messages go to the service log")
    address: str = Field("", max_length=254,
                         description="e-mail address, or phone number in E.164 (+15551234567)")
    consent: bool = Field(description="the patient agreed to be contacted today (must be true)")
    wait_anywhere: bool = Field(False, description="waits outside: 'come back now' notices")
    delay_updates: bool = Field(True, description="wants to hear of delays")

    @field_validator("consent")
    @classmethod
    def _consented(cls, value: bool) -> bool:
        if not value:
            raise ValueError("the patient must agree to be contacted (consent: true); "
                             "nothing was stored")
        return value

    @field_validator("address")
    @classmethod
    def _address_fits_channel(cls, value: str, info: ValidationInfo) -> str:
        channel = info.data.get("channel")
        value = value.strip()
        if channel == "email" and not _EMAIL.match(value):
            raise ValueError("not an e-mail address")
        if channel == "sms":
            value = re.sub(r"[\s().-]", "", value)
            if not _PHONE.match(value):
                raise ValueError("not a phone number in international form (+15551234567)")
        return value


class PreferencesPatch(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"wait_anywhere": True}]})

    wait_anywhere: bool | None = None
    delay_updates: bool | None = None


class ContactSaved(BaseModel):
    """What was kept (the address itself is not echoed)."""

    visit_id: str = Field(examples=["v-20260302-017"])
    channel: str = Field(examples=["sms"])
    address_hint: str = Field(examples=["+1•••••••567"])
    wait_anywhere: bool
    delay_updates: bool
    expires_at: datetime = Field(description="when the details are deleted")
    replayed: bool = False


class ContactView(BaseModel):
    """A contact as the front desk reads it back (this read is audited)."""

    visit_id: str
    channel: str
    address: str
    wait_anywhere: bool
    delay_updates: bool
    recorded_by: str
    recorded_at: datetime
    expires_at: datetime | None


class NotificationSummary(BaseModel):
    """One line of "who has been told": never a contact detail."""

    notification_id: str = Field(examples=["n-3f2a9c0d1e4b5a6978877665"])
    visit_id: str | None = Field(None, examples=["v-20260302-017"])
    ticket_code: str | None = Field(None, examples=["A-17"])
    kind: str = Field(examples=["delay_warning"])
    channel: str = Field(examples=["sms"])
    status: str = Field(examples=["sent"], description="pending, sending, retrying, sent, "
                        "failed, unconfirmed (may have been delivered), cancelled")
    created_at: datetime
    sent_at: datetime | None = None


class NotificationStatus(NotificationSummary):
    """A notification's delivery, in full (still no contact details)."""

    subject: str = ""
    text: str = Field("", examples=["Dr. Lee is running about 25 minutes behind; your new "
                                    "estimated wait is 30\u201340 minutes."])
    attempts: int
    next_attempt_at: datetime | None = None
    finished_at: datetime | None = None
    last_error: str = ""
    trigger_event_ids: list[str] = Field(default_factory=list)


def _summary(record: dict[str, str]) -> dict[str, Any]:
    return {
        "notification_id": record["notification_id"],
        "visit_id": record.get("visit_id") or None,
        "ticket_code": record.get("ticket_code") or None,
        "kind": record["kind"],
        "channel": record["channel"],
        "status": record["status"],
        "created_at": record["created_at"],
        "sent_at": record.get("sent_at") or None,
    }


def _status(record: dict[str, str]) -> NotificationStatus:
    next_at = record.get("next_attempt_at")
    waiting = record["status"] in ("pending", "retrying")
    return NotificationStatus(
        **_summary(record),
        subject=record.get("subject", ""),
        text=record.get("text", ""),
        attempts=int(record.get("attempts", "0")),
        next_attempt_at=datetime.fromtimestamp(float(next_at), UTC) if next_at and waiting
        else None,
        finished_at=record.get("finished_at") or None,
        last_error=record.get("last_error", ""),
        trigger_event_ids=orjson.loads(record.get("trigger_ids", "[]")),
    )


def address_hint(address: str) -> str:
    """Enough to confirm with the patient, not enough to contact them."""
    if "@" in address:
        local, _, domain = address.partition("@")
        return f"{local[:1]}•••@{domain}"
    if len(address) > 4:
        return address[:2] + "•" * (len(address) - 5) + address[-3:]
    return "•••"


# -------------------------------------------------------------- alert hub


class AlertHub(SseHub):
    """Alert changes fanned out to nurse stations by clinic: a station that falls 256
    changes behind has its stream ended, reconnects and gets a fresh list; 503 past
    ``max_total``."""

    def __init__(self, runtime: ServiceRuntime, store: NotificationStore, max_total: int) -> None:
        super().__init__(runtime, name="notifications-alert-hub", pattern=store.alerts_pattern,
                         clinic_of_channel=store.clinic_of_channel,
                         gauge=m.ALERT_STREAM_CLIENTS, max_total=max_total, queue_size=256,
                         when_full="resync",
                         busy_detail="too many live alert streams; try again shortly")


# ----------------------------------------------------------------- routes


def make_router(runtime: ServiceRuntime, store: NotificationStore, rules: RuleBook,
                hub: AlertHub, idempotency: IdempotencyStore, *, sms_available: bool,
                allow_log_channel: bool) -> APIRouter:
    router = APIRouter(responses=REFUSALS)

    async def idempotent(clinic_id: str, key: str | None, request: Request,
                         action: Any) -> tuple[dict[str, Any], bool]:
        if key is None:
            _status_code, body = await action()
            return body, False
        _status_code, body, replayed = await idempotency.run(
            f"notifications:{clinic_id}", key,
            fingerprint(request.method, request.url.path, await request.body()), action)
        return body, replayed

    # ---------------------------------------------------------- contacts

    @router.put("/clinics/{clinic_id}/visits/{visit_id}/contact", tags=["contacts"],
                summary="Record a patient's contact details and consent (kept for the day)",
                response_model=ContactSaved)
    async def put_contact(clinic_id: ClinicId, visit_id: VisitId, body: ContactIn,
                          request: Request, idempotency_key: IdempotencyKey = None,
                          principal: Principal = Depends(front_desk)) -> ContactSaved:
        principal.require_clinic(clinic_id)
        if body.channel == "sms" and not sms_available:
            raise Rejected("channel: SMS is not available here (no gateway configured); "
                           "use e-mail")
        if body.channel == "log" and not allow_log_channel:
            raise Rejected("channel: the log channel is for development only")

        async def action() -> tuple[int, Any]:
            now = runtime.clock.now()
            expires = contact_expiry(now, rules.for_clinic(clinic_id).timezone)
            preferences = Preferences(channel=body.channel, delay_updates=body.delay_updates,
                                      wait_anywhere=body.wait_anywhere)
            await store.save_contact(
                clinic_id, visit_id, channel=body.channel, address=body.address,
                preferences=preferences, recorded_by=principal.name, recorded_at=now,
                expires_at=expires,
                audit=records.contact_recorded(clinic_id, visit_id, by=principal.name,
                                               channel=body.channel, at=now,
                                               expires_at=expires))
            log.info("contact recorded", clinic=clinic_id, visit_id=visit_id,
                     channel=body.channel, by=principal.name)
            return 200, ContactSaved(
                visit_id=visit_id, channel=body.channel,
                address_hint=address_hint(body.address) if body.address else "",
                wait_anywhere=body.wait_anywhere, delay_updates=body.delay_updates,
                expires_at=expires).model_dump(mode="json")

        answer, replayed = await idempotent(clinic_id, idempotency_key, request, action)
        return ContactSaved(**{**answer, "replayed": replayed})

    @router.get("/clinics/{clinic_id}/visits/{visit_id}/contact", tags=["contacts"],
                summary="Read a patient's contact details back (audited)",
                response_model=ContactView)
    async def get_contact(clinic_id: ClinicId, visit_id: VisitId,
                          principal: Principal = Depends(front_desk)) -> ContactView:
        principal.require_clinic(clinic_id)
        contact = await store.read_contact(
            clinic_id, visit_id,
            records.contact_read(clinic_id, visit_id, reader=principal.name,
                                 role=principal.role, purpose="front_desk_view",
                                 at=runtime.clock.now()))
        if contact is None:
            raise NotFound(f"no contact details for visit {visit_id} at clinic {clinic_id} "
                           "(never given, erased, or expired)")
        preference = await store.preference(clinic_id, visit_id) or Preferences()
        expires = await store.contact_expires_at(clinic_id, visit_id)
        return ContactView(
            visit_id=visit_id, channel=contact["channel"], address=contact["address"],
            wait_anywhere=preference.wait_anywhere, delay_updates=preference.delay_updates,
            recorded_by=contact["recorded_by"], recorded_at=contact["recorded_at"],
            expires_at=datetime.fromtimestamp(expires, UTC) if expires else None)

    @router.patch("/clinics/{clinic_id}/visits/{visit_id}/contact", tags=["contacts"],
                  summary="Change what a patient wants to hear (waiting outside, delays)",
                  response_model=ContactSaved)
    async def patch_contact(clinic_id: ClinicId, visit_id: VisitId, body: PreferencesPatch,
                            request: Request, idempotency_key: IdempotencyKey = None,
                            principal: Principal = Depends(front_desk)) -> ContactSaved:
        principal.require_clinic(clinic_id)

        async def action() -> tuple[int, Any]:
            preference = await store.preference(clinic_id, visit_id)
            expires = await store.contact_expires_at(clinic_id, visit_id)
            if preference is None or not preference.reachable or expires is None:
                raise NotFound(f"no contact details for visit {visit_id}: record them "
                               "first (PUT)")
            updated = Preferences(
                channel=preference.channel,
                delay_updates=preference.delay_updates if body.delay_updates is None
                else body.delay_updates,
                wait_anywhere=preference.wait_anywhere if body.wait_anywhere is None
                else body.wait_anywhere)
            await store.set_preference(clinic_id, visit_id, updated)
            assert updated.channel is not None
            return 200, ContactSaved(
                visit_id=visit_id, channel=updated.channel, address_hint="",
                wait_anywhere=updated.wait_anywhere, delay_updates=updated.delay_updates,
                expires_at=datetime.fromtimestamp(expires, UTC)).model_dump(mode="json")

        answer, replayed = await idempotent(clinic_id, idempotency_key, request, action)
        return ContactSaved(**{**answer, "replayed": replayed})

    @router.delete("/clinics/{clinic_id}/visits/{visit_id}/contact", tags=["contacts"],
                   status_code=204, response_class=Response,
                   summary="The patient opts out: erase their details, tell them nothing more")
    async def delete_contact(clinic_id: ClinicId, visit_id: VisitId,
                             principal: Principal = Depends(front_desk)) -> Response:
        principal.require_clinic(clinic_id)
        now = runtime.clock.now()
        await store.erase_contact(
            clinic_id, visit_id,
            expires_at=contact_expiry(now, rules.for_clinic(clinic_id).timezone),
            audit=records.contact_erased(clinic_id, visit_id, by=principal.name, at=now))
        log.info("contact erased", clinic=clinic_id, visit_id=visit_id, by=principal.name)
        return Response(status_code=204)

    # ------------------------------------------------------ notifications

    @router.get("/clinics/{clinic_id}/notifications", tags=["notifications"],
                summary="Who has been told what, newest first (no contact details)")
    async def list_notifications(
        clinic_id: ClinicId,
        kind: Annotated[str | None, Query(examples=["come_back_now"])] = None,
        since: Annotated[datetime | None, Query(description="only newer than this")] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
        principal: Principal = Depends(staff),
    ) -> dict[str, Any]:
        principal.require_clinic(clinic_id)
        found = await store.records(clinic_id, since=since.timestamp() if since else 0,
                                    limit=limit if kind is None else 500)
        items = [NotificationSummary(**_summary(r)) for r in found
                 if kind is None or r["kind"] == kind][:limit]
        return {"clinic_id": clinic_id, "notifications": [i.model_dump(mode="json")
                                                          for i in items]}

    @router.get("/clinics/{clinic_id}/notifications/{notification_id}", tags=["notifications"],
                summary="One notification's delivery status", response_model=NotificationStatus)
    async def notification_status(
        clinic_id: ClinicId,
        notification_id: Annotated[str, Path(pattern=r"^[a-z]-[0-9a-f]{24}$",
                                             examples=["n-3f2a9c0d1e4b5a6978877665"])],
        principal: Principal = Depends(staff),
    ) -> NotificationStatus:
        principal.require_clinic(clinic_id)
        record = await store.record(notification_id)
        if record is None or record.get("clinic_id") != clinic_id:
            raise NotFound(f"no notification {notification_id} at clinic {clinic_id}")
        return _status(record)

    # ------------------------------------------------------------- alerts

    @router.get("/clinics/{clinic_id}/told", tags=["notifications"],
                summary="Which tickets have been told what today (for the lobby screen)")
    async def told(clinic_id: ClinicId,
                   principal: Principal = Depends(lobby)) -> dict[str, Any]:
        """The latest message each ticket was sent (delivered or on its way), by ticket
        code: no visit id, no channel, no contact detail, no text."""
        principal.require_clinic(clinic_id)
        latest: dict[str, dict[str, Any]] = {}
        for record in await store.records(clinic_id, since=0, limit=500):  # newest first
            ticket = record.get("ticket_code")
            if (not ticket or ticket in latest or record["kind"] not in TOLD_KINDS
                    or record["status"] in ("failed", "cancelled")):
                continue
            latest[ticket] = {"ticket_code": ticket, "kind": record["kind"],
                              "at": record.get("sent_at") or record["created_at"]}
        return {"clinic_id": clinic_id, "told": list(latest.values())}

    @router.get("/clinics/{clinic_id}/alerts", tags=["nurse alerts"],
                summary="Room-ready alerts standing now")
    async def alerts(clinic_id: ClinicId,
                     principal: Principal = Depends(nurses)) -> dict[str, Any]:
        principal.require_clinic(clinic_id)
        return {"clinic_id": clinic_id, "alerts": await store.alerts(clinic_id)}

    @router.get("/clinics/{clinic_id}/alerts/stream", tags=["nurse alerts"],
                summary="Server-Sent Events: room-ready alerts raised and withdrawn, live",
                response_class=StreamingResponse,
                description="First `event: alerts` (everything standing now), then "
                "`event: alert.raised` and `event: alert.withdrawn` (`data.reason`) as they "
                "happen, keyed by `alert_id`. `?access_token=` works for EventSource.")
    async def alert_stream(clinic_id: ClinicId, request: Request,
                           principal: Principal = Depends(nurses)) -> StreamingResponse:
        principal.require_clinic(clinic_id)

        async def first() -> bytes:
            standing = await store.alerts(clinic_id)
            return _sse("alerts", {"clinic_id": clinic_id, "alerts": standing})

        def render(raw: bytes) -> bytes:
            change = orjson.loads(raw)
            alert = change["alert"]
            if change["type"] == "raised":
                return _sse("alert.raised", alert, alert["alert_id"])
            return _sse("alert.withdrawn", {**alert, "reason": change["reason"]})

        return hub.stream(clinic_id, principal.name, request, first=first, render=render)

    # -------------------------------------------------------------- other

    @router.get("/clinics/{clinic_id}/estimates", tags=["estimates"],
                summary="The latest wait estimate flow published for each visit today")
    async def estimates(clinic_id: ClinicId,
                        principal: Principal = Depends(staff)) -> dict[str, Any]:
        principal.require_clinic(clinic_id)
        return {"clinic_id": clinic_id, "estimates": await store.estimates(clinic_id)}

    @router.get("/clinics/{clinic_id}/rules", tags=["rules"],
                summary="The notification rules in force at a clinic")
    async def clinic_rules(clinic_id: ClinicId,
                           principal: Principal = Depends(staff)) -> dict[str, Any]:
        principal.require_clinic(clinic_id)
        return {"clinic_id": clinic_id, **rules.for_clinic(clinic_id).model_dump()}

    return router


def _sse(event: str, data: dict[str, Any], event_id: str | None = None) -> bytes:
    head = f"event: {event}\n".encode()
    if event_id:
        head += f"id: {event_id}\n".encode()
    return head + b"data: " + orjson.dumps(data) + b"\n\n"
