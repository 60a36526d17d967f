"""Checkin's HTTP schemas: the request and answer models of every route, their examples
(shown in the OpenAPI document; a unit test checks each is valid), and the refusals each
route documents.
"""

from __future__ import annotations

from datetime import date
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, Field

from services.checkin.desk import ScheduleRejected
from services.checkin.domain import ID_PATTERN, WaitStatus
from services.checkin.schedule import RowProblem
from shared.events import CancelReason, Priority
from shared.refusals import Invalid

# what an id in a path or a body looks like
ID_TEXT = ID_PATTERN.pattern

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
         "resource": {"resourceType": "Patient", "id": "ehr-448120", "birthDate": "1980-04-02",
                      "name": [{"family": "Smith", "given": ["Jane"]}]}},
        {"resource": {"resourceType": "Practitioner", "id": "dr-lee",
                      "name": [{"prefix": ["Dr."], "given": ["Ada"], "family": "Lee"}]}},
        {"resource": {"resourceType": "Location", "id": "r5", "name": "Exam room 5"}},
        {"resource": {
            "resourceType": "Appointment", "id": "apt-0815-lee", "status": "booked",
            "appointmentType": {"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/v2-0276",
                "code": "FOLLOWUP"}]},
            "start": "2026-03-02T08:15:00-05:00", "minutesDuration": 15,
            "participant": [{"actor": {"reference": "Patient/ehr-448120"},
                             "status": "accepted"},
                            {"actor": {"reference": "Practitioner/dr-lee",
                                       "display": "Dr. Ada Lee"}, "status": "accepted"},
                            {"actor": {"reference": "Location/r5"}, "status": "accepted"}]}},
    ],
}
KIOSK_CODE_TEXT = "the short code from the appointment's confirmation (``kiosk_code`` of the " \
    "schedule): six letters and digits, any case, with or without the dash"


# ------------------------------------------------------------------ models


class ImportProblem(BaseModel):
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
    skipped: list[ImportProblem] = Field(default_factory=list,
                                   examples=[[{"line": 30, "appointment_id": "apt-1",
                                               "reason": "status 'proposed' is not on the "
                                                         "schedule"}]])
    ignored_columns: list[str] = Field(default_factory=list, examples=[["patient_name"]])
    replayed: bool = False


class ImportRejected(BaseModel):
    """Nothing was imported: every bad row, with its line and the reason."""

    detail: str = Field(examples=["2 of 42 rows are invalid; nothing was imported"])
    errors: list[ImportProblem]


class AppointmentRow(BaseModel):
    appointment_id: str = Field(examples=["apt-0815-lee"])
    patient_ref: str = Field(examples=["p-7f3a9c"])
    provider_id: str = Field(examples=["dr-lee"])
    provider_name: str = Field(description="how the clinic calls the provider "
                                           "(configuration, else an imported FHIR name, "
                                           "else the id)", examples=["Dr. Ada Lee"])
    visit_type: str = Field(examples=["follow_up"])
    scheduled_at: AwareDatetime = Field(description="on the clinic's clock (its UTC offset)",
                                        examples=["2026-03-02T08:15:00-05:00"])
    kiosk_code: str | None = Field(None, description="the short code the patient types at "
                                   "the kiosk (send it with the confirmation)",
                                   examples=["K7P-4QX"])
    duration_minutes: int | None = Field(None, examples=[15])
    status: Literal["booked", "cancelled", "arrived", "no_show"] = Field(examples=["booked"])
    visit_id: str | None = Field(None, description="the arrival's visit, once arrived")
    kiosk_check: bool = Field(description="a date-of-birth + initials check is on file "
                                          "(the values themselves are never kept)")


class ScheduleAnswer(BaseModel):
    clinic_id: str = Field(examples=["north"])
    day: date = Field(description="the clinic's calendar day, in its own zone",
                      examples=["2026-03-02"])
    timezone: str = Field(description="the clinic's IANA zone", examples=["America/New_York"])
    appointments: list[AppointmentRow]


class ArrivalRequest(BaseModel):
    """A patient checking in: scheduled (``appointment_id``; the rest comes from the
    schedule and may be overridden) or a walk-in (``visit_type`` required;
    ``provider_id`` null means the first available provider)."""

    appointment_id: str | None = Field(None, pattern=ID_TEXT, examples=["apt-0815-lee"])
    provider_id: str | None = Field(None, pattern=ID_TEXT,
                                    description="null: first available", examples=["dr-lee"])
    visit_type: str | None = Field(None, min_length=1, max_length=40,
                                   description="one of the clinic's visit types (or a code "
                                   "its map turns into one, e.g. FOLLOWUP); anything else is "
                                   "a 422 naming the allowed values", examples=["follow_up"])
    priority: Priority = "routine"
    patient_ref: str | None = Field(None, pattern=ID_TEXT,
                                    description="the patient (walk-ins): this service's "
                                    "pseudonym (pt- and 24 hex digits) as it is; any other "
                                    "identifier (an MRN) is published as its keyed pseudonym",
                                    examples=["pt-9d8e7f00112233445566aabb"])


ARRIVAL_EXAMPLES: dict[str, Any] = {
    "scheduled": {"summary": "A scheduled patient (from the day's schedule)",
                  "value": {"appointment_id": "apt-0815-lee"}},
    "walk_in": {"summary": "A walk-in for the first available provider, urgent",
                "value": {"provider_id": None, "visit_type": "minor_procedure",
                          "priority": "urgent",
                          "patient_ref": "pt-9d8e7f00112233445566aabb"}},
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
    patient_ref: str | None = Field(None, description="the pseudonymous reference "
                                    "published: a walk-in's given identifier (an MRN) as "
                                    "its keyed pseudonym", examples=["pt-2b9f0c5e7a1d3c4b5a6f7e8d"])
    replayed: bool = Field(False, description="true: the answer to an earlier request "
                                              "with the same Idempotency-Key")


class KioskRequest(BaseModel):
    """Self check-in: the appointment code, or date of birth and initials (checked
    against today's schedule as a salted hash; never published, logged or echoed)."""

    appointment_code: str | None = Field(None, min_length=1, max_length=64,
                                         description=KIOSK_CODE_TEXT, examples=["K7P-4QX"])
    date_of_birth: date | None = Field(None, examples=["1980-04-02"])
    initials: str | None = Field(None, min_length=1, max_length=12, examples=["JS"])


KIOSK_EXAMPLES: dict[str, Any] = {
    "code": {"summary": "With the appointment's kiosk code",
             "value": {"appointment_code": "K7P-4QX"}},
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
    provider_name: str | None = Field(None, examples=["Dr. Kim"])
    visit_type: str | None = Field(examples=["physical"])
    scheduled_at: AwareDatetime = Field(description="on the clinic's clock (its UTC offset)",
                                        examples=["2026-03-02T09:00:00-05:00"])
    patient_ref: str | None = Field(description="pseudonymous: look the patient up in the "
                                                "practice system to call", examples=["p-1b2c3d"])
    arrived_later: bool = Field(description="the patient came after all (checked in late)")


class FollowUpAnswer(BaseModel):
    clinic_id: str = Field(examples=["north"])
    day: date = Field(description="the clinic's calendar day, in its own zone",
                      examples=["2026-03-02"])
    timezone: str = Field(description="the clinic's IANA zone", examples=["America/New_York"])
    no_shows: list[FollowUpRow]


class NamedEntryAnswer(BaseModel):
    id: str = Field(examples=["dr-lee"])
    name: str = Field(examples=["Dr. Ada Lee"])
    source: Literal["configuration", "fhir", "schedule"] = Field(
        description="configuration (CLINICFLOW_CLINICS, the first source), fhir (an imported "
                    "Practitioner or Location) or schedule (an id on an imported schedule "
                    "with no name anywhere: shown as the id)", examples=["fhir"])


class DirectoryAnswer(BaseModel):
    """A clinic as its people know it: its name and zone, its providers and rooms by
    name. Events and metrics keep the ids; screens and messages show these names."""

    clinic_id: str = Field(examples=["north"])
    name: str = Field(examples=["North Family Practice"])
    timezone: str = Field(examples=["America/New_York"])
    providers: list[NamedEntryAnswer]
    rooms: list[NamedEntryAnswer]


class RefusalAnswer(BaseModel):
    """Why a request was refused, in words; ``code`` names the refusal's kind (present
    for refusals of the clinic's rules: not_found, already_arrived, unavailable, ...)."""

    detail: str = Field(examples=["no appointment 'apt-9' on clinic 'north''s schedule"])
    code: str | None = Field(None, examples=["not_found"])


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
    "clinic_id": "north", "day": "2026-03-02", "timezone": "America/New_York",
    "appointments": [
        {"appointment_id": "apt-0815-lee", "patient_ref": "p-7f3a9c", "provider_id": "dr-lee",
         "provider_name": "Dr. Ada Lee", "visit_type": "follow_up",
         "scheduled_at": "2026-03-02T08:15:00-05:00", "kiosk_code": "K7P-4QX",
         "duration_minutes": 15, "status": "arrived", "visit_id": "v-3f2a9c1e5b7d4a60",
         "kiosk_check": True},
        {"appointment_id": "apt-0830-lee", "patient_ref": "p-1b2c3d", "provider_id": "dr-lee",
         "provider_name": "Dr. Ada Lee", "visit_type": "physical",
         "scheduled_at": "2026-03-02T08:30:00-05:00", "kiosk_code": "M3W-9TR",
         "duration_minutes": 30, "status": "booked", "visit_id": None,
         "kiosk_check": False}]}
ARRIVAL_ANSWER_EXAMPLE: dict[str, Any] = {
    "visit_id": "v-3f2a9c1e5b7d4a60", "ticket_code": "A-17", "event_id": "0b6c3e1f9a8d4c2b",
    "late": False, "appointment_id": "apt-0815-lee", "provider_id": "dr-lee",
    "visit_type": "follow_up", "priority": "routine", "replayed": False}
CANCEL_ANSWER_EXAMPLE: dict[str, Any] = {"visit_id": "v-3f2a9c1e5b7d4a60", "ticket_code": "A-17",
                                         "reason": "left_without_being_seen", "replayed": False}
FOLLOW_UP_EXAMPLE: dict[str, Any] = {
    "clinic_id": "north", "day": "2026-03-02", "timezone": "America/New_York",
    "no_shows": [{"appointment_id": "apt-0900-kim", "provider_id": "dr-kim",
                  "provider_name": "Dr. Kim", "visit_type": "physical",
                  "scheduled_at": "2026-03-02T09:00:00-05:00",
                  "patient_ref": "p-1b2c3d", "arrived_later": False}]}
DIRECTORY_EXAMPLE: dict[str, Any] = {
    "clinic_id": "north", "name": "North Family Practice", "timezone": "America/New_York",
    "providers": [{"id": "dr-kim", "name": "dr-kim", "source": "schedule"},
                  {"id": "dr-lee", "name": "Dr. Ada Lee", "source": "fhir"},
                  {"id": "p1", "name": "Dr. Okafor", "source": "configuration"}],
    "rooms": [{"id": "r1", "name": "Room 1", "source": "configuration"},
              {"id": "r5", "name": "Exam room 5", "source": "fhir"}]}
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
    return {"model": RefusalAnswer, "description": when,
            "content": {"application/json": {"example": {"detail": detail}}}}


def import_problems(items: list[RowProblem]) -> list[ImportProblem]:
    """The parser's row problems as the answer shows them."""
    return [ImportProblem(line=p.line, appointment_id=p.appointment_id, reason=p.reason)
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


def rejected_schedule(rejected: ScheduleRejected) -> dict[str, Any]:
    """The 422 body of an import with bad rows: the refusal and every bad row."""
    return ImportRejected(detail=rejected.detail,
                          errors=import_problems(rejected.errors)).model_dump()
