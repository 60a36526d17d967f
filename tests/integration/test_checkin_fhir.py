"""FHIR R4 in and out on the real broker and Redis: an EHR books, changes and cancels
Appointments (one at a time, in a transaction Bundle, or pushed by its rest-hook
Subscription), registers arrivals and departures as Encounter statuses, and reads the
day back as Encounters and Appointments. The same desk commands as the front desk's:
each change once, older updates superseded, patients only as pseudonyms."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import orjson
import pytest
from fhir.resources.R4B.bundle import Bundle

from tests.helpers import auth
from tests.integration.test_checkin_hl7_support import Feed, module_prefix, running_feed
from tests.integration.test_checkin_support import FRONT_DESK, KIOSK, NURSE, midday_zone

FHIR = {**FRONT_DESK, "Content-Type": "application/fhir+json"}


@pytest.fixture(scope="module")
async def feed(kafka_bootstrap: str, redis_url: str) -> AsyncIterator[Feed]:
    async with running_feed(kafka_bootstrap, redis_url, module_prefix()) as service:
        yield service


def appointment(appointment_id: str, patient: str, start: datetime, status: str = "booked",
                updated: datetime | None = None) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Appointment", "id": appointment_id, "status": status,
        "appointmentType": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0276",
                                        "code": "FOLLOWUP"}]},
        "start": start.isoformat(), "minutesDuration": 20,
        "participant": [
            {"actor": {"reference": f"Patient/{patient}"}, "status": "accepted"},
            {"actor": {"reference": "Practitioner/0148", "display": "Dr. James Addison"},
             "status": "accepted"}]}
    if updated is not None:
        resource["meta"] = {"lastUpdated": updated.isoformat()}
    return resource


def encounter(encounter_id: str, status: str, patient: str,
              appointment_id: str | None = None) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Encounter", "id": encounter_id, "status": status,
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": f"Patient/{patient}"}}
    if appointment_id:
        resource["appointment"] = [{"reference": f"Appointment/{appointment_id}"}]
    return resource


def ids() -> tuple[str, str]:
    return f"fa-{uuid.uuid4().hex[:8]}", f"ehr-patient-{uuid.uuid4().hex[:8]}"


async def put(client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> httpx.Response:
    return await client.put(path, content=orjson.dumps(body), headers=FHIR)


def about(events: list[dict[str, Any]], appointment_id: str) -> list[dict[str, Any]]:
    return [e for e in events if e["data"].get("appointment_id") == appointment_id]


async def test_an_appointment_is_booked_changed_and_cancelled_once_each(feed: Feed) -> None:
    client, now = feed.checkin.client, datetime.now(UTC).replace(microsecond=0)
    appointment_id, patient = ids()
    booked = appointment(appointment_id, patient, now + timedelta(hours=1),
                         updated=now - timedelta(minutes=3))
    created = await client.post("/clinics/north/fhir/Appointment",
                                content=orjson.dumps(booked), headers=FHIR)
    assert created.status_code == 201, created.text
    assert created.headers["content-type"] == "application/fhir+json"
    repeated = await client.post("/clinics/north/fhir/Appointment",
                                 content=orjson.dumps(booked), headers=FHIR)
    assert repeated.status_code == 200
    assert repeated.json()["issue"][0]["diagnostics"] == "no change"

    cancelled = await put(client, f"/clinics/north/fhir/Appointment/{appointment_id}",
                          {**booked, "status": "cancelled",
                           "meta": {"lastUpdated": now.isoformat()}})
    assert cancelled.json()["issue"][0]["diagnostics"] == "appointment cancelled"
    late = await put(client, f"/clinics/north/fhir/Appointment/{appointment_id}",
                     {**booked, "meta": {"lastUpdated": (now - timedelta(minutes=1)).isoformat()}})
    assert late.json()["issue"][0]["diagnostics"].startswith("superseded")

    events = about(await feed.floor(), appointment_id)
    assert [(e["data"]["status"], e["data"]["provider_id"]) for e in events] == [
        ("booked", "dr-addison"), ("cancelled", "dr-addison")]
    assert patient.encode() not in await feed.raw_floor()

    wrong = await put(client, f"/clinics/north/fhir/Appointment/{appointment_id}",
                      {**booked, "status": "booked", "start": "tomorrow"})
    assert wrong.status_code == 422 and "start" in wrong.json()["issue"][0]["diagnostics"]


async def test_a_transaction_books_and_checks_in_and_the_day_reads_back_as_fhir(
    feed: Feed,
) -> None:
    client, now = feed.checkin.client, datetime.now(UTC).replace(microsecond=0)
    first, patient = ids()
    second, other = ids()
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": appointment(first, patient, now + timedelta(minutes=5)),
         "request": {"method": "PUT", "url": f"Appointment/{first}"}},
        {"resource": appointment(second, other, now + timedelta(minutes=45)),
         "request": {"method": "PUT", "url": f"Appointment/{second}"}},
        {"resource": encounter(f"enc-{first}", "arrived", patient, first),
         "request": {"method": "PUT", "url": f"Encounter/enc-{first}"}},
    ]}
    answer = await client.post("/clinics/north/fhir", content=orjson.dumps(bundle),
                               headers=FHIR)
    assert answer.status_code == 200, answer.text
    response = answer.json()
    assert response["type"] == "transaction-response"
    assert [e["response"]["status"] for e in response["entry"]] == ["201 Created",
                                                                    "201 Created", "200 OK"]
    arrived = [e for e in about(await feed.floor(), first)
               if e["event_type"] == "patient.arrived"]
    assert len(arrived) == 1
    visit_id = arrived[0]["data"]["visit_id"]

    encounters = await client.get("/clinics/north/fhir/Encounter", headers=NURSE)
    assert encounters.status_code == 200
    searchset = Bundle.model_validate(encounters.json())  # a valid R4 Bundle
    assert searchset.type == "searchset"
    ours = next(e["resource"] for e in encounters.json()["entry"]
                if e["resource"]["id"] == visit_id)
    assert ours["status"] == "arrived" and ours["class"]["code"] == "AMB"
    assert ours["appointment"] == [{"reference": f"Appointment/{first}"}]
    assert ours["participant"][0]["individual"]["reference"] == "Practitioner/dr-addison"
    assert ours["subject"]["reference"].startswith("Patient/pt-")
    assert "period" in ours and ours["identifier"][0]["value"]

    booked = (await client.get("/clinics/north/fhir/Appointment", headers=NURSE)).json()
    statuses = {e["resource"]["id"]: e["resource"]["status"] for e in booked["entry"]}
    assert statuses[first] == "arrived" and statuses[second] == "booked"
    # instants on the clinic's clock, as every other route shows them (still R4 instants)
    offset = datetime.now(ZoneInfo(midday_zone())).utcoffset()
    ours_booked = next(e["resource"] for e in booked["entry"] if e["resource"]["id"] == first)
    for instant in (ours["period"]["start"], ours_booked["start"], ours_booked["end"]):
        assert datetime.fromisoformat(instant).utcoffset() == offset, instant


async def test_encounter_statuses_are_arrivals_and_departures(feed: Feed) -> None:
    client = feed.checkin.client
    left, walked_in = f"enc-{uuid.uuid4().hex[:8]}", f"enc-{uuid.uuid4().hex[:8]}"
    _appointment, patient = ids()
    for encounter_id in (left, walked_in):
        arrived = await put(client, f"/clinics/north/fhir/Encounter/{encounter_id}",
                            encounter(encounter_id, "arrived", patient + encounter_id))
        assert arrived.status_code == 200, arrived.text
        assert "walk-in" in arrived.json()["issue"][0]["diagnostics"]
    again = await put(client, f"/clinics/north/fhir/Encounter/{left}",
                      encounter(left, "arrived", patient + left))
    assert again.json()["issue"][0]["diagnostics"].startswith("already checked in")
    finished = await put(client, f"/clinics/north/fhir/Encounter/{left}",
                         encounter(left, "finished", patient + left))
    assert "left without being seen" in finished.json()["issue"][0]["diagnostics"]
    error = await put(client, f"/clinics/north/fhir/Encounter/{walked_in}",
                      encounter(walked_in, "entered-in-error", patient + walked_in))
    assert "cancelled" in error.json()["issue"][0]["diagnostics"]
    # arriving again after the visit ended, or after its arrival was undone: not "already
    # checked in" but a conflict saying which
    for encounter_id, said in ((left, "has ended"), (walked_in, "arrival was undone")):
        late = await put(client, f"/clinics/north/fhir/Encounter/{encounter_id}",
                         encounter(encounter_id, "arrived", patient + encounter_id))
        assert late.status_code == 409, late.text
        assert said in late.json()["issue"][0]["diagnostics"], late.text

    reasons = [e["data"]["reason"] for e in await feed.floor()
               if e["event_type"] == "arrival.cancelled"]
    assert "left_without_being_seen" in reasons and "entered_in_error" in reasons

    unknown = await put(client, f"/clinics/north/fhir/Encounter/{left}-x",
                        encounter(f"{left}-x", "arrived", patient, "no-such-appointment"))
    assert unknown.status_code == 404


async def test_a_rest_hook_subscription_pushes_changes_in(feed: Feed) -> None:
    client, now = feed.checkin.client, datetime.now(UTC).replace(microsecond=0)
    appointment_id, patient = ids()
    handshake = await client.post("/clinics/north/fhir/subscription", content=b"",
                                  headers=FHIR)
    assert handshake.status_code == 200
    notification = {"resourceType": "Bundle", "type": "history", "entry": [
        {"resource": appointment(appointment_id, patient, now + timedelta(hours=2)),
         "request": {"method": "PUT", "url": f"Appointment/{appointment_id}"},
         "response": {"status": "200"}}]}
    pushed = await client.post("/clinics/north/fhir/subscription",
                               content=orjson.dumps(notification), headers=FHIR)
    assert pushed.status_code == 200, pushed.text
    assert pushed.json()["type"] == "history-response"
    single = await client.post("/clinics/north/fhir/subscription", headers=FHIR,
                               content=orjson.dumps(appointment(
                                   appointment_id, patient, now + timedelta(hours=2),
                                   status="cancelled")))
    assert single.json()["issue"][0]["diagnostics"] == "appointment cancelled"
    assert [e["data"]["status"] for e in about(await feed.floor(), appointment_id)] == \
        ["booked", "cancelled"]


async def test_only_the_desk_writes_and_the_kiosk_reads_nothing(feed: Feed) -> None:
    client, now = feed.checkin.client, datetime.now(UTC)
    appointment_id, patient = ids()
    body = orjson.dumps(appointment(appointment_id, patient, now + timedelta(hours=1)))
    nurse_write = await client.post("/clinics/north/fhir/Appointment", content=body,
                                    headers={**NURSE, "Content-Type": "application/fhir+json"})
    assert nurse_write.status_code == 403
    assert (await client.get("/clinics/north/fhir/Encounter", headers=KIOSK)).status_code == 403
    assert (await client.get("/clinics/north/fhir/Encounter")).status_code == 401
    assert (await client.get("/clinics/north/fhir/Appointment",
                             headers=auth("dev-manager"))).status_code == 200
