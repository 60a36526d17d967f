"""Checkin's HTTP API: routes only (role check, clinic check, rate limit,
Idempotency-Key, then the desk). The request and answer models are in schemas.py, the
lookup limiter in limiter.py.

Retries never duplicate an effect. Each command's rule (the README's table):

- ``POST .../arrivals`` for a walk-in: an ``Idempotency-Key`` is required (428 without):
  nothing else tells a retry from a second patient.
- ``POST .../arrivals`` for an appointment, ``POST .../kiosk/check-ins``: deduplicated
  on the appointment (one arrival each: a second is 409 naming the visit); the key, when
  sent, replays the first answer (the kiosk page sends one per attempt).
- ``POST .../visits/{visit}/cancel``: deduplicated on the visit (cancelled once; again is
  409); the key replays the first answer.
- ``POST .../schedule/csv|fhir``: deduplicated on the appointment ids (an identical
  re-import publishes nothing); the key replays the first answer.

Every route names its roles; every route with a clinic checks the credential opens
that clinic. The desk's refusals are ``shared.errors`` kinds, answered as HTTP in one
place (``shared/service.py``); what is wrong with the request itself (a missing field,
a content type) is answered here.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable
from datetime import date, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Header, HTTPException, Path, Query, Request

from services.checkin import metrics as m
from services.checkin.desk import (
    ArrivalOverrides,
    ArrivalResult,
    CheckinDesk,
    ImportResult,
    WalkIn,
)
from services.checkin.domain import WaitStatus, printed_kiosk_code
from services.checkin.feeds import Feeds
from services.checkin.limiter import LookupLimiter
from services.checkin.schedule import parse_csv, parse_fhir_bundle
from services.checkin.schemas import (
    ARRIVAL_ANSWER_EXAMPLE,
    ARRIVAL_EXAMPLES,
    CANCEL_ANSWER_EXAMPLE,
    CANCEL_EXAMPLES,
    COMMON_ERRORS,
    CSV_EXAMPLE,
    DIRECTORY_EXAMPLE,
    FHIR_EXAMPLE,
    FOLLOW_UP_EXAMPLE,
    ID_TEXT,
    IMPORT_ANSWER_EXAMPLE,
    KIOSK_ANSWER_EXAMPLE,
    KIOSK_EXAMPLES,
    SCHEDULE_EXAMPLE,
    WAIT_EXAMPLE,
    AppointmentRow,
    ArrivalAnswer,
    ArrivalRequest,
    CancelAnswer,
    CancelRequest,
    DirectoryAnswer,
    FollowUpAnswer,
    FollowUpRow,
    ImportAnswer,
    ImportRejected,
    KioskAnswer,
    KioskRequest,
    NamedEntryAnswer,
    ScheduleAnswer,
    WaitAnswer,
    answer,
    import_problems,
    refusal,
)
from shared.auth import Principal, require_role
from shared.clock import Clock
from shared.errors import Conflict, NotFound, PreconditionRequired
from shared.events import ToldChannel
from shared.idempotency import IdempotencyStore, fingerprint
from shared.refusals import Invalid
from shared.settings import ROLES
from shared.told import ToldLog

ClinicId = Annotated[str, Path(pattern=ID_TEXT, description="the clinic", examples=["north"])]
VisitId = Annotated[str, Path(pattern=ID_TEXT, description="the visit (from the arrival)",
                              examples=["v-3f2a9c1e5b7d4a60"])]
IdempotencyKey = Annotated[str | None, Header(
    alias="Idempotency-Key", max_length=200,
    description="optional here (the command is deduplicated on what it names); with it, a "
                "retried command gets the first answer again (`replayed: true`) and "
                "publishes nothing. One key per attempt; a retry reuses it",
    examples=["arrival-7c1e"])]
ArrivalKey = Annotated[str | None, Header(
    alias="Idempotency-Key", max_length=200,
    description="REQUIRED for a walk-in (428 without): one key per check-in, reused by its "
                "retries, so a retried walk-in is one ticket, never two. Optional for a "
                "scheduled arrival (deduplicated on the appointment); with it, a retry gets "
                "the first answer again (`replayed: true`)", examples=["arrival-7c1e"])]
Day = Annotated[date | None, Query(description="the clinic's day in its own zone "
                                               "(default: the clinic's today)",
                                   examples=["2026-03-02"])]

FRONT_DESK = require_role("front_desk", "manager")
KIOSK = require_role("kiosk", "front_desk")
LOOKUP = require_role("kiosk", "front_desk", "manager")
ANY_ROLE = require_role(*ROLES)
WALK_IN_NEEDS_A_KEY = (
    "a walk-in needs an Idempotency-Key header: nothing else tells a retried walk-in from "
    "a second patient. Send one key per check-in (any unique text, e.g. a UUID) and the "
    "same key again when retrying it")


def make_router(desk: CheckinDesk, idempotency: IdempotencyStore, limiter: LookupLimiter,
                clock: Clock, told: ToldLog | None = None,
                feeds: Feeds | None = None) -> APIRouter:
    """Checkin's routes; the time of every command and lookup is ``clock.now()``. ``told``
    records the ranges the kiosk and the status lookup tell (shared/told.py); ``feeds``
    say which clinics take their schedule from an EHR feed (file imports refused)."""
    router = APIRouter(responses=COMMON_ERRORS)

    async def tell(clinic_id: str, status: WaitStatus, channel: ToldChannel,
                   now: datetime) -> None:
        if (told is not None and status.waiting and status.visit_id is not None
                and status.low_minutes is not None and status.high_minutes is not None):
            await told.record(clinic_id, status.visit_id, channel=channel,
                              low=status.low_minutes, high=status.high_minutes,
                              point=status.wait_minutes, at=now,
                              provider_id=status.provider_id, ticket_code=status.ticket_code)

    async def once(request: Request, clinic_id: str, key: str | None,
                   action: Callable[[], Awaitable[tuple[int, Any]]]) -> tuple[Any, bool]:
        """Run a command, or replay its first answer under the same Idempotency-Key."""
        if key is None:
            return (await action())[1], False
        # keyed: a kiosk body holds a birth date and initials, and a plain hash of it kept
        # next to the answer would give them back to anyone reading Redis in seconds
        body = hmac.new(desk.config.identity_secret, await request.body(),
                        hashlib.sha256).hexdigest().encode()
        _status, answer, replayed = await idempotency.run(
            f"checkin:{clinic_id}", key, fingerprint(request.method, request.url.path, body),
            action)
        return answer, replayed

    # ----------------------------------------------------------- schedule

    async def run_import(request: Request, clinic_id: str, fmt: str, dry_run: bool,
                         key: str | None) -> ImportAnswer:
        feed = feeds.for_clinic(clinic_id) if feeds is not None else None
        if feed is not None and not feed.takes_import(fmt):
            raise Conflict(f"clinic {clinic_id!r} takes its schedule from "
                           f"{feed.source_of_truth}, not from a {fmt.upper()} file import",
                           "not_source_of_truth")
        body = await request.body()
        keys = desk.import_keys(clinic_id)
        parse = parse_csv if fmt == "csv" else parse_fhir_bundle

        async def action() -> tuple[int, Any]:
            parsed = parse(body, clinic_id=clinic_id, keys=keys)
            # ScheduleRejected becomes the 422 listing every bad row (see rejected_schedule)
            result = await desk.import_schedule(clinic_id, parsed, fmt=fmt, dry_run=dry_run,
                                                now=clock.now())
            return 200, _import_answer(result).model_dump(mode="json")

        answer, replayed = await once(request, clinic_id, key, action)
        return ImportAnswer(**{**answer, "replayed": replayed})

    csv_body = {"requestBody": {"required": True, "content": {"text/csv": {
        "schema": {"type": "string"}, "example": CSV_EXAMPLE}}}}
    fhir_body = {"requestBody": {"required": True, "content": {
        "application/fhir+json": {"schema": {"type": "object"}, "example": FHIR_EXAMPLE},
        "application/json": {"schema": {"type": "object"}, "example": FHIR_EXAMPLE}}}}
    import_errors: dict[int | str, dict[str, Any]] = {
        **answer(200, IMPORT_ANSWER_EXAMPLE, "what the import did"),
        409: refusal("another import of this clinic is running, or the clinic takes its "
                     "schedule from an EHR feed (not_source_of_truth)",
                     "another schedule import for clinic 'north' is running; try again when "
                     "it is done"),
        413: refusal("the file is larger than the body limit",
                     "request body larger than 1048576 bytes"),
        415: refusal("wrong content type for this route",
                     "content type 'application/json' is not accepted here: CSV goes to this "
                     "route; a FHIR Bundle to .../schedule/fhir"),
        422: {"model": ImportRejected | Invalid,
              "description": "bad rows: nothing was imported (or an invalid parameter)",
              "content": {"application/json": {"example": {
                  "detail": "2 problem(s) in 42 row(s); nothing was imported (fix the rows "
                            "and import the whole file again)",
                  "errors": [{"line": 4, "appointment_id": "apt-0900-kim",
                              "reason": "scheduled_at '2026-03-02 09:00' has no UTC offset "
                                        "(write e.g. 2026-03-02T08:15:00-05:00)"},
                             {"line": 9, "appointment_id": None,
                              "reason": "7 fields, but the header has 8"}]}}}},
        503: refusal("Kafka unavailable: import again to finish",
                     "2 of 2 appointment changes could not be published to Kafka; import the "
                     "same file again to finish (what was published is not repeated)"),
    }

    @router.post("/clinics/{clinic_id}/schedule/csv", response_model=ImportAnswer,
                 tags=["schedule"], summary="Import the day's schedule from CSV",
                 description="All rows or none: one bad row rejects the file with every "
                 "bad row's line and reason. New and changed appointments publish "
                 "`appointment.scheduled`; an identical re-import publishes nothing (retries "
                 "are deduplicated on the appointment ids). Columns: appointment_id, "
                 "patient_ref (pseudonymous) or mrn (an EHR identifier: only its keyed "
                 "pseudonym is kept), provider_id, visit_type (mapped: FOLLOWUP -> "
                 "follow_up), scheduled_at (ISO 8601 with offset); optional "
                 "duration_minutes, status (booked|cancelled), dob + initials (kiosk check, "
                 "kept only as a salted hash), clinic_id. Each appointment gets a kiosk "
                 "code (see the schedule).",
                 openapi_extra=csv_body, responses=import_errors)
    async def import_csv(clinic_id: ClinicId, request: Request,
                         dry_run: Annotated[bool, Query(
                             description="validate and compare only: publish and store "
                                         "nothing", examples=[False])] = False,
                         idempotency_key: IdempotencyKey = None,
                         principal: Principal = Depends(FRONT_DESK)) -> ImportAnswer:
        principal.require_clinic(clinic_id)
        _content_type(request, ("text/csv", "text/plain", "application/csv",
                                "application/vnd.ms-excel", "application/octet-stream"),
                      "CSV goes to this route; a FHIR Bundle to .../schedule/fhir")
        return await run_import(request, clinic_id, "csv", dry_run, idempotency_key)

    @router.post("/clinics/{clinic_id}/schedule/fhir", response_model=ImportAnswer,
                 tags=["schedule"], summary="Import the day's schedule from a FHIR R4 Bundle",
                 description="A Bundle of `Appointment` resources (Patient resources in the "
                 "same Bundle give the kiosk check's birth date and initials, kept only as a "
                 "salted hash; `Patient.id` becomes a keyed pseudonym, never published). "
                 "`appointmentType` codes (HL7 v2 table 0276: ROUTINE, WALKIN, CHECKUP, "
                 "FOLLOWUP, EMERGENCY, and common codes) become the clinic's visit types. "
                 "`Practitioner` and `Location` names (and participants' `display`) become "
                 "display names (GET .../directory). All entries or none; errors name each "
                 "entry's line. Status booked/pending/arrived/checked-in/fulfilled is booked; "
                 "cancelled/noshow/entered-in-error is cancelled; proposed/waitlist entries "
                 "are skipped. Retries are deduplicated on the appointment ids.",
                 openapi_extra=fhir_body, responses=import_errors)
    async def import_fhir(clinic_id: ClinicId, request: Request,
                          dry_run: Annotated[bool, Query(description="validate and compare "
                                                         "only", examples=[False])] = False,
                          idempotency_key: IdempotencyKey = None,
                          principal: Principal = Depends(FRONT_DESK)) -> ImportAnswer:
        principal.require_clinic(clinic_id)
        _content_type(request, ("application/fhir+json", "application/json"),
                      "a FHIR Bundle (application/fhir+json) goes to this route; CSV to "
                      ".../schedule/csv")
        return await run_import(request, clinic_id, "fhir", dry_run, idempotency_key)

    @router.get("/clinics/{clinic_id}/schedule", response_model=ScheduleAnswer,
                tags=["schedule"], summary="The day's schedule with arrivals and no-shows",
                description="Every appointment of the clinic's day (in its own zone), with "
                "its kiosk code and its arrival (visit id) or no-show; times on the clinic's "
                "clock. No patient names: a pseudonymous patient reference.",
                responses=answer(200, SCHEDULE_EXAMPLE, "the day's appointments"))
    async def schedule(clinic_id: ClinicId, day: Day = None,
                       principal: Principal = Depends(FRONT_DESK)) -> ScheduleAnswer:
        principal.require_clinic(clinic_id)
        the_day = desk.read_day(clinic_id, day, clock.now())
        zone = desk.zone(clinic_id)
        names = await provider_names(clinic_id)
        rows = []
        for state in await desk.schedule(clinic_id, the_day):
            a = state.appointment
            status: Any = a.status
            if a.status == "booked" and state.arrived_visit:
                status = "arrived"
            elif a.status == "booked" and state.no_show:
                status = "no_show"
            rows.append(AppointmentRow(
                appointment_id=a.appointment_id, patient_ref=a.patient_ref,
                provider_id=a.provider_id, provider_name=names.get(a.provider_id, a.provider_id),
                visit_type=a.visit_type, scheduled_at=a.scheduled_at.astimezone(zone),
                kiosk_code=printed_kiosk_code(a.kiosk_code) if a.kiosk_code else None,
                duration_minutes=a.duration_minutes, status=status,
                visit_id=state.arrived_visit, kiosk_check=bool(a.identity)))
        return ScheduleAnswer(clinic_id=clinic_id, day=the_day, timezone=zone.key,
                              appointments=rows)

    async def provider_names(clinic_id: str) -> dict[str, str]:
        return {entry.id: entry.name for entry in (await desk.names(clinic_id)).providers}

    @router.get("/clinics/{clinic_id}/directory", response_model=DirectoryAnswer,
                tags=["schedule"], summary="The clinic's providers and rooms by name",
                description="How the clinic calls its providers and rooms, for screens and "
                "messages (events and metrics keep the ids): CLINICFLOW_CLINICS first, then "
                "the names imported FHIR Bundles brought (Practitioner, Location, "
                "participants' display), then the ids on imported schedules. Any role of "
                "the clinic may read it.",
                responses=answer(200, DIRECTORY_EXAMPLE, "the clinic's names"))
    async def directory(clinic_id: ClinicId,
                        principal: Principal = Depends(ANY_ROLE)) -> DirectoryAnswer:
        principal.require_clinic(clinic_id)
        names = await desk.names(clinic_id)

        def entries(found: Any) -> list[NamedEntryAnswer]:
            return [NamedEntryAnswer(id=e.id, name=e.name, source=e.source) for e in found]

        return DirectoryAnswer(clinic_id=clinic_id, name=names.name, timezone=names.timezone,
                               providers=entries(names.providers), rooms=entries(names.rooms))

    # ----------------------------------------------------------- arrivals

    @router.post("/clinics/{clinic_id}/arrivals", status_code=201, response_model=ArrivalAnswer,
                 tags=["arrivals"], summary="Check a patient in (scheduled or walk-in)",
                 description="Publishes `patient.arrived` with a new ticket code (numbered "
                 "per clinic day, in the clinic's zone). A scheduled arrival is late when "
                 "more than CLINICFLOW_CHECKIN_LATE_AFTER_MINUTES after the appointment. "
                 "Retries: a walk-in REQUIRES an Idempotency-Key (428 without one: two "
                 "identical walk-ins could be two patients); a scheduled arrival is "
                 "deduplicated on the appointment (a second one is a 409 naming the visit). "
                 "The same request again with the same key gets the first answer. A "
                 "provider the clinic does not know (configuration, imports) is a 404.",
                 responses=answer(
                     201, ARRIVAL_ANSWER_EXAMPLE, "checked in: the ticket code to show",
                     r404=("no such appointment on this clinic's schedule, or an unknown "
                           "provider",
                           "no appointment 'apt-9' on clinic 'north''s schedule"),
                     r428=("a walk-in without an Idempotency-Key",
                           WALK_IN_NEEDS_A_KEY),
                     r409=("already checked in, or cancelled",
                           "appointment 'apt-0815-lee' is already checked in (visit "
                           "v-3f2a9c1e5b7d4a60)"),
                     r413=("the body is larger than the limit",
                           "request body larger than 1048576 bytes"),
                     r503=("Kafka unavailable; nothing recorded",
                           "could not publish to Kafka; nothing was recorded, try again")))
    async def check_in(clinic_id: ClinicId, request: Request,
                       body: Annotated[ArrivalRequest, Body(openapi_examples=ARRIVAL_EXAMPLES)],
                       idempotency_key: ArrivalKey = None,
                       principal: Principal = Depends(FRONT_DESK)) -> ArrivalAnswer:
        principal.require_clinic(clinic_id)
        if body.appointment_id is None and body.visit_type is None:
            raise HTTPException(422, detail="visit_type is required for a walk-in (an arrival "
                                "without appointment_id)")
        if body.appointment_id is None and idempotency_key is None:
            raise PreconditionRequired(WALK_IN_NEEDS_A_KEY, "idempotency_key_required")

        async def action() -> tuple[int, Any]:
            now = clock.now()
            if body.appointment_id is not None:
                result = await desk.arrive_scheduled(
                    clinic_id, body.appointment_id, channel="front_desk", now=now,
                    overrides=ArrivalOverrides(provider_id=body.provider_id,
                                        visit_type=body.visit_type, priority=body.priority))
            else:
                assert body.visit_type is not None
                result = await desk.arrive_walk_in(
                    clinic_id, WalkIn(provider_id=body.provider_id, visit_type=body.visit_type,
                                      priority=body.priority, patient_ref=body.patient_ref),
                    channel="front_desk", now=now)
            return 201, _arrival_answer(result)

        answer, replayed = await once(request, clinic_id, idempotency_key, action)
        return ArrivalAnswer(**{**answer, "replayed": replayed})

    @router.post("/clinics/{clinic_id}/visits/{visit_id}/cancel", response_model=CancelAnswer,
                 tags=["arrivals"], summary="Cancel a waiting patient's arrival",
                 description="Publishes `arrival.cancelled` (left without being seen, "
                 "cancelled, rescheduled, entered in error). Only a visit still waiting on "
                 "the floor can be cancelled: checkin first reads the clinic's floor up to "
                 "now, so a visit roomed, checked out or undone a moment ago is a 409, never "
                 "a cancel flow cannot apply. Retries are deduplicated on the visit (a "
                 "second cancel is a 409); the same Idempotency-Key gets the first answer. "
                 "Kiosk credentials cannot cancel.",
                 responses=answer(
                     200, CANCEL_ANSWER_EXAMPLE, "cancelled",
                     r404=("no such visit here",
                           "no visit 'v-3f2a9c1e5b7d4a60' at clinic 'north'"),
                     r409=("not waiting any more",
                           "visit 'v-3f2a9c1e5b7d4a60' is roomed, not waiting: it can no "
                           "longer be cancelled"),
                     r503=("Kafka unavailable, or checkin behind the floor; nothing recorded",
                           "could not publish to Kafka; nothing was recorded, try again")))
    async def cancel(clinic_id: ClinicId, visit_id: VisitId, request: Request,
                     body: Annotated[CancelRequest, Body(openapi_examples=CANCEL_EXAMPLES)],
                     idempotency_key: IdempotencyKey = None,
                     principal: Principal = Depends(FRONT_DESK)) -> CancelAnswer:
        principal.require_clinic(clinic_id)

        async def action() -> tuple[int, Any]:
            view = await desk.cancel(clinic_id, visit_id, body.reason, now=clock.now())
            return 200, {"visit_id": view.visit_id, "ticket_code": view.ticket_code,
                         "reason": body.reason}

        answer, replayed = await once(request, clinic_id, idempotency_key, action)
        return CancelAnswer(**{**answer, "replayed": replayed})

    @router.get("/clinics/{clinic_id}/no-shows", response_model=FollowUpAnswer,
                tags=["arrivals"], summary="The day's no-shows to call and reschedule",
                description="Appointments of the clinic's day (in its own zone) published as "
                "`patient.no_show` (no arrival CLINICFLOW_CHECKIN_NO_SHOW_AFTER_MINUTES after "
                "their time); times on the clinic's clock. No names: the pseudonymous "
                "patient reference is looked up in the practice system.",
                responses=answer(200, FOLLOW_UP_EXAMPLE, "the no-shows to call"))
    async def no_shows(clinic_id: ClinicId, day: Day = None,
                       principal: Principal = Depends(FRONT_DESK)) -> FollowUpAnswer:
        principal.require_clinic(clinic_id)
        the_day = desk.read_day(clinic_id, day, clock.now())
        zone = desk.zone(clinic_id)
        names = await provider_names(clinic_id)
        rows = [FollowUpRow(appointment_id=f.appointment_id, provider_id=f.provider_id,
                            provider_name=(names.get(f.provider_id, f.provider_id)
                                           if f.provider_id else None),
                            visit_type=f.visit_type, scheduled_at=f.scheduled_at.astimezone(zone),
                            patient_ref=f.patient_ref, arrived_later=f.arrived_later)
                for f in await desk.follow_up_list(clinic_id, the_day)]
        return FollowUpAnswer(clinic_id=clinic_id, day=the_day, timezone=zone.key,
                              no_shows=rows)

    # -------------------------------------------------------------- kiosk

    @router.post("/clinics/{clinic_id}/kiosk/check-ins", status_code=201,
                 response_model=KioskAnswer, tags=["kiosk"],
                 summary="Self check-in at the kiosk",
                 description="With the appointment's kiosk code (the schedule's `kiosk_code`: "
                 "six characters, any case) or the date of birth and initials (matched as a "
                 "salted hash), against the clinic's today in its own zone (and, across "
                 "midnight, appointments within 2 hours of now). Unknown codes and failed "
                 "checks count against the client's miss limit (429 once exceeded). Answers "
                 "never say whose appointment it is. Retries are deduplicated on the "
                 "appointment (one arrival); send an Idempotency-Key per attempt (the kiosk "
                 "page does) so a retry gets its ticket back instead of a 409.",
                 responses=answer(
                     201, KIOSK_ANSWER_EXAMPLE, "checked in: the ticket code and the wait",
                     r404=("no matching appointment today",
                           "we could not find an appointment with that code; please check it "
                           "or see the front desk"),
                     r409=("already checked in, not today, missed, or ambiguous: see the "
                           "front desk",
                           "this appointment is already checked in; please see the front "
                           "desk"),
                     r429=("too many attempts",
                           "too many unknown codes or failed checks; try again in a minute or "
                           "see the front desk"),
                     r503=("Kafka unavailable; nothing recorded",
                           "could not publish to Kafka; nothing was recorded, try again")))
    async def kiosk_check_in(clinic_id: ClinicId, request: Request,
                             body: Annotated[KioskRequest, Body(openapi_examples=KIOSK_EXAMPLES)],
                             idempotency_key: IdempotencyKey = None,
                             principal: Principal = Depends(KIOSK)) -> KioskAnswer:
        principal.require_clinic(clinic_id)
        by_code = body.appointment_code is not None
        by_identity = body.date_of_birth is not None and body.initials is not None
        partly = body.date_of_birth is not None or body.initials is not None
        if by_code == partly or (partly and not by_identity):
            raise HTTPException(422, detail="give appointment_code, or date_of_birth and "
                                "initials (not both)")
        client = limiter.client(request, principal)
        now = clock.now()
        if body.date_of_birth is not None and body.date_of_birth > desk.today(clinic_id, now):
            raise HTTPException(422, detail=f"date_of_birth {body.date_of_birth.isoformat()} "
                                "is in the future: check the birth date")
        await limiter.admit(client, now, "kiosk")

        async def action() -> tuple[int, Any]:
            try:
                if body.appointment_code is not None:
                    result = await desk.kiosk_by_code(clinic_id, body.appointment_code, now=now)
                else:
                    assert body.date_of_birth is not None and body.initials is not None
                    result = await desk.kiosk_by_identity(clinic_id, body.date_of_birth,
                                                          body.initials, now=now)
            except NotFound:
                m.LOOKUPS.labels("kiosk", "unknown").inc()
                await limiter.missed(client, now)
                raise
            m.LOOKUPS.labels("kiosk", "found").inc()
            await tell(clinic_id, result.wait, "kiosk", now)
            return 201, {"ticket_code": result.ticket_code, "visit_id": result.visit_id,
                         "late": result.late,
                         "wait": WaitAnswer.of(result.wait).model_dump()}

        answer, replayed = await once(request, clinic_id, idempotency_key, action)
        return KioskAnswer(**{**answer, "replayed": replayed})

    @router.get("/clinics/{clinic_id}/visits/{visit_id}/wait", response_model=WaitAnswer,
                tags=["kiosk"], summary="A visit's place in line and estimate range",
                description="For the kiosk right after a check-in (it knows the visit id). "
                "Place in line and range only. Unknown visits count as misses.",
                responses=answer(
                    200, WAIT_EXAMPLE, "place in line and the estimate range",
                    r404=("no such visit here", "no visit 'v-0' at clinic 'north'"),
                    r429=("too many misses", "too many unknown codes or failed checks; try "
                          "again in a minute or see the front desk")))
    async def visit_wait(clinic_id: ClinicId, visit_id: VisitId, request: Request,
                         principal: Principal = Depends(LOOKUP)) -> WaitAnswer:
        principal.require_clinic(clinic_id)
        client = limiter.client(request, principal)
        now = clock.now()
        await limiter.admit(client, now, "visit", count=False)
        status = await desk.wait_for_visit(clinic_id, visit_id, now)
        if status is None:
            await limiter.missed(client, now)
            m.LOOKUPS.labels("visit", "unknown").inc()
            raise NotFound(f"no visit {visit_id!r} at clinic {clinic_id!r}",
                           code="unknown_visit")
        m.LOOKUPS.labels("visit", "found").inc()
        await tell(clinic_id, status, "kiosk", now)  # the kiosk follows its check-in
        return WaitAnswer.of(status)

    @router.get("/clinics/{clinic_id}/tickets/{ticket_code}/wait", response_model=WaitAnswer,
                tags=["kiosk"], summary="Where am I in line? (by ticket code)",
                description="Place in line and the estimate range for today's ticket code, "
                "nothing else. Rate-limited per client: CLINICFLOW_CHECKIN_LOOKUP_RATE_PER_"
                "MINUTE lookups and CLINICFLOW_CHECKIN_LOOKUP_MISSES_PER_MINUTE unknown codes "
                "a minute, then 429 with Retry-After.",
                responses=answer(
                    200, WAIT_EXAMPLE, "place in line and the estimate range",
                    r404=("no such ticket today", "no ticket 'Z-9' today at clinic 'north'"),
                    r429=("too many lookups or unknown codes",
                          "more than 20 lookups a minute; try again in a minute")))
    async def ticket_wait(clinic_id: ClinicId,
                          ticket_code: Annotated[str, Path(
                              max_length=12, examples=["A-17"],
                              description="the ticket the patient was given on arrival")],
                          request: Request,
                          principal: Principal = Depends(LOOKUP)) -> WaitAnswer:
        principal.require_clinic(clinic_id)
        client = limiter.client(request, principal)
        now = clock.now()
        await limiter.admit(client, now, "ticket")
        status = await desk.wait_for_ticket(clinic_id, ticket_code, now)
        if status is None:
            await limiter.missed(client, now)
            m.LOOKUPS.labels("ticket", "unknown").inc()
            raise NotFound(f"no ticket {ticket_code[:12]!r} today at clinic {clinic_id!r}",
                           code="unknown_ticket")
        m.LOOKUPS.labels("ticket", "found").inc()
        await tell(clinic_id, status, "status", now)
        return WaitAnswer.of(status)

    return router


def _content_type(request: Request, accepted: tuple[str, ...], hint: str) -> None:
    given = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if given and given not in accepted:
        raise HTTPException(415, detail=f"content type {given!r} is not accepted here: {hint}")


def _import_answer(result: ImportResult) -> ImportAnswer:
    return ImportAnswer(dry_run=result.dry_run, rows=result.rows, created=result.created,
                        updated=result.updated, unchanged=result.unchanged,
                        restored=result.restored, skipped=import_problems(result.skipped),
                        ignored_columns=result.ignored_columns)


def _arrival_answer(result: ArrivalResult) -> dict[str, Any]:
    return {"visit_id": result.visit_id, "ticket_code": result.ticket_code,
            "event_id": result.event_id, "late": result.late,
            "appointment_id": result.appointment_id, "provider_id": result.provider_id,
            "visit_type": result.visit_type, "priority": result.priority,
            "patient_ref": result.patient_ref}
