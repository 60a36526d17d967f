"""Check-in's doors refuse what does not exist and read back what does (issue 15), on the
real broker and Redis: the FHIR Encounter search finds every visit of the clinic's day
(whatever its ticket code), a FHIR end or HL7 cancel of something never seen here is an
error naming it with nothing published, an appointment implausibly far from today is
refused, and so on. One checkin (with its HL7 listener) serves the module."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest

from shared import events as ev
from shared.topics import ESTIMATES, FLOOR, topic_name
from tests.helpers import eventually, producer
from tests.integration.test_checkin_hl7_support import FEEDS as HL7_FEEDS
from tests.integration.test_checkin_hl7_support import Ehr, Feed, module_prefix, running_feed
from tests.integration.test_checkin_support import (
    FRONT_DESK,
    KIOSK,
    MANAGER,
    NURSE,
    at,
    csv_rows,
    midday_zone,
)

FHIR = {**FRONT_DESK, "Content-Type": "application/fhir+json"}


# the clinic's directory lists its providers: imports must name one of them (or one the
# EHR feed maps to, dr-addison for AIP-3 0148)
NORTH_ZONE = midday_zone()
CLINICS = {"north": {"name": "Northside", "timezone": NORTH_ZONE,
                     "providers": {"dr-addison": "Dr. James Addison", "p1": "Dr. Okafor"}},
           "south": {"name": "Southside", "timezone": midday_zone()}}
# south takes its schedule from its EHR's HL7 feed: no other feed or file may change it
FEEDS = {**HL7_FEEDS, "SOUTHEHR": {"clinic": "south", "source_of_truth": "hl7"}}


@pytest.fixture(scope="module")
async def feed(kafka_bootstrap: str, redis_url: str) -> AsyncIterator[Feed]:
    async with running_feed(kafka_bootstrap, redis_url, module_prefix(),
                            clinics=orjson.dumps(CLINICS).decode(),
                            checkin_feeds=orjson.dumps(FEEDS).decode()) as service:
        yield service


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8].upper()}"


async def floor_of(feed: Feed, key: str, value: str) -> list[dict[str, Any]]:
    return [e for e in await feed.floor() if e["data"].get(key) == value]


async def test_the_encounter_search_lists_visits_whatever_their_ticket_codes(
    feed: Feed,
) -> None:
    # make up's demo publishes arrivals straight onto the floor with its own ticket letter
    # ("N-12"): the day's ticket counter does not name them, the day's index does
    now = datetime.now(UTC).replace(microsecond=0)
    visits = [f"v-demo-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    async with producer(feed.kafka_bootstrap) as client:
        for number, visit in enumerate(visits, start=12):
            event = ev.make_event(ev.PatientArrived(
                visit_id=visit, ticket_code=f"N-{number}", provider_id="p1",
                visit_type="follow_up"), clinic_id="north", source="simulator",
                occurred_at=now, correlation_id=visit)
            await client.send_and_wait(feed.checkin.floor_topic, ev.encode(event),
                                       key=b"north")
    await feed.checkin.app.state.desk.barrier("north")
    answer = await feed.checkin.client.get("/clinics/north/fhir/Encounter", headers=NURSE)
    assert answer.status_code == 200, answer.text
    found = {e["resource"]["id"]: e["resource"] for e in answer.json()["entry"]}
    assert set(visits) <= set(found)
    assert answer.json()["total"] >= 2
    assert found[visits[0]]["identifier"][0]["value"] == "N-12"
    assert found[visits[0]]["status"] == "arrived"


async def test_ending_an_encounter_never_checked_in_is_a_404_naming_it(feed: Feed) -> None:
    before = len(await feed.floor())
    for status in ("finished", "cancelled"):
        answer = await feed.checkin.client.put(
            "/clinics/north/fhir/Encounter/enc-unknown", headers=FHIR, content=orjson.dumps({
                "resourceType": "Encounter", "id": "enc-unknown", "status": status,
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                          "code": "AMB"}}))
        assert answer.status_code == 404, answer.text
        outcome = answer.json()
        assert outcome["resourceType"] == "OperationOutcome"
        assert outcome["issue"][0]["severity"] == "error"
        assert outcome["issue"][0]["code"] == "not-found"
        assert "Encounter/enc-unknown" in outcome["issue"][0]["diagnostics"]
    # a cancel of an Appointment never booked here is the same
    gone = unique("gone").lower()
    cancel = await feed.checkin.client.put(
        f"/clinics/north/fhir/Appointment/{gone}", headers=FHIR, content=orjson.dumps({
            "resourceType": "Appointment", "id": gone, "status": "cancelled",
            "start": datetime.now(UTC).isoformat(), "minutesDuration": 15,
            "appointmentType": {"coding": [{"code": "FOLLOWUP"}]},
            "participant": [{"actor": {"reference": "Patient/x2"}, "status": "accepted"},
                            {"actor": {"reference": "Practitioner/p1"}, "status": "accepted"}]}))
    assert cancel.status_code == 404, cancel.text
    assert f"Appointment/{gone}" in cancel.json()["issue"][0]["diagnostics"]
    assert len(await feed.floor()) == before


async def test_an_hl7_cancel_of_an_unknown_appointment_is_refused_and_publishes_nothing(
    feed: Feed,
) -> None:
    ehr, now = Ehr(), datetime.now(UTC).replace(microsecond=0)
    appointment = unique("GONE")
    cancel = await feed.send(ehr.siu("S15", appointment, now + timedelta(minutes=30),
                                     sent_at=now, status="Cancelled"))
    assert cancel.code == "AE", cancel.raw
    assert cancel.error is not None
    assert cancel.error[2] == "SCH^1^2^1^1" and cancel.error[3].startswith("204^")
    assert appointment in cancel.error[8] or appointment in cancel.text
    assert await floor_of(feed, "appointment_id", appointment) == []
    # an ADT end of a visit never registered here is refused the same way
    ended = await feed.send(ehr.adt("A03", sent_at=now, visit=unique("V")))
    assert ended.code == "AE", ended.raw
    assert ended.error is not None and ended.error[2].startswith("PV1^1^19")


async def test_an_idempotency_key_is_the_credentials_own(feed: Feed) -> None:
    # the desk's walk-in under key K; a manager sending the same request with the same K
    # gets a walk-in of its own, not the desk's answer replayed
    client = feed.checkin.client
    body = orjson.dumps({"provider_id": None, "visit_type": "walk_in"})
    key = {"Idempotency-Key": f"k-{uuid.uuid4().hex}", "Content-Type": "application/json"}
    desk = await client.post("/clinics/north/arrivals", content=body,
                             headers={**FRONT_DESK, **key})
    manager = await client.post("/clinics/north/arrivals", content=body,
                                headers={**MANAGER, **key})
    again = await client.post("/clinics/north/arrivals", content=body,
                              headers={**FRONT_DESK, **key})
    assert desk.status_code == manager.status_code == again.status_code == 201, manager.text
    assert manager.json()["replayed"] is False
    assert manager.json()["visit_id"] != desk.json()["visit_id"]
    assert again.json()["replayed"] is True
    assert again.json()["visit_id"] == desk.json()["visit_id"]


async def walk_in(feed: Feed) -> str:
    answer = await feed.checkin.client.post(
        "/clinics/north/arrivals", content=orjson.dumps({"visit_type": "walk_in"}),
        headers={**FRONT_DESK, "Idempotency-Key": uuid.uuid4().hex,
                 "Content-Type": "application/json"})
    assert answer.status_code == 201, answer.text
    visit: str = answer.json()["visit_id"]
    return visit


async def test_a_cancel_racing_a_checkout_yields_to_the_checkouts_visit_end_claim(
    feed: Feed,
) -> None:
    # billing's checkout took the visit's end (shared/visit_end.py) and is publishing: the
    # desk's cancel of the same visit is refused, nothing published, the visit still waits
    ends = feed.checkin.app.state.desk.visit_ends
    client = feed.checkin.client
    checked_out = await walk_in(feed)
    assert await ends.claim("north", checked_out, "checked_out") is None
    refused = await client.post(f"/clinics/north/visits/{checked_out}/cancel",
                                json={"reason": "cancelled"}, headers=FRONT_DESK)
    assert refused.status_code == 409, refused.text
    assert checked_out in refused.json()["detail"]
    assert [e["event_type"] for e in await floor_of(feed, "visit_id", checked_out)] == \
        ["patient.arrived"]
    assert (await ends.holder("north", checked_out)) == "checked_out"

    # the other way round: the cancel ends the visit first, and a checkout finds its claim
    cancelled = await walk_in(feed)
    answer = await client.post(f"/clinics/north/visits/{cancelled}/cancel",
                               json={"reason": "cancelled"}, headers=FRONT_DESK)
    assert answer.status_code == 200, answer.text
    assert await ends.claim("north", cancelled, "checked_out") == "cancelled"
    await ends.release("north", cancelled, "checked_out")  # not its claim: kept
    assert await ends.holder("north", cancelled) == "cancelled"


async def test_a_walk_ins_identifier_and_free_text_type_never_reach_the_floor(
    feed: Feed,
) -> None:
    client = feed.checkin.client
    mrn = f"MRN{uuid.uuid4().int % 10**8:08d}"

    async def post(body: dict[str, Any]) -> Any:
        return await client.post("/clinics/north/arrivals", content=orjson.dumps(body),
                                 headers={**FRONT_DESK, "Idempotency-Key": uuid.uuid4().hex,
                                          "Content-Type": "application/json"})

    arrived = await post({"visit_type": "FOLLOWUP", "patient_ref": mrn})
    assert arrived.status_code == 201, arrived.text
    published = (await floor_of(feed, "visit_id", arrived.json()["visit_id"]))[0]["data"]
    assert published["patient_ref"].startswith("pt-") and len(published["patient_ref"]) == 27
    assert published["patient_ref"] == arrived.json()["patient_ref"]
    assert published["visit_type"] == "follow_up"
    assert mrn.encode() not in await feed.raw_floor()
    # our own pseudonym is kept as it is (the same patient again)
    again = await post({"visit_type": "walk_in", "patient_ref": published["patient_ref"]})
    assert again.json()["patient_ref"] == published["patient_ref"]

    free_text = await post({"visit_type": "Knee pain since Tuesday"})
    assert free_text.status_code == 422, free_text.text
    detail = free_text.json()["detail"]
    assert "Knee pain since Tuesday" in detail and "follow_up" in detail and "walk_in" in detail
    assert b"knee_pain" not in await feed.raw_floor()


async def test_appointments_implausibly_far_from_today_are_refused(feed: Feed) -> None:
    ehr, now = Ehr(), datetime.now(UTC).replace(microsecond=0)
    old, long_ago = unique("OLD"), datetime(1900, 1, 1, 9, tzinfo=UTC)
    booking = await feed.send(ehr.siu("S12", old, long_ago, sent_at=now))
    assert booking.code == "AE", booking.raw
    assert booking.error is not None and booking.error[2] == "SCH^1^11^1^4"
    # the clinic's day of it (31 December 1899 west of UTC-9, when the tests run late)
    day = long_ago.astimezone(ZoneInfo(NORTH_ZONE)).date()
    assert f"date {day.isoformat()} is more than 366 days" in booking.error[8]
    far = unique("FAR")
    csv = await feed.checkin.import_csv(csv_rows(
        (unique("OK"), "p-ok", "p1", "follow_up", at(30), "15", "", ""),
        (far, "p-far", "p1", "follow_up", "2090-01-01T09:00:00-05:00", "15", "", "")))
    assert csv.status_code == 422, csv.text
    assert [(e["line"], e["appointment_id"]) for e in csv.json()["errors"]] == [(3, far)]
    assert "2090-01-0" in csv.json()["errors"][0]["reason"]  # the clinic's day
    fhir = await feed.checkin.client.post(
        "/clinics/north/fhir/Appointment", headers=FHIR, content=orjson.dumps({
            "resourceType": "Appointment", "id": far.lower(), "status": "booked",
            "start": "1900-01-01T09:00:00Z", "minutesDuration": 15,
            "appointmentType": {"coding": [{"code": "FOLLOWUP"}]},
            "participant": [{"actor": {"reference": "Patient/x1"}, "status": "accepted"},
                            {"actor": {"reference": "Practitioner/p1"}, "status": "accepted"}]}))
    assert fhir.status_code == 422, fhir.text
    assert fhir.json()["resourceType"] == "OperationOutcome"
    for appointment in (old, far, far.lower()):
        assert await floor_of(feed, "appointment_id", appointment) == []


async def test_imports_naming_a_provider_the_clinic_does_not_have_are_refused(
    feed: Feed,
) -> None:
    ehr, now = Ehr(), datetime.now(UTC).replace(microsecond=0)
    stranger = unique("WHO")
    csv = await feed.checkin.import_csv(csv_rows(
        (stranger, "p-who", "dr-nobody", "follow_up", at(45), "15", "", "")))
    assert csv.status_code == 422, csv.text
    assert "dr-nobody" in csv.json()["errors"][0]["reason"]
    unmapped = unique("WHO")
    booking = await feed.send(ehr.siu("S12", unmapped, now + timedelta(minutes=50),
                                      sent_at=now, provider="9999"))
    assert booking.code == "AE", booking.raw
    assert booking.error is not None and booking.error[2] == "AIP^1^3^1^1"
    assert "'9999'" in booking.error[8]
    mapped = unique("OK")  # AIP-3 0148 is dr-addison, a provider of the clinic
    assert (await feed.send(ehr.siu("S12", mapped, now + timedelta(minutes=50),
                                    sent_at=now))).code == "AA"
    for appointment in (stranger, unmapped):
        assert await floor_of(feed, "appointment_id", appointment) == []


async def test_a_kiosk_code_for_another_day_says_which_day(feed: Feed) -> None:
    later, zone = unique("LATER"), ZoneInfo(midday_zone())
    imported = await feed.checkin.import_csv(csv_rows(
        (later, "p-later", "p1", "follow_up", at(3 * 24 * 60), "15", "", "")))
    assert imported.status_code == 200, imported.text
    day = (datetime.now(UTC) + timedelta(days=3)).astimezone(zone).date()
    code = (await feed.checkin.kiosk_codes(day=day.isoformat()))[later]
    answer = await feed.checkin.client.post("/clinics/north/kiosk/check-ins",
                                            json={"appointment_code": code}, headers=KIOSK)
    assert answer.status_code == 409, answer.text
    assert answer.json()["code"] == "other_day"
    assert f"{day:%A %B} {day.day}, {day.year}" in answer.json()["detail"]
    assert await floor_of(feed, "visit_id", later) == []


async def test_the_place_in_line_is_in_the_patients_providers_queue(feed: Feed) -> None:
    # flow's estimates place visits in the clinic's queue: 1 (dr-addison), 2 (p1),
    # 3 (first available), 4 (p1); the last is 2nd in line for p1, not 4th
    now = datetime.now(UTC).replace(microsecond=0)
    tag = uuid.uuid4().hex[:6]
    line = [(f"v-q{tag}{n}", f"Q-{n}", provider) for n, provider in
            enumerate(("dr-addison", "p1", None, "p1"), start=1)]
    prefix = feed.checkin.floor_topic.removesuffix(FLOOR.name)
    async with producer(feed.kafka_bootstrap) as client:
        for position, (visit, code, provider) in enumerate(line, start=1):
            for topic, payload in (
                    (FLOOR, ev.PatientArrived(visit_id=visit, ticket_code=code,
                                              provider_id=provider, visit_type="follow_up")),
                    (ESTIMATES, ev.WaitEstimated(visit_id=visit, ticket_code=code,
                                                 provider_id=provider, position=position,
                                                 wait_minutes=10.0 * position, low=5.0,
                                                 high=10.0 * position + 5))):
                event = ev.make_event(payload, clinic_id="north", source="flow",
                                      occurred_at=now, correlation_id=visit)
                await client.send_and_wait(topic_name(topic, prefix), ev.encode(event),
                                           key=b"north")

    async def place(visit: str) -> Any:
        answer = (await feed.checkin.client.get(f"/clinics/north/visits/{visit}/wait",
                                                headers=KIOSK)).json()
        return answer["position"] if answer.get("high_minutes") is not None else None

    last = await eventually(lambda: place(line[3][0]), timeout=10)
    assert last == 2
    assert [await place(visit) for visit, _code, _provider in line[:3]] == [1, 1, 1]


async def import_files(feed: Feed, clinic: str, rows: str, bundle: bytes,
                       queries: tuple[str, ...]) -> list[tuple[str, Any]]:
    """The CSV and the Bundle posted to the clinic's import routes with each query."""
    answers = []
    for fmt, body, kind in (("csv", rows, "text/csv"), ("fhir", bundle,
                                                        "application/fhir+json")):
        for query in queries:
            answers.append((fmt + query, await feed.checkin.client.post(
                f"/clinics/{clinic}/schedule/{fmt}{query}", content=body,
                headers={**FRONT_DESK, "Content-Type": kind})))
    return answers


async def test_a_clinic_whose_schedule_comes_from_its_ehr_refuses_schedule_files(
    feed: Feed,
) -> None:
    appointment = unique("apt-")
    rows = csv_rows((appointment, "pt-1", "p1", "follow_up", at(60), "15", "", ""))
    bundle = orjson.dumps({"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": {"resourceType": "Appointment", "id": appointment, "status": "booked",
                      "start": at(60), "end": at(75), "participant": []}}]})
    for path, answer in await import_files(feed, "south", rows, bundle, ("", "?dry_run=true")):
        assert answer.status_code == 409, (path, answer.text)
        assert answer.json()["code"] == "not_source_of_truth"
        assert "takes its schedule from hl7" in answer.json()["detail"]
    schedule = await feed.checkin.client.get("/clinics/south/schedule", headers=FRONT_DESK)
    assert schedule.status_code == 200, schedule.text
    assert not schedule.json()["appointments"]
    # north's feed owns nothing (source of truth "any"): its files are taken
    answer = await feed.checkin.client.post(
        "/clinics/north/schedule/csv?dry_run=true", content=rows,
        headers={**FRONT_DESK, "Content-Type": "text/csv"})
    assert answer.status_code == 200, answer.text


async def test_schedule_files_naming_a_visit_type_the_clinic_does_not_know_are_refused(
    feed: Feed,
) -> None:
    appointment = unique("apt-")
    rows = csv_rows((appointment, "pt-1", "p1", "bogus", at(60), "15", "", ""))
    bundle = orjson.dumps({"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": {"resourceType": "Appointment", "id": appointment, "status": "booked",
                      "appointmentType": {"coding": [{"code": "BOGUS"}]},
                      "start": at(60), "end": at(75), "participant": [
                          {"actor": {"reference": "Practitioner/p1"}, "status": "accepted"},
                          {"actor": {"reference": "Patient/x1"}, "status": "accepted"}]}}]})
    for path, answer in await import_files(feed, "north", rows, bundle, ("?dry_run=true",)):
        assert answer.status_code == 422, (path, answer.text)
        reasons = [e["reason"] for e in answer.json()["errors"]]
        assert any("is not one of this clinic's visit types" in r and "bogus" in r.lower()
                   for r in reasons), reasons


async def test_fhir_writes_name_what_is_wrong_with_them(feed: Feed) -> None:
    before = len(await feed.floor())
    amb = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"}

    async def put(kind: str, resource: dict[str, Any]) -> Any:
        return await feed.checkin.client.put(
            f"/clinics/north/fhir/{kind}/{resource['id']}", headers=FHIR,
            content=orjson.dumps({"resourceType": kind, **resource}))

    bogus = await put("Encounter", {"id": unique("enc-"), "status": "bogus", "class": amb})
    assert bogus.status_code == 422, bogus.text
    assert "finished" in bogus.json()["issue"][0]["diagnostics"]
    stranger = await put("Encounter", {
        "id": unique("enc-"), "status": "arrived", "class": amb,
        "participant": [{"individual": {"reference": "Practitioner/p999"}}]})
    assert stranger.status_code == 404, stranger.text
    assert "p999" in stranger.json()["issue"][0]["diagnostics"]
    gone = unique("gone").lower()
    no_show = await put("Appointment", {
        "id": gone, "status": "noshow", "start": datetime.now(UTC).isoformat(),
        "minutesDuration": 15, "appointmentType": {"coding": [{"code": "FOLLOWUP"}]},
        "participant": [{"actor": {"reference": "Patient/x2"}, "status": "accepted"},
                        {"actor": {"reference": "Practitioner/p1"}, "status": "accepted"}]})
    assert no_show.status_code == 404, no_show.text
    diagnostics = no_show.json()["issue"][0]["diagnostics"]
    assert f"Appointment/{gone}" in diagnostics and "no-show" in diagnostics
    assert len(await feed.floor()) == before


async def test_reads_refuse_a_day_or_birth_date_no_clinic_could_mean(feed: Feed) -> None:
    client = feed.checkin.client
    for path in ("/clinics/north/schedule?day=0001-01-01",
                 "/clinics/north/fhir/Encounter?date=9999-12-31"):
        answer = await client.get(path, headers=NURSE if "fhir" in path else FRONT_DESK)
        assert answer.status_code == 422, (path, answer.text)
        assert "366 days" in answer.text
    today = await client.get("/clinics/north/schedule", headers=FRONT_DESK)
    assert today.status_code == 200, today.text
    unborn = await client.post("/clinics/north/kiosk/check-ins", headers={
        **KIOSK, "Idempotency-Key": unique("k")}, json={"date_of_birth": "2099-01-01",
                                                       "initials": "JS"})
    assert unborn.status_code == 422, unborn.text
    assert "in the future" in unborn.json()["detail"]
