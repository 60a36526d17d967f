"""FHIR R4 in and out: an EHR (or any FHIR client) books, changes and cancels
appointments, registers arrivals and departures, pushes its Subscription notifications,
and reads the clinic's day back as ``Encounter`` and ``Appointment`` resources.

In (``application/fhir+json``), every resource validated by ``fhir.resources`` models
(R4B: the same ``Appointment``, ``Encounter`` and ``Bundle`` as R4), then the desk's own
commands through ``ehr.EhrCommands``:

- ``Appointment`` (POST, PUT by id; one resource, a ``transaction``/``batch`` Bundle, or
  a rest-hook notification): the schedule import's FHIR rules (``schedule.py``: statuses,
  ``appointmentType`` codes, ``Patient.id`` -> keyed pseudonym); ``arrived`` /
  ``checked-in`` also checks the patient in, ``noshow`` marks a known one a no-show.
- ``Encounter`` (PUT by id): ``arrived``/``triaged`` checks the patient in (on the
  ``Encounter.appointment`` named, else their appointment closest to now, else as a
  walk-in), ``cancelled``/``entered-in-error`` cancels the arrival, ``finished`` ends
  a visit still waiting (left without being seen).
- ``meta.lastUpdated`` orders updates: an older one than the last applied to the same
  appointment or encounter changes nothing.

Out: ``GET .../fhir/Encounter`` (the day's visits: status, period, participant,
appointment, ticket) and ``GET .../fhir/Appointment`` (the day's appointments with
their statuses), each a ``searchset`` Bundle. Patients appear only as their
pseudonymous references.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from fhir.resources.R4B.appointment import Appointment as FhirAppointment
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.encounter import Encounter as FhirEncounter
from pydantic import ValidationError

from services.checkin.desk import CheckinDesk
from services.checkin.domain import ID_PATTERN, Appointment, VisitView
from services.checkin.ehr import EhrCommands
from services.checkin.feeds import Feed, Feeds
from services.checkin.schedule import ImportKeys, parse_fhir_bundle
from services.checkin.schemas import COMMON_ERRORS
from services.checkin.store import FEED_PENDING, CheckinStore
from shared.auth import Principal, require_role
from shared.clock import Clock
from shared.errors import Conflict, NotFound, Refusal, Rejected, status_of
from shared.idempotency import IdempotencyStore, fingerprint

FHIR_JSON = "application/fhir+json"
WRITE = require_role("front_desk", "manager")
READ = require_role("front_desk", "nurse", "manager")
ClinicId = Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$",
                               description="the clinic", examples=["north"])]
ResourceId = Annotated[str, Path(pattern=r"^[A-Za-z0-9\-.]{1,64}$",
                                 description="the resource's id", examples=["apt-0815"])]
IdempotencyKey = Annotated[str | None, Header(
    alias="Idempotency-Key", max_length=200,
    description="optional: FHIR writes are deduplicated on the resources' ids (a repeat "
                "changes nothing); with a key, a retry gets the first answer again",
    examples=["ehr-msg-7c1e"])]
Day = Annotated[date | None, Query(alias="date", description="the clinic's day in its own "
                                   "zone (default: its today)", examples=["2026-03-02"])]

ARRIVED = {"arrived", "triaged"}
ENCOUNTER_CANCELLED = {"cancelled", "entered-in-error"}
# R4 Encounter.status (required binding): anything else is refused
ENCOUNTER_STATUSES = ("planned", "arrived", "triaged", "in-progress", "onleave", "finished",
                      "cancelled", "entered-in-error", "unknown")
ENCOUNTER_STATUS = {"waiting": "arrived", "roomed": "in-progress", "checked_out": "finished",
                    "cancelled": "cancelled", "undone": "entered-in-error"}
AMBULATORY = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB",
              "display": "ambulatory"}
TICKETS = "urn:clinicflow:ticket-code"
DEFAULT_SLOT_MINUTES = 15  # an appointment's end when its schedule gave no length
APPOINTMENT_URL = "https://checkin.example/clinics/north/fhir/Appointment/apt-0815"


def _fhir(body: dict[str, Any], status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type=FHIR_JSON)


def _outcome(text: str, severity: str = "information") -> dict[str, Any]:
    return {"resourceType": "OperationOutcome",
            "issue": [{"severity": severity, "code": "informational", "diagnostics": text}]}


ISSUE_TYPE = {404: "not-found", 409: "conflict", 422: "invalid", 428: "required",
              503: "transient"}


def refused_outcome(refused: Refusal) -> Response:
    """A refusal of a FHIR write as FHIR answers it: an ``OperationOutcome`` (severity
    error, the issue type of the status, the detail naming the thing) with the status."""
    status = status_of(refused)
    body = {"resourceType": "OperationOutcome", "issue": [{
        "severity": "error", "code": ISSUE_TYPE.get(status, "processing"),
        "details": {"text": refused.code}, "diagnostics": refused.detail}]}
    headers = {"Retry-After": "2"} if status == 503 else None
    return Response(orjson.dumps(body), status_code=status, media_type=FHIR_JSON,
                    headers=headers)


def _json_body(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise Rejected(f"the body is not JSON: {exc}", "invalid_json") from None
    if not isinstance(body, dict):
        raise Rejected("the body must be a FHIR resource (a JSON object)", "invalid_resource")
    return body


def _validated(model: Any, resource: dict[str, Any]) -> Any:
    """The resource as the FHIR model reads it; ``Rejected`` naming the first bad field."""
    try:
        return model.model_validate(resource)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"]) or resource.get("resourceType", "")
        raise Rejected(f"{resource.get('resourceType')} {where}: {error['msg']}",
                       "invalid_resource") from None


def _instant(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def _reference_id(reference: Any, kind: str) -> str | None:
    if not isinstance(reference, str):
        return None
    prefix, _, ident = reference.rstrip("/").rpartition("/")
    return ident if prefix.rpartition("/")[2] == kind and ident else None


# ------------------------------------------------------------ documentation

OUTCOME_EXAMPLE = _outcome("appointment booked")
APPOINTMENT_EXAMPLE: dict[str, Any] = {
    "resourceType": "Appointment", "id": "apt-0815", "status": "booked",
    "meta": {"lastUpdated": "2026-03-02T07:55:00-05:00"},
    "appointmentType": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0276",
                                    "code": "FOLLOWUP"}]},
    "start": "2026-03-02T08:15:00-05:00", "minutesDuration": 15,
    "participant": [{"actor": {"reference": "Patient/ehr-4711"}, "status": "accepted"},
                    {"actor": {"reference": "Practitioner/dr-lee", "display": "Dr. Ada Lee"},
                     "status": "accepted"}]}
ENCOUNTER_EXAMPLE: dict[str, Any] = {
    "resourceType": "Encounter", "id": "enc-991", "status": "arrived",
    "class": AMBULATORY, "subject": {"reference": "Patient/ehr-4711"},
    "appointment": [{"reference": "Appointment/apt-0815"}]}
TRANSACTION_EXAMPLE: dict[str, Any] = {
    "resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": APPOINTMENT_EXAMPLE,
         "request": {"method": "PUT", "url": "Appointment/apt-0815"}},
        {"resource": ENCOUNTER_EXAMPLE, "request": {"method": "PUT", "url": "Encounter/enc-991"}}]}
RESPONSE_EXAMPLE: dict[str, Any] = {
    "resourceType": "Bundle", "type": "transaction-response", "entry": [
        {"response": {"status": "201 Created", "outcome": OUTCOME_EXAMPLE}},
        {"response": {"status": "200 OK", "outcome": _outcome(
            "checked in on appointment apt-0815, ticket A-17")}}]}
SEARCH_EXAMPLE: dict[str, Any] = {
    "resourceType": "Bundle", "type": "searchset", "total": 1, "entry": [
        {"fullUrl": "https://checkin.example/clinics/north/fhir/Encounter/v-3f2a9c1e5b7d4a60",
         "resource": {
            "resourceType": "Encounter", "id": "v-3f2a9c1e5b7d4a60", "status": "arrived",
            "class": AMBULATORY,
            "identifier": [{"system": TICKETS, "value": "A-17"}],
            "period": {"start": "2026-03-02T13:14:00+00:00"},
            "appointment": [{"reference": "Appointment/apt-0815"}],
            "subject": {"reference": "Patient/pt-2b9f0c5e7a1d3c4b5a6f7e8d"},
            "participant": [{"individual": {"reference": "Practitioner/dr-lee"}}]}}]}


def _body(example: dict[str, Any]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {
        FHIR_JSON: {"schema": {"type": "object"}, "example": example},
        "application/json": {"schema": {"type": "object"}, "example": example}}}}


def _refused_doc(status: int, when: str, code: str, detail: str) -> dict[str, Any]:
    """A documented refusal of a FHIR write: its OperationOutcome."""
    example = {"resourceType": "OperationOutcome", "issue": [{
        "severity": "error", "code": ISSUE_TYPE.get(status, "processing"),
        "details": {"text": code}, "diagnostics": detail}]}
    return {"description": f"{when} (an OperationOutcome; a request the route cannot read "
                           "at all, a bad path or header, is the service's JSON refusal)",
            "content": {FHIR_JSON: {"example": example},
                        "application/json": {"example": {"detail": detail, "code": code}}}}


def _answers(status: int, example: dict[str, Any], description: str,
             writes: bool = True) -> dict[int | str, dict[str, Any]]:
    documented: dict[int | str, dict[str, Any]] = {
        status: {"description": description, "content": {
            FHIR_JSON: {"example": example}, "application/json": {"example": example}}}}
    if writes:
        documented[404] = _refused_doc(404, "an appointment or encounter named does not "
                                       "exist here", "not_found", "Encounter/enc-991 was "
                                       "never checked in at clinic 'north': nothing to end "
                                       "or cancel")
        documented[409] = _refused_doc(409, "not possible now (a visit no longer waiting; "
                                       "another feed owns the schedule)", "not_waiting",
                                       "visit 'v-3f2a9c1e5b7d4a60' is roomed, not waiting: "
                                       "it can no longer be cancelled")
        documented[422] = _refused_doc(422, "the resource is not valid here",
                                       "invalid_resource", "Appointment start: Input should "
                                       "be a valid datetime")
        documented[503] = _refused_doc(503, "Kafka unavailable: nothing changed, send it "
                                       "again", "unavailable", "could not publish to Kafka; "
                                       "nothing was recorded, try again")
    return documented


class FhirIn:
    """Applies FHIR resources to one clinic through the EHR commands."""

    def __init__(self, desk: CheckinDesk, ehr: EhrCommands, feeds: Feeds, clock: Clock) -> None:
        self.desk = desk
        self.ehr = ehr
        self.feeds = feeds
        self.clock = clock

    def feed(self, clinic: str) -> Feed | None:
        return self.feeds.for_clinic(clinic)

    def _keys(self, clinic: str, feed: Feed | None) -> ImportKeys:
        keys = self.desk.import_keys(clinic)
        if feed is None or not feed.visit_types:
            return keys
        return ImportKeys(keys.hash_identity, keys.pseudonymize,
                          {**keys.visit_types, **feed.visit_types})

    async def apply(self, clinic: str, resource: dict[str, Any]) -> tuple[int, str]:
        """One resource applied: (HTTP status, what happened in words)."""
        kind = resource.get("resourceType")
        if kind == "Appointment":
            return await self.appointment(clinic, resource)
        if kind == "Encounter":
            return await self.encounter(clinic, resource)
        raise Rejected(f"resourceType {str(kind)[:40]!r} is not taken here (Appointment, "
                       "Encounter)", "unsupported_resource")

    async def appointment(self, clinic: str, resource: dict[str, Any]) -> tuple[int, str]:
        _validated(FhirAppointment, resource)
        feed = self.feed(clinic)
        if feed is not None and not feed.takes_schedule_from("fhir"):
            raise Conflict(f"clinic {clinic!r} takes its schedule from "
                           f"{feed.source_of_truth}, not from FHIR", "not_source_of_truth")
        now = self.clock.now()
        bundle = orjson.dumps({"resourceType": "Bundle", "type": "collection",
                               "entry": [{"resource": resource}]})
        parsed = parse_fhir_bundle(bundle, clinic_id=clinic, keys=self._keys(clinic, feed))
        if parsed.errors:
            raise Rejected(parsed.errors[0].reason.removeprefix("entry[0]: "),
                           "invalid_resource")
        if not parsed.appointments:
            return 200, f"status {resource.get('status')!r} is not on the schedule"
        appointment: Appointment = parsed.appointments[0]
        if feed is not None:
            provider = feed.provider(appointment.provider_id)
            if ID_PATTERN.match(provider):
                appointment = replace(appointment, provider_id=provider)
        subject = f"appt:{appointment.appointment_id}"
        at = _instant((resource.get("meta") or {}).get("lastUpdated")) or now
        status = resource.get("status")
        async with self.ehr.subject_lock(clinic, subject):
            if await self.ehr.superseded(clinic, subject, at):
                return 200, "superseded by a later update of this appointment; nothing changed"
            known = await self.desk.store.appointments(clinic, [appointment.appointment_id])
            if appointment.status == "cancelled" and not known:
                # a cancel (or no-show) of an appointment never booked here: nothing to
                # record, and the EHR must hear it
                what = "mark as a no-show" if status == "noshow" else "cancel"
                raise NotFound(f"Appointment/{appointment.appointment_id} is not on clinic "
                               f"{clinic!r}'s schedule: nothing to {what}", "not_found")
            if status == "noshow" and known:
                text = await self.ehr.no_show(clinic, appointment.appointment_id, now=now)
            else:
                booked = appointment
                async def check(checked: Appointment) -> None:
                    await self.desk.check_booking(clinic, checked.scheduled_at,
                                                  checked.provider_id, now=now,
                                                  also_known=parsed.providers)

                text = await self.ehr.book(clinic, appointment.appointment_id,
                                           lambda _stored: booked, now=now,
                                           holder=f"fhir:{uuid.uuid4().hex}",
                                           providers=parsed.providers, rooms=parsed.rooms,
                                           check=check, origin="fhir")
            await self.ehr.applied(clinic, subject, at)
        created = text == "appointment booked"
        if status in ("arrived", "checked-in"):
            visit = self.ehr.ehr_visit(clinic, f"Appointment/{appointment.appointment_id}")
            _visit_id, arrived = await self.ehr.arrive(
                clinic, visit, appointment.patient_ref, now=now,
                appointment_id=appointment.appointment_id)
            text = f"{text}; {arrived}"
        return (201 if created else 200), text

    async def encounter(self, clinic: str, resource: dict[str, Any]) -> tuple[int, str]:
        encounter = _validated(FhirEncounter, resource)
        if not isinstance(resource.get("id"), str):
            raise Rejected("Encounter.id is missing: it names the visit to the EHR",
                           "invalid_resource")
        if encounter.status not in ENCOUNTER_STATUSES:
            raise Rejected(f"Encounter.status {str(encounter.status)[:40]!r} is not an R4 "
                           f"encounter status: {', '.join(ENCOUNTER_STATUSES)}",
                           "invalid_resource")
        now = self.clock.now()
        feed = self.feed(clinic)
        visit = self.ehr.ehr_visit(clinic, f"Encounter/{resource['id']}")
        subject = f"visit:{visit}"
        at = _instant((resource.get("meta") or {}).get("lastUpdated")) or now
        if await self.ehr.superseded(clinic, subject, at):
            return 200, "superseded by a later update of this encounter; nothing changed"
        status = encounter.status
        if status in ARRIVED:
            patient = _reference_id(encounter.subject.reference if encounter.subject else None,
                                    "Patient")
            patient_ref = self.desk.import_keys(clinic).pseudonymize(patient) if patient \
                else None
            appointment_id = next((_reference_id(a.reference, "Appointment")
                                   for a in encounter.appointment or []), None)
            provider = None
            for participant in encounter.participant or []:
                individual = participant.individual
                found = _reference_id(individual.reference if individual else None,
                                      "Practitioner")
                if found:
                    provider = feed.provider(found) if feed else found
                    break
            # a clinic that lists its providers refuses one it does not know (404)
            await self.desk.check_booking(clinic, None, provider, now=now)
            await self._may_arrive(clinic, visit, f"Encounter/{resource['id']}")
            urgent = bool(encounter.priority and any(
                c.code in ("EM", "UR", "A", "S") for c in encounter.priority.coding or []))
            if appointment_id is not None:
                known = await self.desk.store.appointments(clinic, [appointment_id])
                if not known:
                    raise NotFound(f"no appointment {appointment_id!r} on clinic {clinic!r}'s "
                                   "schedule", "not_found")
            _visit_id, text = await self.ehr.arrive(clinic, visit, patient_ref, now=now,
                                                    appointment_id=appointment_id,
                                                    provider_id=provider, urgent=urgent)
        elif status in ENCOUNTER_CANCELLED:
            text = await self.ehr.end(clinic, visit, "entered_in_error", now=now,
                                      name=f"Encounter/{resource['id']}")
        elif status == "finished":
            text = await self.ehr.end(clinic, visit, "ended", now=now,
                                      name=f"Encounter/{resource['id']}")
        else:
            text = f"status {status!r}: nothing to change here"
        await self.ehr.applied(clinic, subject, at)
        return 200, text

    async def _may_arrive(self, clinic: str, visit: str, name: str) -> None:
        """Refuse (409) an arrival of an encounter whose visit has ended here or whose
        arrival was undone: it is not "already checked in"."""
        store = self.desk.store
        ours = await store.feed_visit(clinic, visit)
        if ours is None:
            undone = await store.feed_cancelled(clinic, visit)
            if undone is not None:
                raise Conflict(f"{name}'s arrival was undone (visit {undone}): it cannot "
                               "arrive again", "arrival_undone")
            return
        if ours.startswith(FEED_PENDING):
            return
        view = await store.visit(clinic, ours)
        if view is not None and view.status not in ("waiting", "roomed"):
            raise Conflict(f"{name} (visit {ours}) has ended here "
                           f"({ENCOUNTER_STATUS.get(view.status, view.status)}): it cannot "
                           "arrive again", "visit_ended")

    async def bundle(self, clinic: str, body: dict[str, Any],
                     kinds: tuple[str, ...]) -> dict[str, Any]:
        """Every entry validated, then each applied in order: a response Bundle."""
        bundle = _validated(Bundle, body)
        if bundle.type not in kinds:
            raise Rejected(f"Bundle.type must be one of {', '.join(kinds)}", "invalid_resource")
        resources = [e.get("resource") for e in body.get("entry") or []
                     if isinstance(e, dict)]
        for resource in resources:
            if isinstance(resource, dict) and resource.get("resourceType") == "Appointment":
                _validated(FhirAppointment, resource)
            elif isinstance(resource, dict) and resource.get("resourceType") == "Encounter":
                _validated(FhirEncounter, resource)
        answers = []
        for resource in resources:
            if not isinstance(resource, dict) or resource.get("resourceType") not in (
                    "Appointment", "Encounter"):
                answers.append({"response": {"status": "200 OK", "outcome": _outcome(
                    "not an Appointment or Encounter: ignored")}})
                continue
            try:
                status, text = await self.apply(clinic, resource)
            except Refusal as refused:
                if bundle.type == "transaction":
                    raise
                answers.append({"response": {"status": f"{status_of(refused)}", "outcome":
                                             _outcome(refused.detail, "error")}})
                continue
            answers.append({"response": {
                "status": f"{status} {'Created' if status == 201 else 'OK'}",
                "outcome": _outcome(text)}})
        return {"resourceType": "Bundle", "type": f"{bundle.type}-response", "entry": answers}


# ------------------------------------------------------------------- out


def encounter_of(view: VisitView, appointment: Appointment | None,
                 zone: tzinfo = UTC) -> dict[str, Any]:
    """A visit as an R4 ``Encounter`` (validated by the model); instants with the offset
    of ``zone`` (the clinic's, as every other route shows times)."""
    status = ENCOUNTER_STATUS.get(view.status, "unknown")
    resource: dict[str, Any] = {
        "resourceType": "Encounter", "id": view.visit_id, "status": status,
        "class": AMBULATORY,
        "identifier": [{"system": TICKETS, "value": view.ticket_code}],
    }
    at = view.status_at.astimezone(zone).isoformat()
    resource["period"] = {"start": at} if status == "arrived" else {"end": at}
    if appointment is not None:
        resource["appointment"] = [{"reference": f"Appointment/{appointment.appointment_id}"}]
        resource["subject"] = {"reference": f"Patient/{appointment.patient_ref}"}
        resource["participant"] = [{"individual": {
            "reference": f"Practitioner/{appointment.provider_id}"}}]
        resource["serviceType"] = {"coding": [{"code": appointment.visit_type}]}
    return FhirEncounter.model_validate(resource).model_dump(mode="json", exclude_none=True,
                                                             by_alias=True)


def appointment_of(appointment: Appointment, arrived: bool, no_show: bool,
                   zone: tzinfo = UTC) -> dict[str, Any]:
    """An appointment of the schedule as an R4 ``Appointment`` with its status; instants
    with the offset of ``zone`` (the clinic's)."""
    status: str = appointment.status
    if status == "booked" and arrived:
        status = "arrived"
    elif status == "booked" and no_show:
        status = "noshow"
    resource: dict[str, Any] = {
        "resourceType": "Appointment", "id": appointment.appointment_id, "status": status,
        "appointmentType": {"coding": [{"code": appointment.visit_type}]},
        "start": appointment.scheduled_at.astimezone(zone).isoformat(),
        "participant": [
            {"actor": {"reference": f"Patient/{appointment.patient_ref}"},
             "status": "accepted"},
            {"actor": {"reference": f"Practitioner/{appointment.provider_id}"},
             "status": "accepted"}],
    }
    # R4 wants an end with a start (app-2, app-3); a schedule that gave no length books
    # the usual slot
    minutes = appointment.duration_minutes or DEFAULT_SLOT_MINUTES
    resource["end"] = (appointment.scheduled_at + timedelta(minutes=minutes)
                       ).astimezone(zone).isoformat()
    if appointment.duration_minutes:
        resource["minutesDuration"] = appointment.duration_minutes
    return FhirAppointment.model_validate(resource).model_dump(mode="json", exclude_none=True,
                                                               by_alias=True)


def searchset(resources: list[dict[str, Any]], base: str) -> dict[str, Any]:
    """A searchset Bundle; each entry's ``fullUrl`` is absolute (R4), under ``base`` (the
    clinic's FHIR base URL as the request reached it)."""
    return {"resourceType": "Bundle", "type": "searchset", "total": len(resources),
            "entry": [{"fullUrl": f"{base}/{r['resourceType']}/{r['id']}", "resource": r}
                      for r in resources]}


def _base(request: Request, clinic_id: str) -> str:
    return f"{str(request.base_url).rstrip('/')}/clinics/{clinic_id}/fhir"


def make_fhir_router(desk: CheckinDesk, ehr: EhrCommands, store: CheckinStore, feeds: Feeds,
                     clock: Clock, idempotency: IdempotencyStore) -> APIRouter:
    """Checkin's FHIR routes under ``/clinics/{clinic}/fhir``."""
    router = APIRouter(tags=["fhir"], responses=COMMON_ERRORS)
    fhir_in = FhirIn(desk, ehr, feeds, clock)

    async def once(request: Request, clinic_id: str, key: str | None,
                   action: Callable[[], Awaitable[tuple[int, dict[str, Any]]]]) -> Response:
        """Run a write, or replay its first answer under the same Idempotency-Key; a
        refusal is an ``OperationOutcome`` with its status (404 naming what is unknown)."""
        try:
            if key is None:
                status, body = await action()
                return _fhir(body, status)
            status, body, _replayed = await idempotency.run(
                f"checkin-fhir:{clinic_id}", key,
                fingerprint(request.method, request.url.path, await request.body()), action)
        except Refusal as refused:
            return refused_outcome(refused)
        return _fhir(body, status)

    async def apply_one(clinic_id: str, request: Request, kind: str,
                        resource_id: str | None, key: str | None = None) -> Response:
        raw = await request.body()

        async def action() -> tuple[int, dict[str, Any]]:
            status, text = await apply_resource(clinic_id, raw, kind, resource_id)
            return status, _outcome(text)

        return await once(request, clinic_id, key, action)

    async def apply_resource(clinic_id: str, raw: bytes, kind: str,
                             resource_id: str | None) -> tuple[int, str]:
        resource = _json_body(raw)
        if resource.get("resourceType") != kind:
            raise Rejected(f"the body must be a {kind} resource", "invalid_resource")
        if resource_id is not None and resource.get("id") not in (None, resource_id):
            raise Rejected(f"{kind}.id {resource.get('id')!r} is not the id in the URL "
                           f"({resource_id!r})", "invalid_resource")
        if resource_id is not None:
            resource["id"] = resource_id
        return await fhir_in.apply(clinic_id, resource)

    @router.post("/clinics/{clinic_id}/fhir/Appointment", summary="Create an Appointment",
                 description="A FHIR R4 Appointment (its `id` is the appointment's), read "
                 "by the schedule import's FHIR rules: booked once, 201 when new; "
                 "deduplicated on its id (a repeat changes nothing, 200). An older "
                 "`meta.lastUpdated` than the last applied changes nothing.",
                 status_code=201, openapi_extra=_body(APPOINTMENT_EXAMPLE),
                 responses=_answers(201, OUTCOME_EXAMPLE, "what the Appointment did"))
    async def create_appointment(clinic_id: ClinicId, request: Request,
                                 idempotency_key: IdempotencyKey = None,
                                 principal: Principal = Depends(WRITE)) -> Response:
        principal.require_clinic(clinic_id)
        return await apply_one(clinic_id, request, "Appointment", None, idempotency_key)

    @router.put("/clinics/{clinic_id}/fhir/Appointment/{resource_id}",
                summary="Update or cancel an Appointment",
                description="The whole Appointment; `status: cancelled` cancels it, "
                "`arrived` checks the patient in, `noshow` marks a no-show. Deduplicated on "
                "the id.", openapi_extra=_body(APPOINTMENT_EXAMPLE),
                responses=_answers(200, OUTCOME_EXAMPLE, "what the update did"))
    async def update_appointment(clinic_id: ClinicId, resource_id: ResourceId,
                                 request: Request,
                                 principal: Principal = Depends(WRITE)) -> Response:
        principal.require_clinic(clinic_id)
        return await apply_one(clinic_id, request, "Appointment", resource_id)

    @router.put("/clinics/{clinic_id}/fhir/Encounter/{resource_id}",
                summary="An Encounter's status: arrivals and departures",
                description="`arrived`/`triaged`: checked in once (on `appointment`, else "
                "the patient's appointment closest to now, else a walk-in); "
                "`cancelled`/`entered-in-error`: the arrival is cancelled; `finished`: a "
                "visit still waiting left without being seen. Deduplicated on the id: a "
                "second `arrived` is not a second arrival.",
                openapi_extra=_body(ENCOUNTER_EXAMPLE),
                responses=_answers(200, _outcome("checked in on appointment apt-0815, "
                                                 "ticket A-17"), "what the status did"))
    async def update_encounter(clinic_id: ClinicId, resource_id: ResourceId,
                               request: Request,
                               principal: Principal = Depends(WRITE)) -> Response:
        principal.require_clinic(clinic_id)
        return await apply_one(clinic_id, request, "Encounter", resource_id)

    @router.post("/clinics/{clinic_id}/fhir", summary="A transaction or batch Bundle",
                 description="Appointment and Encounter entries (POST or PUT), every entry "
                 "validated before any is applied, then applied in order; the answer is "
                 "the transaction-response (batch-response) Bundle. Each entry is "
                 "deduplicated on its resource's id.",
                 openapi_extra=_body(TRANSACTION_EXAMPLE),
                 responses=_answers(200, RESPONSE_EXAMPLE, "each entry's outcome"))
    async def transaction(clinic_id: ClinicId, request: Request,
                          idempotency_key: IdempotencyKey = None,
                          principal: Principal = Depends(WRITE)) -> Response:
        principal.require_clinic(clinic_id)
        raw = await request.body()

        async def action() -> tuple[int, dict[str, Any]]:
            body = _json_body(raw)
            if body.get("resourceType") != "Bundle":
                raise Rejected("the body must be a Bundle", "invalid_resource")
            return 200, await fhir_in.bundle(clinic_id, body, ("transaction", "batch"))

        return await once(request, clinic_id, idempotency_key, action)

    @router.post("/clinics/{clinic_id}/fhir/subscription",
                 summary="Rest-hook Subscription notifications",
                 description="Where an EHR's FHIR Subscription (channel rest-hook) posts: a "
                 "Bundle (history, subscription-notification, collection...) or a single "
                 "Appointment or Encounter; each is applied as by the routes above "
                 "(deduplicated on the resources' ids). An empty body (a handshake or "
                 "heartbeat) is answered 200.", openapi_extra=_body(TRANSACTION_EXAMPLE),
                 responses=_answers(200, RESPONSE_EXAMPLE, "each resource's outcome"))
    async def subscription(clinic_id: ClinicId, request: Request,
                           idempotency_key: IdempotencyKey = None,
                           principal: Principal = Depends(WRITE)) -> Response:
        principal.require_clinic(clinic_id)
        raw = await request.body()
        if not raw.strip():
            return _fhir(_outcome("notification received"))

        async def action() -> tuple[int, dict[str, Any]]:
            body = _json_body(raw)
            if body.get("resourceType") == "Bundle":
                kind = str(body.get("type") or "")
                return 200, await fhir_in.bundle(clinic_id, body, (kind,))
            _status_code, text = await fhir_in.apply(clinic_id, body)
            return 200, _outcome(text)

        return await once(request, clinic_id, idempotency_key, action)

    @router.get("/clinics/{clinic_id}/fhir/Encounter", summary="The day's visits as Encounters",
                description="Every visit of the clinic's day in ticket order: status "
                "(arrived = waiting, in-progress = roomed, finished, cancelled, "
                "entered-in-error), period, the appointment, subject (pseudonymous) and "
                "practitioner; a searchset Bundle.",
                responses=_answers(200, SEARCH_EXAMPLE, "the day's Encounters", writes=False))
    async def encounters(request: Request, clinic_id: ClinicId, day: Day = None,
                         principal: Principal = Depends(READ)) -> Response:
        principal.require_clinic(clinic_id)
        day = desk.read_day(clinic_id, day, clock.now())
        visits = await store.day_visits(clinic_id, day)
        booked = await store.appointments(
            clinic_id, [v.appointment_id for v in visits if v.appointment_id])
        zone = desk.zone(clinic_id)
        return _fhir(searchset([encounter_of(v, booked.get(v.appointment_id or ""), zone)
                                for v in visits], _base(request, clinic_id)))

    @router.get("/clinics/{clinic_id}/fhir/Appointment",
                summary="The day's appointments with their statuses",
                description="booked, arrived, noshow or cancelled; a searchset Bundle.",
                responses=_answers(200, {"resourceType": "Bundle", "type": "searchset",
                                         "total": 1, "entry": [{"fullUrl": APPOINTMENT_URL,
                                                                "resource": APPOINTMENT_EXAMPLE}]},
                                   "the day's Appointments", writes=False))
    async def appointments(request: Request, clinic_id: ClinicId, day: Day = None,
                           principal: Principal = Depends(READ)) -> Response:
        principal.require_clinic(clinic_id)
        day = desk.read_day(clinic_id, day, clock.now())
        states = await desk.schedule(clinic_id, day)
        zone = desk.zone(clinic_id)
        return _fhir(searchset([appointment_of(s.appointment, s.arrived_visit is not None,
                                               s.no_show, zone) for s in states],
                               _base(request, clinic_id)))

    return router
