"""Checkin's HTTP API: routes only (role check, clinic check, Idempotency-Key, the desk).

Every route names its roles; every route with a clinic checks the credential opens
that clinic. Refusals from the desk become 4xx answers that say what is wrong.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Header, HTTPException, Path, Query, Request
from pydantic import AwareDatetime, BaseModel, Field

from services.checkin import metrics as m
from services.checkin.desk import (
    ArrivalResult,
    CheckinDesk,
    ImportResult,
    Overrides,
    ScheduleRejected,
    WalkIn,
)
from services.checkin.domain import CheckinRefused, WaitStatus
from services.checkin.schedule import RowProblem, parse_csv, parse_fhir_bundle
from services.checkin.store import CheckinStore
from shared.auth import Principal, require_role
from shared.events import CancelReason, Priority
from shared.idempotency import IdempotencyStore, fingerprint
from shared.refusals import Invalid

_ID = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
ClinicId = Annotated[str, Path(pattern=_ID, description="the clinic", examples=["north"])]
VisitId = Annotated[str, Path(pattern=_ID, description="the visit (from the arrival)",
                              examples=["v-3f2a9c1e5b7d4a60"])]
IdempotencyKey = Annotated[str | None, Header(
    alias="Idempotency-Key", max_length=200,
    description="makes a retried command the same command: same answer, nothing new "
                "published", examples=["arrival-7c1e"])]
Day = Annotated[date | None, Query(description="the clinic's day (default: today)",
                                   examples=["2026-03-02"])]

FRONT_DESK = require_role("front_desk", "manager")
KIOSK = require_role("kiosk", "front_desk")
LOOKUP = require_role("kiosk", "front_desk", "manager")

CSV_EXAMPLE = (
    "appointment_id,patient_ref,provider_id,visit_type,scheduled_at,duration_minutes,dob,"
    "initials\n"
    "apt-0815-lee,p-7f3a9c,dr-lee,follow_up,2026-03-02T08:15:00-05:00,15,1980-04-02,JS\n"
    "apt-0830-lee,p-1b2c3d,dr-lee,physical,2026-03-02T08:30:00-05:00,30,,\n"
)
FHIR_EXAMPLE: dict[str, Any] = {
    "resourceType": "Bundle",
    "type": "collection",
    "entry": [
        {"fullUrl": "urn:uuid:6b2e6c4e-0001",
         "resource": {"resourceType": "Patient", "id": "p-7f3a9c", "birthDate": "1980-04-02",
                      "name": [{"family": "Smith", "given": ["Jane"]}]}},
        {"resource": {
            "resourceType": "Appointment", "id": "apt-0815-lee", "status": "booked",
            "appointmentType": {"coding": [{"code": "follow_up"}]},
            "start": "2026-03-02T08:15:00-05:00", "minutesDuration": 15,
            "participant": [{"actor": {"reference": "Patient/p-7f3a9c"}, "status": "accepted"},
                            {"actor": {"reference": "Practitioner/dr-lee"},
                             "status": "accepted"}]}},
    ],
}


# ------------------------------------------------------------------ models


class Problem(BaseModel):
    """A row that was refused or skipped: where it is in the file and why."""

    line: int = Field(examples=[4])
    appointment_id: str | None = Field(None, examples=["apt-0900-kim"])
    reason: str = Field(examples=["scheduled_at '2026-03-02 09:00' has no UTC offset"])


class ImportAnswer(BaseModel):
    """What an import did. ``created`` and ``updated`` were published; ``unchanged``
    rows published nothing; ``restored``: only the kiosk check data changed."""

    dry_run: bool = False
    rows: int = Field(examples=[42])
    created: list[str] = Field(examples=[["apt-0815-lee"]])
    updated: list[str] = Field(examples=[["apt-0830-lee"]])
    unchanged: int = Field(examples=[40])
    restored: int = Field(0, examples=[0])
    skipped: list[Problem] = Field(default_factory=list,
                                   examples=[[{"line": 30, "appointment_id": "apt-1",
                                               "reason": "status 'proposed' is not on the "
                                                         "schedule"}]])
    ignored_columns: list[str] = Field(default_factory=list, examples=[["patient_name"]])
    replayed: bool = False


class ImportRejected(BaseModel):
    """Nothing was imported: every bad row, with its line and the reason."""

    detail: str = Field(examples=["2 of 42 rows are invalid; nothing was imported"])
    errors: list[Problem]


class AppointmentRow(BaseModel):
    appointment_id: str = Field(examples=["apt-0815-lee"])
    patient_ref: str = Field(examples=["p-7f3a9c"])
    provider_id: str = Field(examples=["dr-lee"])
    visit_type: str = Field(examples=["follow_up"])
    scheduled_at: AwareDatetime = Field(examples=["2026-03-02T13:15:00Z"])
    duration_minutes: int | None = Field(None, examples=[15])
    status: Literal["booked", "cancelled", "arrived", "no_show"] = Field(examples=["booked"])
    visit_id: str | None = Field(None, description="the arrival's visit, once arrived")
    kiosk_check: bool = Field(description="a date-of-birth + initials check is on file "
                                          "(the values themselves are never kept)")


class ScheduleAnswer(BaseModel):
    clinic_id: str = Field(examples=["north"])
    day: date = Field(examples=["2026-03-02"])
    appointments: list[AppointmentRow]


class ArrivalRequest(BaseModel):
    """A patient checking in: scheduled (``appointment_id``; the rest comes from the
    schedule and may be overridden) or a walk-in (``visit_type`` required;
    ``provider_id`` null means the first available provider)."""

    appointment_id: str | None = Field(None, pattern=_ID, examples=["apt-0815-lee"])
    provider_id: str | None = Field(None, pattern=_ID, description="null: first available",
                                    examples=["dr-lee"])
    visit_type: str | None = Field(None, min_length=1, max_length=40, examples=["follow_up"])
    priority: Priority = "routine"
    patient_ref: str | None = Field(None, pattern=_ID,
                                    description="pseudonymous patient reference (walk-ins)",
                                    examples=["p-7f3a9c"])


ARRIVAL_EXAMPLES: dict[str, Any] = {
    "scheduled": {"summary": "A scheduled patient (from the day's schedule)",
                  "value": {"appointment_id": "apt-0815-lee"}},
    "walk_in": {"summary": "A walk-in for the first available provider, urgent",
                "value": {"provider_id": None, "visit_type": "minor_procedure",
                          "priority": "urgent", "patient_ref": "p-9d8e7f"}},
    "walk_in_provider": {"summary": "A walk-in for a named provider",
                         "value": {"provider_id": "dr-lee", "visit_type": "follow_up"}},
}


class WaitAnswer(BaseModel):
    """Place in line and the estimate range, nothing else. ``waiting`` false: the
    patient has been called (or the visit ended). Minutes are null until flow has made
    its first estimate."""

    ticket_code: str = Field(examples=["A-17"])
    waiting: bool = Field(examples=[True])
    position: int | None = Field(None, examples=[3])
    low_minutes: int | None = Field(None, examples=[10])
    high_minutes: int | None = Field(None, examples=[25])

    @classmethod
    def of(cls, status: WaitStatus) -> WaitAnswer:
        return cls(ticket_code=status.ticket_code, waiting=status.waiting,
                   position=status.position, low_minutes=status.low_minutes,
                   high_minutes=status.high_minutes)


class ArrivalAnswer(BaseModel):
    """The arrival as published: the ticket code is what screens show instead of a name."""

    visit_id: str = Field(examples=["v-3f2a9c1e5b7d4a60"])
    ticket_code: str = Field(examples=["A-17"])
    event_id: str = Field(examples=["0b6c3e1f9a8d4c2b"])
    late: bool = Field(examples=[False])
    appointment_id: str | None = Field(None, examples=["apt-0815-lee"])
    provider_id: str | None = Field(None, examples=["dr-lee"])
    visit_type: str = Field(examples=["follow_up"])
    priority: Priority = "routine"
    replayed: bool = Field(False, description="true: the answer to an earlier request "
                                              "with the same Idempotency-Key")


class KioskRequest(BaseModel):
    """Self check-in: the appointment code, or date of birth and initials (checked
    against today's schedule as a salted hash; never published, logged or echoed)."""

    appointment_code: str | None = Field(None, min_length=1, max_length=64,
                                         examples=["apt-0815-lee"])
    date_of_birth: date | None = Field(None, examples=["1980-04-02"])
    initials: str | None = Field(None, min_length=1, max_length=12, examples=["JS"])


KIOSK_EXAMPLES: dict[str, Any] = {
    "code": {"summary": "With the appointment code", "value": {"appointment_code": "apt-0815-lee"}},
    "identity": {"summary": "With date of birth and initials",
                 "value": {"date_of_birth": "1980-04-02", "initials": "JS"}},
}


class KioskAnswer(BaseModel):
    ticket_code: str = Field(examples=["A-17"])
    visit_id: str = Field(description="to follow this visit's wait from the kiosk",
                          examples=["v-3f2a9c1e5b7d4a60"])
    late: bool = Field(examples=[False])
    wait: WaitAnswer
    replayed: bool = False


class CancelRequest(BaseModel):
    reason: CancelReason = Field("cancelled", examples=["left_without_being_seen"])


CANCEL_EXAMPLES: dict[str, Any] = {
    "left": {"summary": "The patient left", "value": {"reason": "left_without_being_seen"}},
    "rescheduled": {"summary": "Rescheduled at the desk", "value": {"reason": "rescheduled"}},
}


class CancelAnswer(BaseModel):
    visit_id: str = Field(examples=["v-3f2a9c1e5b7d4a60"])
    ticket_code: str = Field(examples=["A-17"])
    reason: CancelReason = Field(examples=["left_without_being_seen"])
    replayed: bool = False


class FollowUpRow(BaseModel):
    appointment_id: str = Field(examples=["apt-0900-kim"])
    provider_id: str | None = Field(examples=["dr-kim"])
    visit_type: str | None = Field(examples=["physical"])
    scheduled_at: AwareDatetime = Field(examples=["2026-03-02T14:00:00Z"])
    patient_ref: str | None = Field(description="pseudonymous: look the patient up in the "
                                                "practice system to call", examples=["p-1b2c3d"])
    arrived_later: bool = Field(description="the patient came after all (checked in late)")


class FollowUpAnswer(BaseModel):
    clinic_id: str = Field(examples=["north"])
    day: date = Field(examples=["2026-03-02"])
    no_shows: list[FollowUpRow]


class Refusal(BaseModel):
    detail: str = Field(examples=["no appointment 'apt-9' on clinic 'north''s schedule"])


# --------------------------------------------------------- answer examples
# shown in the OpenAPI document for each route's success answer (a unit test checks each
# one is a valid answer of its route's model)

WAIT_EXAMPLE: dict[str, Any] = {"ticket_code": "A-17", "waiting": True, "position": 3,
                                "low_minutes": 10, "high_minutes": 25}
IMPORT_ANSWER_EXAMPLE: dict[str, Any] = {
    "dry_run": False, "rows": 42, "created": ["apt-0815-lee"], "updated": ["apt-0830-lee"],
    "unchanged": 40, "restored": 0,
    "skipped": [{"line": 30, "appointment_id": "apt-1",
                 "reason": "status 'proposed' is not on the schedule"}],
    "ignored_columns": ["patient_name"], "replayed": False}
SCHEDULE_EXAMPLE: dict[str, Any] = {
    "clinic_id": "north", "day": "2026-03-02",
    "appointments": [
        {"appointment_id": "apt-0815-lee", "patient_ref": "p-7f3a9c", "provider_id": "dr-lee",
         "visit_type": "follow_up", "scheduled_at": "2026-03-02T13:15:00Z",
         "duration_minutes": 15, "status": "arrived", "visit_id": "v-3f2a9c1e5b7d4a60",
         "kiosk_check": True},
        {"appointment_id": "apt-0830-lee", "patient_ref": "p-1b2c3d", "provider_id": "dr-lee",
         "visit_type": "physical", "scheduled_at": "2026-03-02T13:30:00Z",
         "duration_minutes": 30, "status": "booked", "visit_id": None,
         "kiosk_check": False}]}
ARRIVAL_ANSWER_EXAMPLE: dict[str, Any] = {
    "visit_id": "v-3f2a9c1e5b7d4a60", "ticket_code": "A-17", "event_id": "0b6c3e1f9a8d4c2b",
    "late": False, "appointment_id": "apt-0815-lee", "provider_id": "dr-lee",
    "visit_type": "follow_up", "priority": "routine", "replayed": False}
CANCEL_ANSWER_EXAMPLE: dict[str, Any] = {"visit_id": "v-3f2a9c1e5b7d4a60", "ticket_code": "A-17",
                                         "reason": "left_without_being_seen", "replayed": False}
FOLLOW_UP_EXAMPLE: dict[str, Any] = {
    "clinic_id": "north", "day": "2026-03-02",
    "no_shows": [{"appointment_id": "apt-0900-kim", "provider_id": "dr-kim",
                  "visit_type": "physical", "scheduled_at": "2026-03-02T14:00:00Z",
                  "patient_ref": "p-1b2c3d", "arrived_later": False}]}
KIOSK_ANSWER_EXAMPLE: dict[str, Any] = {
    "ticket_code": "A-17", "visit_id": "v-3f2a9c1e5b7d4a60", "late": False,
    "wait": {"ticket_code": "A-17", "waiting": True, "position": 3, "low_minutes": None,
             "high_minutes": None},
    "replayed": False}


def answer(status: int, example: Any, description: str,
           **refusals: tuple[str, str]) -> dict[int | str, dict[str, Any]]:
    """A route's documented answers: the success one with its example, and refusals
    given as ``r404=("when", "an example detail")``."""
    documented: dict[int | str, dict[str, Any]] = {
        status: {"description": description,
                 "content": {"application/json": {"example": example}}}}
    for name, (when, detail) in refusals.items():
        documented[int(name.removeprefix("r"))] = refusal(when, detail)
    return documented


def refusal(when: str, detail: str) -> dict[str, Any]:
    return {"model": Refusal, "description": when,
            "content": {"application/json": {"example": {"detail": detail}}}}


def _problems(items: list[RowProblem]) -> list[Problem]:
    return [Problem(line=p.line, appointment_id=p.appointment_id, reason=p.reason)
            for p in items]


COMMON_ERRORS: dict[int | str, dict[str, Any]] = {
    400: refusal("the body cannot be read (not UTF-8)", "There was an error parsing the body"),
    401: refusal("no or unknown bearer token", "unknown or revoked token"),
    403: refusal("role not allowed, or clinic not opened by the credential",
                 "role 'kiosk' may not do this (allowed: front_desk, manager)"),
    422: {"model": Invalid, "description": "invalid request: ``detail`` names each field",
          "content": {"application/json": {"example": {
              "detail": "invalid request: priority: Input should be 'routine' or 'urgent'",
              "errors": [{"type": "literal_error", "loc": ["body", "priority"],
                          "msg": "Input should be 'routine' or 'urgent'"}]}}}},
}


# ------------------------------------------------------------------ limits


class LookupLimiter:
    """Fixed one-minute windows per client (credential + address): at most
    ``per_minute`` lookups, and at most ``misses_per_minute`` unknown codes or failed
    kiosk checks (guessing), each answered 429 with ``Retry-After`` once exceeded."""

    def __init__(self, store: CheckinStore, per_minute: int, misses_per_minute: int) -> None:
        self.store = store
        self.per_minute = per_minute
        self.misses_per_minute = misses_per_minute

    @staticmethod
    def client(request: Request, principal: Principal) -> str:
        address = request.client.host if request.client else "-"
        return hashlib.sha256(f"{principal.name}|{address}".encode()).hexdigest()[:20]

    @staticmethod
    def _retry_after(now: datetime) -> str:
        return str(max(1, 60 - math.floor(now.timestamp()) % 60))

    async def admit(self, client: str, now: datetime, kind: str, *, count: bool = True) -> None:
        minute = int(now.timestamp() // 60)
        if await self.store.counted("miss", client, minute) >= self.misses_per_minute:
            m.LOOKUPS.labels(kind, "limited").inc()
            raise HTTPException(429, detail="too many unknown codes or failed checks; "
                                "try again in a minute or see the front desk",
                                headers={"Retry-After": self._retry_after(now)})
        if count and await self.store.count("lookup", client, minute) > self.per_minute:
            m.LOOKUPS.labels(kind, "limited").inc()
            raise HTTPException(429, detail=f"more than {self.per_minute} lookups a minute; "
                                "try again in a minute",
                                headers={"Retry-After": self._retry_after(now)})

    async def missed(self, client: str, now: datetime) -> None:
        await self.store.count("miss", client, int(now.timestamp() // 60))


# ------------------------------------------------------------------ router


def make_router(desk: CheckinDesk, idempotency: IdempotencyStore,
                limiter: LookupLimiter) -> APIRouter:
    router = APIRouter(responses=COMMON_ERRORS)

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
        body = await request.body()
        hasher = desk.identity_hasher(clinic_id)
        parse = parse_csv if fmt == "csv" else parse_fhir_bundle

        async def action() -> tuple[int, Any]:
            parsed = parse(body, clinic_id=clinic_id, hash_identity=hasher)
            # ScheduleRejected becomes the 422 listing every bad row (see rejected_schedule)
            result = await desk.import_schedule(clinic_id, parsed, fmt=fmt, dry_run=dry_run,
                                                now=datetime.now(UTC))
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
        409: refusal("another import of this clinic is running",
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
                 "`appointment.scheduled`; an identical re-import publishes nothing. Columns: "
                 "appointment_id, patient_ref, provider_id, visit_type, scheduled_at (ISO "
                 "8601 with offset); optional duration_minutes, status (booked|cancelled), "
                 "dob + initials (kiosk check, kept only as a salted hash), clinic_id.",
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
                 "salted hash). All entries or none; errors name each entry's line. Status "
                 "booked/pending/arrived/checked-in/fulfilled is booked; cancelled/noshow/"
                 "entered-in-error is cancelled; proposed/waitlist entries are skipped.",
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
                description="Every appointment of the clinic's day, with its arrival (visit "
                "id) or no-show. No names: a pseudonymous patient reference.",
                responses=answer(200, SCHEDULE_EXAMPLE, "the day's appointments"))
    async def schedule(clinic_id: ClinicId, day: Day = None,
                       principal: Principal = Depends(FRONT_DESK)) -> ScheduleAnswer:
        principal.require_clinic(clinic_id)
        the_day = day or desk.today(datetime.now(UTC))
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
                provider_id=a.provider_id, visit_type=a.visit_type,
                scheduled_at=a.scheduled_at, duration_minutes=a.duration_minutes,
                status=status, visit_id=state.arrived_visit, kiosk_check=bool(a.identity)))
        return ScheduleAnswer(clinic_id=clinic_id, day=the_day, appointments=rows)

    # ----------------------------------------------------------- arrivals

    @router.post("/clinics/{clinic_id}/arrivals", status_code=201, response_model=ArrivalAnswer,
                 tags=["arrivals"], summary="Check a patient in (scheduled or walk-in)",
                 description="Publishes `patient.arrived` with a new ticket code. A scheduled "
                 "arrival is late when more than CLINICFLOW_CHECKIN_LATE_AFTER_MINUTES after "
                 "the appointment. A second arrival for the same appointment is a 409; the "
                 "same request again with the same Idempotency-Key gets the first answer.",
                 responses=answer(
                     201, ARRIVAL_ANSWER_EXAMPLE, "checked in: the ticket code to show",
                     r404=("no such appointment on this clinic's schedule",
                           "no appointment 'apt-9' on clinic 'north''s schedule"),
                     r409=("already checked in, or cancelled",
                           "appointment 'apt-0815-lee' is already checked in (visit "
                           "v-3f2a9c1e5b7d4a60)"),
                     r413=("the body is larger than the limit",
                           "request body larger than 1048576 bytes"),
                     r503=("Kafka unavailable; nothing recorded",
                           "could not publish to Kafka; nothing was recorded, try again")))
    async def check_in(clinic_id: ClinicId, request: Request,
                       body: Annotated[ArrivalRequest, Body(openapi_examples=ARRIVAL_EXAMPLES)],
                       idempotency_key: IdempotencyKey = None,
                       principal: Principal = Depends(FRONT_DESK)) -> ArrivalAnswer:
        principal.require_clinic(clinic_id)
        if body.appointment_id is None and body.visit_type is None:
            raise HTTPException(422, detail="visit_type is required for a walk-in (an arrival "
                                "without appointment_id)")

        async def action() -> tuple[int, Any]:
            now = datetime.now(UTC)
            if body.appointment_id is not None:
                result = await desk.arrive_scheduled(
                    clinic_id, body.appointment_id, channel="front_desk", now=now,
                    overrides=Overrides(provider_id=body.provider_id,
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
                 "cancelled, rescheduled, entered in error). Only a waiting visit can be "
                 "cancelled. Kiosk credentials cannot cancel.",
                 responses=answer(
                     200, CANCEL_ANSWER_EXAMPLE, "cancelled",
                     r404=("no such visit here",
                           "no visit 'v-3f2a9c1e5b7d4a60' at clinic 'north'"),
                     r409=("not waiting any more",
                           "visit 'v-3f2a9c1e5b7d4a60' is roomed, not waiting: it can no "
                           "longer be cancelled"),
                     r503=("Kafka unavailable; nothing recorded",
                           "could not publish to Kafka; nothing was recorded, try again")))
    async def cancel(clinic_id: ClinicId, visit_id: VisitId, request: Request,
                     body: Annotated[CancelRequest, Body(openapi_examples=CANCEL_EXAMPLES)],
                     idempotency_key: IdempotencyKey = None,
                     principal: Principal = Depends(FRONT_DESK)) -> CancelAnswer:
        principal.require_clinic(clinic_id)

        async def action() -> tuple[int, Any]:
            view = await desk.cancel(clinic_id, visit_id, body.reason, now=datetime.now(UTC))
            return 200, {"visit_id": view.visit_id, "ticket_code": view.ticket_code,
                         "reason": body.reason}

        answer, replayed = await once(request, clinic_id, idempotency_key, action)
        return CancelAnswer(**{**answer, "replayed": replayed})

    @router.get("/clinics/{clinic_id}/no-shows", response_model=FollowUpAnswer,
                tags=["arrivals"], summary="The day's no-shows to call and reschedule",
                description="Appointments published as `patient.no_show` (no arrival "
                "CLINICFLOW_CHECKIN_NO_SHOW_AFTER_MINUTES after their time). No names: the "
                "pseudonymous patient reference is looked up in the practice system.",
                responses=answer(200, FOLLOW_UP_EXAMPLE, "the no-shows to call"))
    async def no_shows(clinic_id: ClinicId, day: Day = None,
                       principal: Principal = Depends(FRONT_DESK)) -> FollowUpAnswer:
        principal.require_clinic(clinic_id)
        the_day = day or desk.today(datetime.now(UTC))
        rows = [FollowUpRow(appointment_id=f.appointment_id, provider_id=f.provider_id,
                            visit_type=f.visit_type, scheduled_at=f.scheduled_at,
                            patient_ref=f.patient_ref, arrived_later=f.arrived_later)
                for f in await desk.follow_up_list(clinic_id, the_day)]
        return FollowUpAnswer(clinic_id=clinic_id, day=the_day, no_shows=rows)

    # -------------------------------------------------------------- kiosk

    @router.post("/clinics/{clinic_id}/kiosk/check-ins", status_code=201,
                 response_model=KioskAnswer, tags=["kiosk"],
                 summary="Self check-in at the kiosk",
                 description="With the appointment code (case does not matter) or the date "
                 "of birth and initials, matched against today's schedule as a salted hash. "
                 "Unknown codes and failed checks count against the client's miss limit "
                 "(429 once exceeded). Answers never say whose appointment it is.",
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
        now = datetime.now(UTC)
        await limiter.admit(client, now, "kiosk")

        async def action() -> tuple[int, Any]:
            try:
                if body.appointment_code is not None:
                    result = await desk.kiosk_by_code(clinic_id, body.appointment_code, now=now)
                else:
                    assert body.date_of_birth is not None and body.initials is not None
                    result = await desk.kiosk_by_identity(clinic_id, body.date_of_birth,
                                                          body.initials, now=now)
            except CheckinRefused as refused:
                if refused.status == 404:
                    m.LOOKUPS.labels("kiosk", "unknown").inc()
                    await limiter.missed(client, now)
                raise
            m.LOOKUPS.labels("kiosk", "found").inc()
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
        now = datetime.now(UTC)
        await limiter.admit(client, now, "visit", count=False)
        status = await desk.wait_for_visit(clinic_id, visit_id, now)
        if status is None:
            await limiter.missed(client, now)
            m.LOOKUPS.labels("visit", "unknown").inc()
            raise HTTPException(404, detail=f"no visit {visit_id!r} at clinic {clinic_id!r}")
        m.LOOKUPS.labels("visit", "found").inc()
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
                          ticket_code: Annotated[str, Path(max_length=12,
                                                           examples=["A-17"])],
                          request: Request,
                          principal: Principal = Depends(LOOKUP)) -> WaitAnswer:
        principal.require_clinic(clinic_id)
        client = limiter.client(request, principal)
        now = datetime.now(UTC)
        await limiter.admit(client, now, "ticket")
        status = await desk.wait_for_ticket(clinic_id, ticket_code, now)
        if status is None:
            await limiter.missed(client, now)
            m.LOOKUPS.labels("ticket", "unknown").inc()
            raise HTTPException(404, detail=f"no ticket {ticket_code[:12]!r} today at clinic "
                                f"{clinic_id!r}")
        m.LOOKUPS.labels("ticket", "found").inc()
        return WaitAnswer.of(status)

    return router


def _content_type(request: Request, accepted: tuple[str, ...], hint: str) -> None:
    given = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if given and given not in accepted:
        raise HTTPException(415, detail=f"content type {given!r} is not accepted here: {hint}")


def _import_answer(result: ImportResult) -> ImportAnswer:
    return ImportAnswer(dry_run=result.dry_run, rows=result.rows, created=result.created,
                        updated=result.updated, unchanged=result.unchanged,
                        restored=result.restored, skipped=_problems(result.skipped),
                        ignored_columns=result.ignored_columns)


def _arrival_answer(result: ArrivalResult) -> dict[str, Any]:
    return {"visit_id": result.visit_id, "ticket_code": result.ticket_code,
            "event_id": result.event_id, "late": result.late,
            "appointment_id": result.appointment_id, "provider_id": result.provider_id,
            "visit_type": result.visit_type, "priority": result.priority}


def rejected_schedule(rejected: ScheduleRejected) -> dict[str, Any]:
    """The 422 body of an import with bad rows."""
    errors = _problems(rejected.errors)
    total = max(rejected.rows, len(errors))
    return ImportRejected(
        detail=f"{len(errors)} problem(s) in {total} row(s); nothing was imported (fix the "
               "rows and import the whole file again)",
        errors=errors).model_dump()
