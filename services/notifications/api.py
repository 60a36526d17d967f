"""The notifications service's HTTP API: contacts, who has been told, nurse alerts.

Contact details are written and read here only by the front desk, and every
read is audited (an event on the audit topic: who, what, when; never the
value). Nothing else the API serves carries contact details.

A contact command names a visit that must be on the clinic's floor as the notifier
knows it (an unknown visit, or another clinic's, is a 404; one that ended is a 409),
and a channel this deployment can send on (422 otherwise): a 2xx answer means the
patient can be told. Storing a contact is deduplicated on its natural key, the visit:
the same contact again changes nothing and says ``replayed``; an ``Idempotency-Key`` is
honoured when sent. Times in answers are on the clinic's clock; names are the clinic's
(``Names``), made when shown.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Body, Depends, Header, Path, Query, Request, Response
from fastapi.responses import StreamingResponse

from services.notifications import metrics as m
from services.notifications import records
from services.notifications.domain import Names, Preferences, RuleBook, contact_expiry
from services.notifications.schemas import (
    ALERTS_EXAMPLE,
    COMMON_ERRORS,
    CONTACT_EXAMPLES,
    CONTACT_SAVED_EXAMPLE,
    CONTACT_VIEW_EXAMPLE,
    ESTIMATES_EXAMPLE,
    ID_TEXT,
    LIST_EXAMPLE,
    NO_CONTACT,
    NOTIFICATION_ID_TEXT,
    PATCH_EXAMPLES,
    RULES_EXAMPLE,
    STATUS_EXAMPLE,
    STREAM_EXAMPLE,
    TOLD_EXAMPLE,
    TOLD_KINDS,
    UNKNOWN_VISIT,
    VISIT_ENDED,
    AlertsAnswer,
    AlertView,
    ContactIn,
    ContactSaved,
    ContactView,
    EstimateRow,
    EstimatesAnswer,
    NotificationList,
    NotificationStatus,
    NotificationSummary,
    PreferencesPatch,
    RulesAnswer,
    Told,
    ToldAnswer,
    answer,
)
from services.notifications.store import NotificationStore
from shared.auth import Principal, require_role
from shared.barrier import ProjectionBarrier
from shared.errors import Conflict, NotFound, Rejected
from shared.events_notifications import NotificationKind
from shared.idempotency import IdempotencyStore, fingerprint
from shared.logging import get_logger
from shared.service import ServiceRuntime
from shared.sse import SseHub

log = get_logger("clinicflow.notifications.api")

ClinicId = Annotated[str, Path(pattern=ID_TEXT, description="the clinic",
                               examples=["north"])]
VisitId = Annotated[str, Path(pattern=ID_TEXT, description="the visit (from the arrival at "
                              "checkin)", examples=["v-20260302-017"])]
IdempotencyKey = Annotated[str | None, Header(
    alias="Idempotency-Key", max_length=200, examples=["desk-2-v017-contact"],
    description="optional: the command is deduplicated on the visit it names (the same "
    "contact or preferences again change nothing and answer replayed: true); with a key, "
    "a retry gets the first answer again and the same key with another body is a 422")]

front_desk = require_role("front_desk")
staff = require_role("front_desk", "nurse", "manager")
nurses = require_role("nurse", "manager")
# the lobby screen sees ticket codes and what kind of message went out, nothing else
lobby = require_role("screen", "front_desk", "nurse", "manager")

CONTACT_ROUTES = "/clinics/{clinic_id}/visits/{visit_id}/contact"
# flow renews a waiting visit's estimate as its clinic's floor moves: one older than this
# belongs to a visit nothing ended (GET .../estimates leaves it out)
ESTIMATE_SHOWN_HOURS = 12


# ------------------------------------------------------------------ views


def _local(value: str | None, names: Names) -> str | None:
    """A stored ISO time on the clinic's clock (None stays None)."""
    if not value:
        return None
    return names.local(datetime.fromisoformat(value)).isoformat()


def _summary(record: dict[str, str], names: Names) -> dict[str, Any]:
    return {
        "notification_id": record["notification_id"],
        "visit_id": record.get("visit_id") or None,
        "ticket_code": record.get("ticket_code") or None,
        "kind": record["kind"],
        "channel": record["channel"],
        "status": record["status"],
        "created_at": _local(record["created_at"], names),
        "sent_at": _local(record.get("sent_at"), names),
    }


def _status(record: dict[str, str], names: Names) -> NotificationStatus:
    next_at = record.get("next_attempt_at")
    waiting = record["status"] in ("pending", "retrying")
    if record["status"] == "sent" and record.get("text"):
        subject, text = record.get("subject", ""), record["text"]  # what went out
    else:
        subject, text, _payload = records.words(record, names)  # what will go out
    return NotificationStatus(
        **_summary(record, names),
        subject=subject,
        text=text,
        attempts=int(record.get("attempts", "0")),
        next_attempt_at=names.local(datetime.fromtimestamp(float(next_at), UTC))
        if next_at and waiting else None,
        finished_at=_local(record.get("finished_at"), names),
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
                names: Callable[[str], Names], hub: AlertHub, idempotency: IdempotencyStore,
                barrier: ProjectionBarrier, *, channels: frozenset[str]) -> APIRouter:
    """The API's routes. ``channels`` are the patient channels this deployment can send on
    (email with a mail server, sms with a gateway, log in development)."""
    router = APIRouter(responses=COMMON_ERRORS)

    async def idempotent(clinic_id: str, key: str | None, request: Request,
                         action: Any) -> tuple[dict[str, Any], bool]:
        if key is None:
            _status_code, body = await action()
            return body, False
        _status_code, body, replayed = await idempotency.run(
            f"notifications:{clinic_id}", key,
            fingerprint(request.method, request.url.path, await request.body()), action)
        return body, replayed

    def channel_available(channel: str) -> None:
        if channel in channels:
            return
        if channel == "email":
            raise Rejected("channel: e-mail is not available here (no mail server "
                           "configured: CLINICFLOW_SMTP_HOST)"
                           + ("; use SMS" if "sms" in channels else ""),
                           "channel_unavailable")
        if channel == "sms":
            raise Rejected("channel: SMS is not available here (no gateway configured: "
                           "CLINICFLOW_SMS_GATEWAY_URL)"
                           + ("; use e-mail" if "email" in channels else ""),
                           "channel_unavailable")
        raise Rejected("channel: the log channel is for development only",
                       "channel_unavailable")

    async def on_the_floor(clinic_id: str, visit_id: str) -> str:
        """The visit's status on the clinic's floor once the notifier has read the floor
        as of now (an arrival, or a departure, published a moment ago is known); refused
        when it is unknown (404) or has ended (409)."""
        await barrier.caught_up(clinic_id)
        status = await store.visit_status(clinic_id, visit_id)
        if status is None:
            raise NotFound(f"no visit {visit_id} on the floor of clinic {clinic_id} (not "
                           "checked in there, or another clinic's)", "unknown_visit")
        if status == "ended":
            raise Conflict(f"visit {visit_id} at clinic {clinic_id} has ended: no message "
                           "goes to it any more", "visit_ended")
        return status

    # ---------------------------------------------------------- contacts

    @router.put(
        CONTACT_ROUTES, tags=["contacts"], response_model=ContactSaved,
        summary="Record a patient's contact details and consent (kept for the day)",
        description="The front desk records how to reach a patient who agreed to be "
        "contacted today, for a visit on the clinic's floor (checked in at this clinic; "
        "the answer waits until the service has read the clinic's floor as of now, so a "
        "check-in or a departure a moment ago counts: an unknown visit, or another "
        "clinic's, is a 404; one that ended a 409; 503 if the floor cannot be read). The "
        "channel must be one this deployment can send on (e-mail needs a mail server, SMS "
        "a gateway: 422 otherwise). The details are kept "
        "until the clinic's midnight (past it only while a feedback request deferred to "
        "the end of quiet hours waits for them, and only for it: until it is sent, at most "
        "as long after it is due as the sender's retries can take plus an hour), never "
        "published; the recording is audited. "
        "**Retries**: deduplicated on the visit: the same contact and preferences again "
        "change nothing (`replayed: true`, no second audit event); a different contact "
        "replaces the one on file (the latest given wins). An `Idempotency-Key` is "
        "honoured when sent (the same key with another body: 422).",
        openapi_extra={"requestBody": {"content": {"application/json": {
            "examples": CONTACT_EXAMPLES}}}},
        responses=answer(200, CONTACT_SAVED_EXAMPLE, "kept (or already on file: replayed)",
                         refusals={404: UNKNOWN_VISIT, 409: VISIT_ENDED}))
    async def put_contact(clinic_id: ClinicId, visit_id: VisitId, request: Request,
                          body: Annotated[ContactIn, Body()],
                          idempotency_key: IdempotencyKey = None,
                          principal: Principal = Depends(front_desk)) -> ContactSaved:
        principal.require_clinic(clinic_id)
        channel_available(body.channel)
        clinic = names(clinic_id)

        async def action() -> tuple[int, Any]:
            await on_the_floor(clinic_id, visit_id)
            now = runtime.clock.now()
            expires = contact_expiry(now, clinic.zone)
            preferences = Preferences(channel=body.channel, delay_updates=body.delay_updates,
                                      wait_anywhere=body.wait_anywhere)
            saved = await store.save_contact(
                clinic_id, visit_id, channel=body.channel, address=body.address,
                preferences=preferences, recorded_by=principal.name, recorded_at=now,
                expires_at=expires,
                audit=records.contact_recorded(clinic_id, visit_id, by=principal.name,
                                               channel=body.channel, at=now,
                                               expires_at=expires))
            if saved:
                log.info("contact recorded", clinic=clinic_id, visit_id=visit_id,
                         channel=body.channel, by=principal.name)
            else:  # the same details again: the expiry set when they were first given
                kept = await store.contact_expires_at(clinic_id, visit_id)
                expires = datetime.fromtimestamp(kept, UTC) if kept else expires
            return 200, ContactSaved(
                visit_id=visit_id, channel=body.channel,
                address_hint=address_hint(body.address) if body.address else "",
                wait_anywhere=body.wait_anywhere, delay_updates=body.delay_updates,
                expires_at=clinic.local(expires), replayed=not saved).model_dump(mode="json")

        kept, replayed = await idempotent(clinic_id, idempotency_key, request, action)
        return ContactSaved(**{**kept, "replayed": kept["replayed"] or replayed})

    @router.get(
        CONTACT_ROUTES, tags=["contacts"], response_model=ContactView,
        summary="Read a patient's contact details back (audited)",
        description="The one answer that carries a contact detail: for the front desk to "
        "confirm with the patient. Every read is an audit event (who, when, which visit; "
        "never the value). Past the clinic's midnight a contact kept only for a message "
        "deferred to it (a feedback request held to the end of quiet hours) is not shown: "
        "404 `contact_expired`, nothing audited; the sender still reads it.",
        responses=answer(200, CONTACT_VIEW_EXAMPLE, "the contact on file",
                         refusals={404: NO_CONTACT}))
    async def get_contact(clinic_id: ClinicId, visit_id: VisitId,
                          principal: Principal = Depends(front_desk)) -> ContactView:
        principal.require_clinic(clinic_id)
        clinic = names(clinic_id)
        now = runtime.clock.now()
        contact = await store.read_contact(
            clinic_id, visit_id,
            records.contact_read(clinic_id, visit_id, reader=principal.name,
                                 role=principal.role, purpose="front_desk_view", at=now),
            shown_at=now.timestamp())
        if contact is None:
            if await store.contact_expires_at(clinic_id, visit_id) is not None:
                raise NotFound(f"the contact details for visit {visit_id} at clinic "
                               f"{clinic_id} expired at the clinic's midnight: they are kept "
                               "only for the message deferred to them until it is sent, and "
                               "no longer shown", "contact_expired")
            raise NotFound(f"no contact details for visit {visit_id} at clinic {clinic_id} "
                           "(never given, erased, or expired)")
        preference = await store.preference(clinic_id, visit_id) or Preferences()
        expires = await store.contact_expires_at(clinic_id, visit_id)
        return ContactView(
            visit_id=visit_id, channel=contact["channel"], address=contact["address"],
            wait_anywhere=preference.wait_anywhere, delay_updates=preference.delay_updates,
            recorded_by=contact["recorded_by"],
            recorded_at=clinic.local(datetime.fromisoformat(contact["recorded_at"])),
            expires_at=clinic.local(datetime.fromtimestamp(expires, UTC)) if expires
            else None)

    @router.patch(
        CONTACT_ROUTES, tags=["contacts"], response_model=ContactSaved,
        summary="Change what a patient wants to hear (waiting outside, delays)",
        description="Changes the preferences of a contact on file (404 without one; 409 "
        "once the visit has ended). **Retries**: deduplicated on the visit: preferences "
        "already as asked change nothing (`replayed: true`). An `Idempotency-Key` is "
        "honoured when sent.",
        openapi_extra={"requestBody": {"content": {"application/json": {
            "examples": PATCH_EXAMPLES}}}},
        responses=answer(200, {**CONTACT_SAVED_EXAMPLE, "address_hint": ""},
                         "the preferences now on file",
                         refusals={404: NO_CONTACT, 409: VISIT_ENDED}))
    async def patch_contact(clinic_id: ClinicId, visit_id: VisitId, request: Request,
                            body: Annotated[PreferencesPatch, Body()],
                            idempotency_key: IdempotencyKey = None,
                            principal: Principal = Depends(front_desk)) -> ContactSaved:
        principal.require_clinic(clinic_id)
        clinic = names(clinic_id)

        async def action() -> tuple[int, Any]:
            preference = await store.preference(clinic_id, visit_id)
            expires = await store.contact_expires_at(clinic_id, visit_id)
            if preference is None or not preference.reachable or expires is None:
                raise NotFound(f"no contact details for visit {visit_id} at clinic "
                               f"{clinic_id}: record them first (PUT)")
            await barrier.caught_up(clinic_id)
            if await store.visit_status(clinic_id, visit_id) == "ended":
                raise Conflict(f"visit {visit_id} at clinic {clinic_id} has ended: no "
                               "message goes to it any more", "visit_ended")
            updated = Preferences(
                channel=preference.channel,
                delay_updates=preference.delay_updates if body.delay_updates is None
                else body.delay_updates,
                wait_anywhere=preference.wait_anywhere if body.wait_anywhere is None
                else body.wait_anywhere)
            if updated != preference:
                await store.set_preference(clinic_id, visit_id, updated)
            assert updated.channel is not None
            return 200, ContactSaved(
                visit_id=visit_id, channel=updated.channel, address_hint="",
                wait_anywhere=updated.wait_anywhere, delay_updates=updated.delay_updates,
                expires_at=clinic.local(datetime.fromtimestamp(expires, UTC)),
                replayed=updated == preference).model_dump(mode="json")

        kept, replayed = await idempotent(clinic_id, idempotency_key, request, action)
        return ContactSaved(**{**kept, "replayed": kept["replayed"] or replayed})

    @router.delete(
        CONTACT_ROUTES, tags=["contacts"], status_code=204, response_class=Response,
        summary="The patient opts out: erase their details, tell them nothing more",
        description="Erases the contact on file at once and cancels what was not yet sent "
        "(a feedback request deferred to the end of quiet hours too); the "
        "visit stays opted out for the day. Without a contact on file, a visit on the "
        "clinic's floor is marked opted out; any other visit is a 404. **Retries**: "
        "deduplicated on the visit: erasing again answers 204 and changes nothing (no "
        "second audit event).",
        responses=answer(204, None, "erased (or already erased)",
                         refusals={404: UNKNOWN_VISIT}))
    async def delete_contact(clinic_id: ClinicId, visit_id: VisitId,
                             principal: Principal = Depends(front_desk)) -> Response:
        principal.require_clinic(clinic_id)
        # a contact kept past midnight for a deferred message is erased too, even once the
        # day's preferences and the visit on the floor are forgotten
        if await store.preference(clinic_id, visit_id) is None and \
                await store.contact_expires_at(clinic_id, visit_id) is None:
            status = await store.visit_status(clinic_id, visit_id)
            if status is None:
                await barrier.caught_up(clinic_id)
                status = await store.visit_status(clinic_id, visit_id)
            if status is None:
                raise NotFound(f"no visit {visit_id} on the floor of clinic {clinic_id} "
                               "and no contact details for it: nothing to erase",
                               "unknown_visit")
        now = runtime.clock.now()
        if await store.erase_contact(
                clinic_id, visit_id, at=now,
                expires_at=contact_expiry(now, names(clinic_id).zone),
                audit=records.contact_erased(clinic_id, visit_id, by=principal.name, at=now)):
            log.info("contact erased", clinic=clinic_id, visit_id=visit_id, by=principal.name)
        return Response(status_code=204)

    # ------------------------------------------------------ notifications

    @router.get(
        "/clinics/{clinic_id}/notifications", tags=["notifications"],
        response_model=NotificationList,
        summary="Who has been told what, newest first (no contact details)",
        description="The clinic's patient messages and nurse pages of the last two days, "
        "newest first, with their delivery status: for the front desk to see who has "
        "been told. Never a contact detail, never the text.",
        responses=answer(200, LIST_EXAMPLE, "the notifications, newest first"))
    async def list_notifications(
        clinic_id: ClinicId,
        kind: Annotated[NotificationKind | None, Query(
            description="only this kind; another is a 422 listing the kinds",
            examples=["come_back_now"])] = None,
        since: Annotated[datetime | None, Query(description="only newer than this",
                                                examples=["2026-03-02T09:00:00-06:00"])
                         ] = None,
        limit: Annotated[int, Query(ge=1, le=500, description="at most this many",
                                    examples=[100])] = 100,
        principal: Principal = Depends(staff),
    ) -> NotificationList:
        principal.require_clinic(clinic_id)
        clinic = names(clinic_id)
        found = await store.records(clinic_id, since=since.timestamp() if since else 0,
                                    limit=limit if kind is None else 500)
        items = [NotificationSummary(**_summary(r, clinic)) for r in found
                 if kind is None or r["kind"] == kind][:limit]
        return NotificationList(clinic_id=clinic_id, notifications=items)

    @router.get(
        "/clinics/{clinic_id}/notifications/{notification_id}", tags=["notifications"],
        response_model=NotificationStatus, summary="One notification's delivery status",
        description="Status, attempts, last error and the events that triggered it; the "
        "text is what was sent (or will be, in the clinic's words as configured now). "
        "Never a contact detail.",
        responses=answer(200, STATUS_EXAMPLE, "the notification", refusals={404: (
            "no such notification at this clinic (ids are per clinic)",
            "no notification n-3f2a9c0d1e4b5a6978877665 at clinic north", "not_found")}))
    async def notification_status(
        clinic_id: ClinicId,
        notification_id: Annotated[str, Path(pattern=NOTIFICATION_ID_TEXT,
                                             description="from the list or an event",
                                             examples=["n-3f2a9c0d1e4b5a6978877665"])],
        principal: Principal = Depends(staff),
    ) -> NotificationStatus:
        principal.require_clinic(clinic_id)
        record = await store.record(notification_id)
        if record is None or record.get("clinic_id") != clinic_id:
            raise NotFound(f"no notification {notification_id} at clinic {clinic_id}")
        return _status(record, names(clinic_id))

    @router.get(
        "/clinics/{clinic_id}/told", tags=["notifications"], response_model=ToldAnswer,
        summary="Which tickets have been told what today (for the lobby screen)",
        description="The latest message each ticket was sent (delivered or on its way), by "
        "ticket code: no visit id, no channel, no contact detail, no text. The waiting-room "
        "screen marks those tickets.",
        responses=answer(200, TOLD_EXAMPLE, "the latest message per ticket"))
    async def told(clinic_id: ClinicId, principal: Principal = Depends(lobby)) -> ToldAnswer:
        principal.require_clinic(clinic_id)
        clinic = names(clinic_id)
        latest: dict[str, Told] = {}
        # today's on the clinic's clock only: ticket codes start again every clinic day,
        # and records are kept three days (yesterday's A-3 is not today's A-3)
        today = clinic.day_start(runtime.clock.now())
        for record in await store.records(clinic_id, since=today.timestamp(),
                                          limit=500):  # newest first
            ticket = record.get("ticket_code")
            if (not ticket or ticket in latest or record["kind"] not in TOLD_KINDS
                    or record["status"] in ("failed", "cancelled")):
                continue
            at = record.get("sent_at") or record["created_at"]
            latest[ticket] = Told(ticket_code=ticket, kind=record["kind"],  # type: ignore[arg-type]
                                  at=clinic.local(datetime.fromisoformat(at)))
        return ToldAnswer(clinic_id=clinic_id, told=list(latest.values()))

    # ------------------------------------------------------------- alerts

    @router.get(
        "/clinics/{clinic_id}/alerts", tags=["nurse alerts"], response_model=AlertsAnswer,
        summary="Room-ready alerts standing now",
        description="Each ready room matched with who should be roomed next, longest "
        "ready first: ids, and the room's and provider's names as the clinic calls them.",
        responses=answer(200, ALERTS_EXAMPLE, "the alerts standing"))
    async def alerts(clinic_id: ClinicId,
                     principal: Principal = Depends(nurses)) -> AlertsAnswer:
        principal.require_clinic(clinic_id)
        clinic = names(clinic_id)
        standing = [AlertView(**records.alert_view(a, clinic))
                    for a in await store.alerts(clinic_id)]
        return AlertsAnswer(clinic_id=clinic_id, alerts=standing)

    @router.get(
        "/clinics/{clinic_id}/alerts/stream", tags=["nurse alerts"],
        response_class=StreamingResponse,
        summary="Server-Sent Events: room-ready alerts raised and withdrawn, live",
        description="First `event: alerts` (everything standing now, as "
        "`GET /clinics/{clinic_id}/alerts` answers), then `event: alert.raised` and "
        "`event: alert.withdrawn` (`data.reason`) as they happen, keyed by `alert_id`. "
        "`?access_token=` works for EventSource. 503 when too many stations are "
        "connected.",
        responses=answer(200, STREAM_EXAMPLE, "the live stream", media="text/event-stream"))
    async def alert_stream(clinic_id: ClinicId, request: Request,
                           principal: Principal = Depends(nurses)) -> StreamingResponse:
        principal.require_clinic(clinic_id)
        clinic = names(clinic_id)

        async def first() -> bytes:
            standing = [records.alert_view(a, clinic) for a in await store.alerts(clinic_id)]
            return _sse("alerts", {"clinic_id": clinic_id, "alerts": standing})

        def render(raw: bytes) -> bytes:
            change = orjson.loads(raw)
            alert = records.alert_view(change["alert"], clinic)
            if change["type"] == "raised":
                return _sse("alert.raised", alert, alert["alert_id"])
            return _sse("alert.withdrawn", {**alert, "reason": change["reason"]})

        return hub.stream(clinic_id, principal.name, request, first=first, render=render)

    # -------------------------------------------------------------- other

    @router.get(
        "/clinics/{clinic_id}/estimates", tags=["estimates"], response_model=EstimatesAnswer,
        summary="The latest wait estimate flow published for each waiting visit",
        description="What the notifier last read from flow for each visit waiting to be "
        "roomed, in queue order: minutes until roomed and the 80% range it quotes to "
        "patients, and when flow made it (an estimate not renewed for 12 hours is not "
        "shown).",
        responses=answer(200, ESTIMATES_EXAMPLE, "the estimates, in queue order"))
    async def estimates(clinic_id: ClinicId,
                        principal: Principal = Depends(staff)) -> EstimatesAnswer:
        principal.require_clinic(clinic_id)
        # a visit leaves the list when it leaves the line (plan.py); one whose estimate
        # has not been renewed for ESTIMATE_SHOWN_HOURS is one nothing ended (or stored
        # before estimates kept their time): not shown
        clinic = names(clinic_id)
        shown_from = runtime.clock.now() - timedelta(hours=ESTIMATE_SHOWN_HOURS)
        rows = []
        for found in await store.estimates(clinic_id):
            row = EstimateRow.model_validate(found)
            if row.estimated_at is None or row.estimated_at < shown_from:
                continue
            row.estimated_at = clinic.local(row.estimated_at)
            rows.append(row)
        return EstimatesAnswer(clinic_id=clinic_id, estimates=rows)

    @router.get(
        "/clinics/{clinic_id}/rules", tags=["rules"], response_model=RulesAnswer,
        summary="The notification rules in force at a clinic",
        description="CLINICFLOW_NOTIFICATIONS_RULES as it applies to the clinic, with the "
        "name, provider names and zone its messages use (CLINICFLOW_CLINICS first).",
        responses=answer(200, RULES_EXAMPLE, "the rules in force"))
    async def clinic_rules(clinic_id: ClinicId,
                           principal: Principal = Depends(staff)) -> RulesAnswer:
        principal.require_clinic(clinic_id)
        clinic = names(clinic_id)
        return RulesAnswer(**{**rules.for_clinic(clinic_id).model_dump(),
                              "clinic_id": clinic_id, "clinic_name": clinic.clinic,
                              "provider_names": dict(clinic.providers),
                              "timezone": clinic.zone.key})

    return router


def _sse(event: str, data: dict[str, Any], event_id: str | None = None) -> bytes:
    head = f"event: {event}\n".encode()
    if event_id:
        head += f"id: {event_id}\n".encode()
    return head + b"data: " + orjson.dumps(data) + b"\n\n"
