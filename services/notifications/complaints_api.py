"""Complaints' routes: logged by the front desk or a manager (an ``Idempotency-Key`` is
required: 428 without), acknowledged, resolved; the front desk's follow-up list and the
manager's view (the only one with what the patient said)."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from pydantic import BaseModel, Field

from services.notifications import complaints as cp
from services.notifications.api import ClinicId
from services.notifications.complaints import Complaint
from services.notifications.complaints_store import ComplaintStore, text_read
from services.notifications.schemas import COMMON_ERRORS, answer
from shared.auth import Principal, require_role
from shared.clock import Clock
from shared.errors import NotFound, PreconditionRequired
from shared.events_notifications import ComplaintCategory
from shared.idempotency import IdempotencyStore, fingerprint

FRONT_OFFICE = require_role("front_desk", "manager")
MANAGER = require_role("manager")
_ID = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
ComplaintId = Annotated[str, Path(pattern=_ID, description="the complaint",
                                  examples=["cp-3f2a9c1e5b7d"])]
NEEDS_A_KEY = ("logging a complaint needs an Idempotency-Key header: nothing else tells a "
               "retried request from a second complaint. Send one key per complaint and the "
               "same key again when retrying it")


class NewComplaint(BaseModel):
    """A complaint as staff heard it."""


    category: ComplaintCategory
    source: Literal["in_person", "phone"] = Field(description="how it reached the clinic")
    visit_id: str | None = Field(default=None, pattern=_ID,
                                 description="the visit it is about, if any")
    text: str = Field(default="", max_length=cp.MAX_TEXT,
                      description="what the patient said (kept for the manager only)")


class ComplaintView(BaseModel):
    """A complaint as the front office sees it (``text``: the manager's view only)."""

    complaint_id: str
    clinic_id: str
    visit_id: str | None
    category: str
    source: str
    status: str
    logged_at: datetime
    logged_by: str
    due_at: datetime = Field(description="acknowledge by (open) or resolve by "
                             "(acknowledged), the clinic's clock")
    overdue: bool
    owner: str | None
    acknowledged_at: datetime | None
    resolved_at: datetime | None
    escalated_at: datetime | None
    text: str | None = Field(default=None, description="manager only")


class ComplaintList(BaseModel):
    clinic_id: str
    as_of: datetime = Field(description="when the list was read: the service's clock, "
                            "the clinic's offset")
    viewer: Literal["front_desk", "manager"] = Field(
        description="the role of the token that read it: a manager may also list the "
        "resolved and read what the patient said (the follow-up page shows its view by it)")
    complaints: list[ComplaintView]


_EXAMPLE = {"complaint_id": "cp-3f2a9c1e5b7d", "clinic_id": "north", "visit_id": "v-1042",
            "category": "wait", "source": "phone", "status": "open",
            "logged_at": "2026-03-02T10:30:00-05:00", "logged_by": "desk-2",
            "due_at": "2026-03-02T11:30:00-05:00", "overdue": False, "owner": None,
            "acknowledged_at": None, "resolved_at": None, "escalated_at": None,
            "text": None}
NEW_EXAMPLE = {"category": "wait", "source": "phone", "visit_id": "v-1042",
               "text": "Waited an hour past what I was told."}
_NOT_FOUND = ("no such complaint at this clinic",
              "complaint cp-3f2a does not exist at clinic north", "complaint_not_found")


def view(complaint: Complaint, text: str | None, now: datetime) -> ComplaintView:
    return ComplaintView(**complaint.to_dict(), overdue=complaint.overdue(now), text=text)


def make_complaints_router(
        store: ComplaintStore, idempotency: IdempotencyStore, clock: Clock,
        zone: Callable[[str], ZoneInfo],
        feedback_text: Callable[[str, str], Awaitable[str]] | None = None,
        visit_known: Callable[[str, str], Awaitable[bool]] | None = None) -> APIRouter:
    """``feedback_text(clinic, visit)``: what the patient wrote on the feedback form, shown
    in the manager's view of the complaint their low rating raised. ``visit_known(clinic,
    visit)``: whether a visit checked in there (a complaint naming another is 404)."""
    router = APIRouter(responses=COMMON_ERRORS, tags=["complaints"])

    @router.post(
        "/clinics/{clinic_id}/complaints", status_code=201, response_model=ComplaintView,
        summary="Log a complaint heard in person or by phone",
        description="Open, due acknowledged within one business hour (Mon-Fri 08:00-18:00, "
        "the clinic's clock). Publishes complaint.logged (ids and category, never the "
        "text). REQUIRES an Idempotency-Key (428 without). A visit named must have checked "
        "in at the clinic (404 otherwise; 503 while the service catches up with the floor).",
        openapi_extra={"requestBody": {"content": {"application/json": {
            "example": NEW_EXAMPLE}}}},
        responses=answer(201, _EXAMPLE, "the complaint logged", refusals={
            404: ("the visit named never checked in at this clinic",
                  "visit v-9 never checked in at clinic north", "unknown_visit"),
            428: ("no Idempotency-Key", NEEDS_A_KEY, "idempotency_key_required")}))
    async def log_complaint(clinic_id: ClinicId, body: NewComplaint, request: Request,
                            key: Annotated[str | None, Header(
                                alias="Idempotency-Key", max_length=200,
                                description="REQUIRED (428 without): one key per "
                                "complaint, reused by its retries",
                                examples=["complaint-7c1e"])] = None,
                            principal: Principal = Depends(FRONT_OFFICE)) -> Any:
        principal.require_clinic(clinic_id)
        if key is None:
            raise PreconditionRequired(NEEDS_A_KEY, code="idempotency_key_required")
        if (body.visit_id is not None and visit_known is not None
                and not await visit_known(clinic_id, body.visit_id)):
            raise NotFound(f"visit {body.visit_id} never checked in at clinic {clinic_id}",
                           code="unknown_visit")

        async def action() -> tuple[int, Any]:
            now = clock.now()
            complaint = cp.log("cp-" + secrets.token_hex(8), clinic_id,
                               visit_id=body.visit_id, category=body.category,
                               source=body.source, by=principal.name, now=now,
                               zone=zone(clinic_id))
            await store.create(complaint, body.text.strip())
            return 201, view(complaint, None, now).model_dump(mode="json")

        _status, found, _replayed = await idempotency.run(
            f"notifications-complaints:{clinic_id}", key,
            fingerprint(request.method, request.url.path, await request.body()), action)
        return found

    @router.get(
        "/clinics/{clinic_id}/complaints", response_model=ComplaintList,
        summary="The follow-up list: complaints not resolved, overdue first",
        description="Front desk and manager; with all=true (manager) the resolved too. "
        "Never the patient's words: those are in the manager's view of one complaint.",
        responses=answer(200, {"clinic_id": "north", "as_of": "2026-03-02T10:40:00-05:00",
                               "viewer": "front_desk", "complaints": [_EXAMPLE]},
                         "the complaints"))
    async def follow_up(clinic_id: ClinicId,
                        all: Annotated[bool, Query(
                            description="manager: every complaint kept, the resolved too",
                            examples=[False])] = False,
                        principal: Principal = Depends(FRONT_OFFICE)) -> ComplaintList:
        principal.require_clinic(clinic_id)
        now = clock.now()
        found = [c for c, _text in await store.listed(clinic_id)]
        shown = (sorted(found, key=lambda c: c.logged_at)
                 if all and principal.role == "manager" else cp.follow_up(found, now))
        return ComplaintList(clinic_id=clinic_id, as_of=now.astimezone(zone(clinic_id)),
                             viewer="manager" if principal.role == "manager"
                             else "front_desk",
                             complaints=[view(c, None, now) for c in shown])

    @router.get(
        "/clinics/{clinic_id}/complaints/{complaint_id}", response_model=ComplaintView,
        summary="The manager's view of one complaint, with what the patient said",
        description="Manager only: the complaint, its status, owner and due time, and the "
        "patient's words as staff wrote them, or as the patient wrote them on the feedback "
        "form for a low rating's complaint (never on an event, a log line or a list). "
        "Every read is an audit event (complaint_text.read on the audit topic: who, when, "
        "which complaint; never the words); the answer is not to be stored "
        "(`Cache-Control: no-store`).",
        responses=answer(200, {**_EXAMPLE, "text": "Waited an hour past what I was told."},
                         "the complaint", refusals={404: _NOT_FOUND}))
    async def one(clinic_id: ClinicId, complaint_id: ComplaintId, response: Response,
                  principal: Principal = Depends(MANAGER)) -> ComplaintView:
        principal.require_clinic(clinic_id)
        response.headers["Cache-Control"] = "no-store"
        found = await store.read(clinic_id, complaint_id, text_read(
            clinic_id, complaint_id, reader=principal.name, role=principal.role,
            at=clock.now()))
        if found is None:
            raise NotFound(f"complaint {complaint_id} does not exist at clinic {clinic_id}",
                           code="complaint_not_found")
        complaint, text = found
        if (complaint.source == "low_rating" and complaint.visit_id is not None
                and feedback_text is not None):
            text = await feedback_text(clinic_id, complaint.visit_id)
        return view(complaint, text, clock.now())

    def transition(kind: str, event: str, step: Callable[..., Complaint],
                   summary: str) -> None:
        @router.post(
            f"/clinics/{{clinic_id}}/complaints/{{complaint_id}}/{kind}",
            response_model=ComplaintView, summary=summary, name=f"complaint_{kind}",
            description=f"{summary}. Front desk and manager; the caller becomes its owner "
            f"when it has none. Publishes complaint.{event}. 404 naming an unknown "
            "complaint, 409 when its status does not allow it. An `Idempotency-Key` is "
            "honoured: a retry with the same key gets the first answer again (no second "
            "event, no 409); the same key on another request: 422.",
            responses=answer(200, {**_EXAMPLE, "status": "acknowledged"
                                   if kind == "acknowledge" else "resolved"},
                             "the complaint changed", refusals={
                404: _NOT_FOUND,
                409: ("the complaint's status does not allow it",
                      "complaint cp-3f2a is resolved: only an open complaint can be "
                      "acknowledged", "complaint_not_open")}))
        async def change(clinic_id: ClinicId, complaint_id: ComplaintId, request: Request,
                         key: Annotated[str | None, Header(
                             alias="Idempotency-Key", max_length=200,
                             description="one key per click of the action, reused by its "
                             "retries", examples=["ack-cp-3f2a-1"])] = None,
                         principal: Principal = Depends(FRONT_OFFICE)) -> Any:
            principal.require_clinic(clinic_id)

            async def action() -> tuple[int, Any]:
                now, tz = clock.now(), zone(clinic_id)
                changed = await store.change(
                    clinic_id, complaint_id, event,
                    lambda c: step(c, owner=principal.name, now=now, zone=tz), now)
                return 200, view(changed, None, now).model_dump(mode="json")

            if key is None:
                return (await action())[1]
            _status, found, _replayed = await idempotency.run(
                f"notifications-complaints:{clinic_id}", key,
                fingerprint(request.method, request.url.path, await request.body()), action)
            return found

    transition("acknowledge", "acknowledged", cp.acknowledge,
               "Acknowledge a complaint: its owner takes it on")
    transition("resolve", "resolved", cp.resolve, "Resolve a complaint")
    return router
