"""Reading the day's schedule: CSV and FHIR R4 Bundles, every bad row named by its line
and reason, identifying data turned into a digest at once and never quoted, EHR patient
identifiers into pseudonyms, appointment-type codes into visit types, Practitioner and
Location names into display names."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from typing import Any

from services.checkin.domain import DEFAULT_VISIT_TYPES
from services.checkin.schedule import ImportKeys, parse_csv, parse_fhir_bundle

HASHED: list[tuple[date, str]] = []


def digest(born: date, initials: str) -> str:
    HASHED.append((born, initials))
    return f"digest-{len(HASHED)}"


def pseudonym(ehr_id: str) -> str:
    return f"pt-{sum(map(ord, ehr_id)):06d}"


KEYS = ImportKeys(digest, pseudonym, DEFAULT_VISIT_TYPES)


def keys_with(hash_identity: object) -> ImportKeys:
    return ImportKeys(hash_identity, pseudonym, DEFAULT_VISIT_TYPES)  # type: ignore[arg-type]


HEADER = "appointment_id,patient_ref,provider_id,visit_type,scheduled_at,duration_minutes," \
         "dob,initials,patient_name\n"


def csv(*rows: str, header: str = HEADER) -> bytes:
    return (header + "".join(row + "\n" for row in rows)).encode()


def test_a_good_csv_becomes_appointments_in_utc_with_the_identity_as_a_digest_only() -> None:
    parsed = parse_csv(csv(
        "apt-1,p-1,dr-lee,follow_up,2026-03-02T08:15:00-05:00,15,1980-04-02,j.s.,Jane Smith",
        "apt-2,p-2,dr-kim,physical,2026-03-02T13:30:00Z,,,,",
    ), clinic_id="north", keys=KEYS)
    assert parsed.errors == []
    assert parsed.rows == 2
    first, second = parsed.appointments
    assert first.scheduled_at == datetime(2026, 3, 2, 13, 15, tzinfo=UTC)
    assert first.identity == f"digest-{len(HASHED)}"
    assert HASHED[-1] == (date(1980, 4, 2), "JS")
    assert second.identity is None and second.duration_minutes is None
    # the name column is ignored (and said so), never read into anything
    assert parsed.ignored_columns == ["patient_name"]
    assert "Jane" not in repr(parsed)


def test_every_bad_csv_row_is_reported_with_its_line_and_reason() -> None:
    parsed = parse_csv(csv(
        "apt-1,p-1,dr-lee,follow_up,2026-03-02T08:15:00-05:00,15,,,",            # line 2 ok
        "apt-2,p-2,dr lee,follow_up,2026-03-02T08:30:00-05:00,15,,,",            # line 3
        "apt-3,p-3,dr-lee,follow_up,2026-03-02 08:45,15,,,",                     # line 4
        "apt-4,p-4,dr-lee,,2026-03-02T09:00:00-05:00,15,,,",                     # line 5
        "apt-5,p-5,dr-lee,follow_up,2026-03-02T09:15:00-05:00,999,,,",           # line 6
        "apt-6,p-6,dr-lee,follow_up,2026-03-02T09:30:00-05:00,15,1980-13-45,JS,x",  # line 7
        "apt-7,p-7,dr-lee,follow_up,2026-03-02T09:45:00-05:00,15,1980-01-02,,",  # line 8
        "apt-8,p-8,dr-lee,follow_up",                                            # line 9
        "APT-1,p-9,dr-lee,follow_up,2026-03-02T10:00:00-05:00,15,,,",            # line 10
        "not a date,p-10,dr-lee,follow_up,tomorrow,15,,,",                        # line 11
    ), clinic_id="north", keys=KEYS)
    found = {p.line: p.reason for p in parsed.errors}
    assert sorted(found) == [3, 4, 5, 6, 7, 8, 9, 10, 11]
    assert "provider_id 'dr lee' is not a valid id" in found[3]
    assert "has no UTC offset" in found[4]
    assert found[5] == "visit_type is missing"
    assert "not between 1 and 480" in found[6]
    assert found[7] == "dob is not a date (YYYY-MM-DD)"  # never quotes the value
    assert "1980" not in found[8] and "together" in found[8]
    assert found[9] == "4 fields, but the header has 9"
    assert "already on line 2" in found[10]
    assert "appointment_id 'not a date'" in found[11]
    assert [p.appointment_id for p in parsed.errors][:2] == ["apt-2", "apt-3"]


def test_a_quoted_field_spanning_lines_keeps_the_line_numbers_right() -> None:
    parsed = parse_csv(csv(
        'apt-1,p-1,dr-lee,"follow\nup",2026-03-02T08:15:00-05:00,15,,,',        # lines 2-3
        "apt-2,p-2,dr-lee,follow_up,bad,15,,,",                                  # line 4
    ), clinic_id="north", keys=KEYS)
    assert [(p.line, p.appointment_id) for p in parsed.errors] == [(4, "apt-2")]


def test_a_csv_without_the_required_columns_is_refused_on_line_one() -> None:
    parsed = parse_csv(b"appointment,who,when\napt-1,p-1,2026-03-02T08:15:00Z\n",
                       clinic_id="north", keys=KEYS)
    assert [p.line for p in parsed.errors] == [1]
    assert ("missing column(s): patient_ref (or mrn), provider_id, visit_type"
            in parsed.errors[0].reason)


def test_empty_and_non_utf8_files_are_refused_with_a_reason() -> None:
    assert "empty" in parse_csv(b"", clinic_id="n", keys=KEYS).errors[0].reason
    latin = csv("apt-1,p-1,dr-lee,visite_é,2026-03-02T08:15:00Z,15,,,").replace(
        "é".encode(), b"\xe9")
    problem = parse_csv(latin, clinic_id="n", keys=KEYS).errors[0]
    assert (problem.line, problem.reason) == (2, "the file is not UTF-8 text")


def test_a_row_for_another_clinic_is_refused() -> None:
    parsed = parse_csv(
        b"clinic_id,appointment_id,patient_ref,provider_id,visit_type,scheduled_at\n"
        b"south,apt-1,p-1,dr-lee,follow_up,2026-03-02T08:15:00Z\n",
        clinic_id="north", keys=KEYS)
    assert parsed.errors[0].reason == "row is for clinic 'south', not 'north'"


def test_status_cancelled_is_read_and_unknown_statuses_are_refused() -> None:
    parsed = parse_csv(
        b"appointment_id,patient_ref,provider_id,visit_type,scheduled_at,status\n"
        b"apt-1,p-1,dr-lee,follow_up,2026-03-02T08:15:00Z,Cancelled\n"
        b"apt-2,p-2,dr-lee,follow_up,2026-03-02T08:15:00Z,maybe\n",
        clinic_id="north", keys=KEYS)
    assert parsed.errors[0].line == 3 and "maybe" in parsed.errors[0].reason


# -------------------------------------------------------------------- FHIR


def appointment(ident: str, *, status: str = "booked", start: str | None =
                "2026-03-02T08:15:00-05:00", patient: str | None = "Patient/p-1",
                practitioner: str | None = "Practitioner/dr-lee",
                visit_type: str | None = "follow_up") -> dict[str, Any]:
    resource: dict[str, Any] = {"resourceType": "Appointment", "id": ident, "status": status}
    if start:
        resource["start"] = start
        resource["end"] = start.replace("08:15", "08:35")
    if visit_type:
        resource["serviceType"] = [{"coding": [{"system": "http://example.org",
                                                "code": visit_type}]}]
    resource["participant"] = [{"actor": {"reference": r}} for r in (patient, practitioner)
                               if r]
    return {"fullUrl": f"http://ehr.example/Appointment/{ident}", "resource": resource}


def bundle(*entries: dict[str, Any]) -> bytes:
    return json.dumps({"resourceType": "Bundle", "type": "collection", "entry": list(entries)},
                      indent=2).encode()


def test_a_fhir_bundle_becomes_appointments_and_patients_give_the_kiosk_check() -> None:
    patient = {"fullUrl": "urn:uuid:p1", "resource": {
        "resourceType": "Patient", "id": "p-1", "birthDate": "1980-04-02",
        "name": [{"use": "official", "family": "Smith", "given": ["Jane", "Q"]}]}}
    parsed = parse_fhir_bundle(bundle(
        patient,
        appointment("apt-1"),
        appointment("apt-2", status="cancelled", patient="Patient/p-2"),
        appointment("apt-3", status="proposed"),
    ), clinic_id="north", keys=KEYS)
    assert parsed.errors == []
    first, second = parsed.appointments
    # the Patient's id is the EHR's: only its pseudonym is kept
    assert (first.patient_ref, first.provider_id, first.visit_type) == (pseudonym("p-1"),
                                                                         "dr-lee", "follow_up")
    assert first.duration_minutes == 20
    assert first.identity is not None and HASHED[-1] == (date(1980, 4, 2), "JS")
    assert second.status == "cancelled" and second.identity is None
    assert [(s.appointment_id, s.reason) for s in parsed.skipped] == [
        ("apt-3", "status 'proposed' is not on the schedule")]
    assert "Smith" not in repr(parsed)


def test_every_bad_fhir_entry_is_reported_with_the_line_where_it_starts() -> None:
    data = bundle(
        appointment("apt-1"),
        appointment("apt-2", start=None),
        appointment("apt-3", patient=None),
        appointment("apt-4", practitioner=None),
        appointment("apt-5", visit_type=None),
        appointment("apt-6", status="maybe"),
        appointment("apt-1"),
    )
    parsed = parse_fhir_bundle(data, clinic_id="north", keys=KEYS)
    lines = data.decode().splitlines()
    for problem in parsed.errors:
        # the reported line is where that entry's object opens
        assert lines[problem.line - 1].strip() == "{", problem
    reasons = [(p.appointment_id, p.reason.split(": ", 1)[-1]) for p in parsed.errors]
    assert reasons == [
        ("apt-2", "start is missing"),
        ("apt-3", "no participant is a Patient"),
        ("apt-4", "no participant is a Practitioner"),
        ("apt-5", "visit_type is missing"),
        ("apt-6", "status 'maybe' is not an Appointment status"),
        ("apt-1", "Appointment 'apt-1' is already on line 5"),
    ]
    assert parsed.errors[0].reason.startswith("entry[1]: ")


def test_broken_json_and_non_bundles_are_refused_with_where_and_why() -> None:
    broken = b'{\n  "resourceType": "Bundle",\n  "entry": [\n    {"resource": }\n  ]\n}'
    problem = parse_fhir_bundle(broken, clinic_id="n", keys=KEYS).errors[0]
    assert problem.line == 4 and "not valid JSON" in problem.reason
    not_bundle = parse_fhir_bundle(b'{"resourceType": "Appointment"}', clinic_id="n",
                                   keys=KEYS)
    assert "not a FHIR Bundle" in not_bundle.errors[0].reason


def test_a_file_separated_by_semicolons_is_refused_with_a_hint() -> None:
    data = (b"appointment_id;patient_ref;provider_id;visit_type;scheduled_at\n"
            b"apt-1;p-1;dr-lee;follow_up;2026-03-02T08:15:00-05:00\n")
    parsed = parse_csv(data, clinic_id="north", keys=keys_with(lambda born, letters: "x"))
    assert [p.line for p in parsed.errors] == [1]
    assert "separated by ';'" in parsed.errors[0].reason


def test_fhir_participants_may_point_at_other_entries_by_their_full_url() -> None:
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:0d3c6a52-patient",
         "resource": {"resourceType": "Patient", "id": "p-7f3a9c", "birthDate": "1980-04-02",
                      "name": [{"family": "Smith", "given": ["Jane"]}]}},
        {"fullUrl": "urn:uuid:9a1b2c3d-practitioner",
         "resource": {"resourceType": "Practitioner"}},
        {"resource": {
            "resourceType": "Appointment", "id": "apt-1", "status": "booked",
            "serviceType": [{"text": "follow_up"}], "start": "2026-03-02T08:15:00-05:00",
            "participant": [{"actor": {"reference": "urn:uuid:0d3c6a52-patient"}},
                            {"actor": {"reference": "urn:uuid:9a1b2c3d-practitioner"}}]}}]}
    parsed = parse_fhir_bundle(json.dumps(bundle).encode(), clinic_id="north",
                               keys=keys_with(lambda born, letters: f"{born}|{letters}"))
    assert parsed.errors == []
    (appointment,) = parsed.appointments
    assert appointment.patient_ref == pseudonym("p-7f3a9c")
    assert appointment.provider_id == "9a1b2c3d-practitioner"
    assert appointment.identity == "1980-04-02|JS"


def test_no_fhir_patient_id_survives_the_import_only_its_pseudonym() -> None:
    patient = {"resource": {"resourceType": "Patient", "id": "ehr-448120",
                            "birthDate": "1980-04-02", "name": [{"family": "Smith",
                                                                 "given": ["Jane"]}]}}
    parsed = parse_fhir_bundle(bundle(patient, appointment("apt-1",
                                                           patient="Patient/ehr-448120")),
                               clinic_id="north", keys=KEYS)
    (found,) = parsed.appointments
    assert found.patient_ref == pseudonym("ehr-448120")
    assert found.identity is not None  # the Patient was still found for the kiosk check
    assert "ehr-448120" not in found.payload().model_dump_json()


def test_a_csv_with_an_mrn_column_publishes_its_pseudonym_never_the_mrn() -> None:
    header = "appointment_id,mrn,provider_id,visit_type,scheduled_at\n"
    parsed = parse_csv(csv("apt-1,MRN-0048812,dr-lee,FOLLOWUP,2026-03-02T08:15:00-05:00",
                           "apt-2,,dr-lee,follow_up,2026-03-02T08:30:00-05:00",
                           header=header), clinic_id="north", keys=KEYS)
    assert [(p.line, p.reason) for p in parsed.errors] == [
        (3, "patient_ref (or mrn) is missing")]
    (found,) = parsed.appointments
    assert found.patient_ref == pseudonym("MRN-0048812") and found.visit_type == "follow_up"
    both = parse_csv(csv("apt-1,p-1,MRN-1,dr-lee,follow_up,2026-03-02T08:15:00Z",
                         header="appointment_id,patient_ref,medical_record_number,"
                                "provider_id,visit_type,scheduled_at\n"),
                     clinic_id="north", keys=KEYS)
    assert both.errors[0].reason == "give patient_ref or mrn, not both"
    assert "MRN-1" not in repr(both)


def test_fhir_appointment_types_become_the_estimators_visit_types() -> None:
    entries = []
    for ident, code in (("apt-1", "FOLLOWUP"), ("apt-2", "CHECKUP"), ("apt-3", "WALKIN"),
                        ("apt-4", "EMERGENCY"), ("apt-5", "ROUTINE"), ("apt-6", "Sports")):
        entry = appointment(ident, visit_type=None)
        entry["resource"]["appointmentType"] = {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/v2-0276", "code": code}]}
        entries.append(entry)
    parsed = parse_fhir_bundle(bundle(*entries), clinic_id="north",
                               keys=ImportKeys(digest, pseudonym,
                                               {**DEFAULT_VISIT_TYPES, "sports": "physical"}))
    assert [a.visit_type for a in parsed.appointments] == [
        "follow_up", "physical", "walk_in", "urgent", "follow_up", "physical"]


def test_practitioner_and_location_names_of_a_bundle_become_display_names() -> None:
    practitioner = {"resource": {"resourceType": "Practitioner", "id": "dr-lee", "name": [
        {"use": "official", "prefix": ["Dr."], "given": ["Ada"], "family": "Lee"}]}}
    with_text = {"resource": {"resourceType": "Practitioner", "id": "dr-kim",
                              "name": [{"text": "Dr. Min-jun Kim"}]}}
    room = {"resource": {"resourceType": "Location", "id": "r5", "name": "Exam room 5"}}
    seen = appointment("apt-1")
    seen["resource"]["participant"].append({"actor": {"reference": "Location/r6",
                                                      "display": "Exam room 6"}})
    by_display = appointment("apt-2", practitioner="Practitioner/dr-ray")
    by_display["resource"]["participant"][1]["actor"]["display"] = "Dr. Ray"
    parsed = parse_fhir_bundle(bundle(practitioner, with_text, room, seen, by_display),
                               clinic_id="north", keys=KEYS)
    assert parsed.errors == []
    assert parsed.providers == {"dr-lee": "Dr. Ada Lee", "dr-kim": "Dr. Min-jun Kim",
                                "dr-ray": "Dr. Ray"}
    assert parsed.rooms == {"r5": "Exam room 5", "r6": "Exam room 6"}
