"""The day's schedule on the real broker and Redis: CSV and FHIR imports publish
``appointment.scheduled`` (read back from Kafka), a re-import publishes nothing, a changed
appointment is an update, bad rows are reported by line and reason with nothing
published, and only front-desk credentials may import."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import pytest
import redis.asyncio as aioredis

from tests.helpers import auth
from tests.integration.test_checkin_support import (
    CSV,
    FHIR,
    FRONT_DESK,
    KIOSK,
    NURSE,
    Checkin,
    at,
    csv_rows,
    fhir_appointment,
    fhir_bundle,
    running_checkin,
)


@pytest.fixture
async def checkin(kafka_bootstrap: str, redis_url: str,
                  topic_prefix: str) -> AsyncIterator[Checkin]:
    async with running_checkin(kafka_bootstrap, redis_url, topic_prefix) as service:
        yield service


async def test_csv_import_publishes_each_appointment_and_a_reimport_publishes_nothing(
    checkin: Checkin,
) -> None:
    first, second = at(60), at(90)
    schedule = csv_rows(("apt-1", "p-aaa111", "dr-lee", "follow_up", first, "15", "1980-04-02",
                         "JS"),
                        ("apt-2", "p-bbb222", "dr-kim", "physical", second, "30", "", ""))
    answer = await checkin.import_csv(schedule)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["rows"], sorted(body["created"]), body["updated"], body["unchanged"]) == (
        2, ["apt-1", "apt-2"], [], 0)

    events = await checkin.events(expect=2)
    assert [e["event_type"] for e in events] == ["appointment.scheduled"] * 2
    by_id = {e["data"]["appointment_id"]: e for e in events}
    assert by_id["apt-1"]["data"]["patient_ref"] == "p-aaa111"
    assert by_id["apt-1"]["data"]["provider_id"] == "dr-lee"
    assert by_id["apt-2"]["data"]["visit_type"] == "physical"
    assert all(e["clinic_id"] == "north" for e in events)
    # the kiosk check's values never leave checkin, not even hashed
    raw = await checkin.raw_floor()
    assert b"1980-04-02" not in raw and b"JS" not in raw and b"identity" not in raw

    again = await checkin.import_csv(schedule)
    assert again.status_code == 200, again.text
    assert (again.json()["created"], again.json()["updated"], again.json()["unchanged"]) == (
        [], [], 2)
    assert len(await checkin.events()) == 2  # nothing new

    # one appointment moved: an update of that one only
    moved = schedule.replace(second, at(120))
    changed = await checkin.import_csv(moved)
    assert (changed.json()["created"], changed.json()["updated"],
            changed.json()["unchanged"]) == ([], ["apt-2"], 1)
    events = await checkin.events(expect=3)
    assert len(events) == 3
    assert events[-1]["data"]["appointment_id"] == "apt-2"

    listed = await checkin.client.get("/clinics/north/schedule", headers=FRONT_DESK)
    assert listed.status_code == 200
    rows = {r["appointment_id"]: r for r in listed.json()["appointments"]}
    assert rows["apt-1"]["kiosk_check"] is True and rows["apt-2"]["kiosk_check"] is False


async def test_fhir_bundle_import_publishes_and_reimport_and_update_behave_like_csv(
    checkin: Checkin,
) -> None:
    patient = {"resourceType": "Patient", "id": "p-ccc333", "birthDate": "1975-11-30",
               "name": [{"family": "Moreau", "given": ["Anne"]}]}
    bundle = fhir_bundle(fhir_appointment("apt-f1", "p-ccc333", "dr-lee", at(45)),
                         fhir_appointment("apt-f2", "p-ddd444", "dr-kim", at(75),
                                          visit_type="physical"),
                         fhir_appointment("apt-f3", "p-eee555", "dr-kim", at(80),
                                          status="proposed"),
                         patients=(patient,))
    answer = await checkin.client.post("/clinics/north/schedule/fhir", content=bundle,
                                       headers={**FRONT_DESK, **FHIR})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert sorted(body["created"]) == ["apt-f1", "apt-f2"]
    assert [s["appointment_id"] for s in body["skipped"]] == ["apt-f3"]
    events = await checkin.events(expect=2)
    assert {e["data"]["appointment_id"] for e in events} == {"apt-f1", "apt-f2"}
    raw = await checkin.raw_floor()
    assert b"Moreau" not in raw and b"1975-11-30" not in raw and b"Anne" not in raw

    again = await checkin.client.post("/clinics/north/schedule/fhir", content=bundle,
                                      headers={**FRONT_DESK, **FHIR})
    assert again.json()["unchanged"] == 2 and again.json()["created"] == []
    cancelled = bundle.replace('"id": "apt-f2",\n        "status": "booked"',
                               '"id": "apt-f2",\n        "status": "cancelled"')
    assert cancelled != bundle
    changed = await checkin.client.post("/clinics/north/schedule/fhir", content=cancelled,
                                        headers={**FRONT_DESK, **FHIR})
    assert changed.json()["updated"] == ["apt-f2"], changed.text
    events = await checkin.events(expect=3)
    assert events[-1]["data"]["status"] == "cancelled"


@pytest.mark.reliability(
    "malformed schedule CSV",
    "each bad row reported with its line; nothing published",
)
async def test_malformed_csv_rows_are_reported_by_line_and_nothing_is_published(
    checkin: Checkin,
) -> None:
    schedule = csv_rows(("apt-ok", "p-aaa111", "dr-lee", "follow_up", at(30), "15", "", ""),
                        ("apt-bad", "p-bbb222", "dr-lee", "follow_up", "2026-03-02 09:00", "15",
                         "", ""),
                        ("apt-short", "p-ccc333"),
                        ("apt-ok", "p-ddd444", "dr-lee", "follow_up", at(40), "15", "", ""),
                        ("apt-dob", "p-eee555", "dr-lee", "follow_up", at(50), "15",
                         "1980-04-02", ""))
    answer = await checkin.import_csv(schedule)
    assert answer.status_code == 422, answer.text
    errors = answer.json()["errors"]
    assert [e["line"] for e in errors] == [3, 4, 5, 6]
    reasons = [e["reason"] for e in errors]
    assert "no UTC offset" in reasons[0]
    assert "2 fields" in reasons[1]
    assert "already on line 2" in reasons[2]
    assert "dob and initials go together" in reasons[3]
    assert "nothing was imported" in answer.json()["detail"]
    # never quotes the identifying value back
    assert "1980-04-02" not in answer.text
    assert await checkin.events() == []
    listed = await checkin.client.get("/clinics/north/schedule", headers=FRONT_DESK)
    assert listed.json()["appointments"] == []

    missing = await checkin.import_csv("appointment_id,provider_id\napt-1,dr-lee\n")
    assert missing.status_code == 422
    assert missing.json()["errors"][0]["line"] == 1
    assert "patient_ref" in missing.json()["errors"][0]["reason"]


@pytest.mark.reliability(
    "malformed FHIR Bundle",
    "each bad entry reported; nothing published",
)
async def test_malformed_fhir_entries_are_reported_by_line_and_nothing_is_published(
    checkin: Checkin,
) -> None:
    good = fhir_appointment("apt-g", "p-aaa111", "dr-lee", at(30))
    no_start = fhir_appointment("apt-n", "p-bbb222", "dr-lee", at(30))
    del no_start["start"]
    no_practitioner = fhir_appointment("apt-p", "p-ccc333", "dr-lee", at(30))
    no_practitioner["participant"] = no_practitioner["participant"][:1]
    bundle = fhir_bundle(good, no_start, no_practitioner)
    answer = await checkin.client.post("/clinics/north/schedule/fhir", content=bundle,
                                       headers={**FRONT_DESK, **FHIR})
    assert answer.status_code == 422, answer.text
    errors = answer.json()["errors"]
    assert [e["appointment_id"] for e in errors] == ["apt-n", "apt-p"]
    lines = bundle.splitlines()
    for error in errors:
        # the reported line is where that entry starts in the uploaded JSON
        assert lines[error["line"] - 1].strip() == "{", error
        assert f'"id": "{error["appointment_id"]}"' in "\n".join(
            lines[error["line"] - 1:error["line"] + 12])
    assert "start is missing" in errors[0]["reason"]
    assert "Practitioner" in errors[1]["reason"]

    broken = await checkin.client.post("/clinics/north/schedule/fhir",
                                       content='{"resourceType": "Bundle",\n "entry": [\n',
                                       headers={**FRONT_DESK, **FHIR})
    assert broken.status_code == 422
    assert "not valid JSON" in broken.json()["errors"][0]["reason"]
    assert await checkin.events() == []


@pytest.mark.reliability(
    "oversized and wrongly typed uploads, wrong roles",
    "413/415/403 with a message",
)
async def test_only_front_desk_may_import_and_wrong_types_and_oversized_files_are_refused(
    checkin: Checkin,
) -> None:
    schedule = csv_rows(("apt-1", "p-aaa111", "dr-lee", "follow_up", at(30), "15", "", ""))
    kiosk = await checkin.client.post("/clinics/north/schedule/csv", content=schedule,
                                      headers={**KIOSK, **CSV})
    assert kiosk.status_code == 403, kiosk.text
    nobody = await checkin.client.post("/clinics/north/schedule/csv", content=schedule,
                                       headers=CSV)
    assert nobody.status_code == 401
    wrong = await checkin.client.post("/clinics/north/schedule/csv", content=schedule,
                                      headers={**FRONT_DESK, "Content-Type": "application/json"})
    assert wrong.status_code == 415 and "FHIR" in wrong.json()["detail"]
    huge = "x" * (1024 * 1024 + 10)
    oversized = await checkin.client.post("/clinics/north/schedule/csv", content=huge,
                                          headers={**FRONT_DESK, **CSV})
    assert oversized.status_code == 413, oversized.text
    dry = await checkin.client.post("/clinics/north/schedule/csv?dry_run=true",
                                    content=schedule, headers={**FRONT_DESK, **CSV})
    assert dry.status_code == 200 and dry.json()["dry_run"] is True
    assert dry.json()["created"] == ["apt-1"]
    assert await checkin.events() == []


async def test_a_retried_import_is_answered_again_and_imports_do_not_overlap(
    checkin: Checkin, redis_url: str, topic_prefix: str,
) -> None:
    schedule = csv_rows(("apt-1", "p-aaa111", "dr-lee", "follow_up", at(30), "15", "", ""))
    first = await checkin.import_csv(schedule, **{"Idempotency-Key": "import-1"})
    again = await checkin.import_csv(schedule, **{"Idempotency-Key": "import-1"})
    assert first.status_code == again.status_code == 200
    assert again.json() == {**first.json(), "replayed": True}
    assert again.json()["created"] == ["apt-1"]  # the first answer, not "unchanged"
    assert len(await checkin.events(expect=1)) == 1

    # another import of the same clinic still running: refused, nothing published
    client = aioredis.from_url(redis_url)
    lock = f"{topic_prefix.rstrip('.')}:checkin:import:north"
    try:
        await client.set(lock, "1", ex=30)
        moved = await checkin.import_csv(schedule.replace("dr-lee", "dr-kim"))
        assert moved.status_code == 409 and "running" in moved.json()["detail"]
    finally:
        await client.delete(lock)
        await client.aclose()
    assert len(await checkin.events()) == 1
    moved = await checkin.import_csv(schedule.replace("dr-lee", "dr-kim"))
    assert moved.json()["updated"] == ["apt-1"]


async def test_a_fhir_import_publishes_pseudonyms_mapped_visit_types_and_keeps_the_names(
    kafka_bootstrap: str, redis_url: str, topic_prefix: str,
) -> None:
    clinics = orjson.dumps({"north": {"name": "North Family Practice",
                                      "providers": {"dr-kim": "Dr. Min-jun Kim"},
                                      "rooms": {"r1": "Room One"}}}).decode()
    async with running_checkin(kafka_bootstrap, redis_url, topic_prefix,
                               clinics=clinics) as checkin:
        patient = {"resourceType": "Patient", "id": "ehr-448120", "birthDate": "1975-11-30",
                   "name": [{"family": "Moreau", "given": ["Anne"]}]}
        lee = {"resourceType": "Practitioner", "id": "dr-lee",
               "name": [{"prefix": ["Dr."], "given": ["Ada"], "family": "Lee"}]}
        kim = {"resourceType": "Practitioner", "id": "dr-kim", "name": [{"text": "Kim M."}]}
        room = {"resourceType": "Location", "id": "r5", "name": "Exam room 5"}
        followup = fhir_appointment("apt-f1", "ehr-448120", "dr-lee", at(45),
                                    visit_type="FOLLOWUP")
        checkup = fhir_appointment("apt-f2", "ehr-448121", "dr-kim", at(75),
                                   visit_type="CHECKUP")
        bundle = fhir_bundle(followup, checkup, patients=(patient, lee, kim, room))
        answer = await checkin.client.post("/clinics/north/schedule/fhir", content=bundle,
                                           headers={**FRONT_DESK, **FHIR})
        assert answer.status_code == 200, answer.text

        events = await checkin.events(expect=2)
        refs = {e["data"]["appointment_id"]: e["data"]["patient_ref"] for e in events}
        assert all(ref.startswith("pt-") for ref in refs.values())
        assert refs["apt-f1"] != refs["apt-f2"]
        assert {e["data"]["visit_type"] for e in events} == {"follow_up", "physical"}
        raw = await checkin.raw_floor()
        for ehr in (b"ehr-448120", b"ehr-448121", b"Moreau", b"1975-11-30"):
            assert ehr not in raw, ehr
        # the same Bundle again: the same pseudonyms, so nothing to publish
        again = await checkin.client.post("/clinics/north/schedule/fhir", content=bundle,
                                          headers={**FRONT_DESK, **FHIR})
        assert again.json()["unchanged"] == 2
        # the kiosk check still works from the Patient resource
        code = (await checkin.kiosk_codes())["apt-f1"]
        assert code and len(code) == 7  # printed as XXX-XXX

        directory = await checkin.client.get("/clinics/north/directory", headers=NURSE)
        assert directory.status_code == 200, directory.text
        names = directory.json()
        assert names["name"] == "North Family Practice"
        assert {p["id"]: (p["name"], p["source"]) for p in names["providers"]} == {
            "dr-lee": ("Dr. Ada Lee", "fhir"),
            "dr-kim": ("Dr. Min-jun Kim", "configuration")}  # configuration wins
        assert {r["id"]: (r["name"], r["source"]) for r in names["rooms"]} == {
            "r1": ("Room One", "configuration"), "r5": ("Exam room 5", "fhir")}
        screen = await checkin.client.get("/clinics/north/directory",
                                          headers=auth("dev-screen"))
        assert screen.status_code == 200
        nobody = await checkin.client.get("/clinics/north/directory")
        assert nobody.status_code == 401
        listed = await checkin.client.get("/clinics/north/schedule", headers=FRONT_DESK)
        rows = {r["appointment_id"]: r for r in listed.json()["appointments"]}
        assert rows["apt-f1"]["provider_name"] == "Dr. Ada Lee"
        assert rows["apt-f2"]["provider_name"] == "Dr. Min-jun Kim"


async def test_a_csv_with_an_mrn_column_never_publishes_the_mrn(checkin: Checkin) -> None:
    schedule = ("appointment_id,mrn,provider_id,visit_type,scheduled_at\n"
                f"apt-m1,MRN-0048812,dr-lee,Follow-up,{at(30)}\n")
    answer = await checkin.import_csv(schedule)
    assert answer.status_code == 200, answer.text
    (event,) = await checkin.events(expect=1)
    assert event["data"]["patient_ref"].startswith("pt-")
    assert event["data"]["visit_type"] == "follow_up"
    assert b"MRN-0048812" not in await checkin.raw_floor()
