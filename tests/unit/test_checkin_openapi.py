"""Checkin's OpenAPI document: every route has a summary, its request body and success
answer carry examples, every parameter has one, and the examples are valid (they are what
a reader copies first)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from fastapi import FastAPI
from pydantic import BaseModel

from services.checkin import schemas
from services.checkin.app import create_app
from services.checkin.domain import DEFAULT_VISIT_TYPES
from services.checkin.schedule import ImportKeys, parse_csv, parse_fhir_bundle
from services.checkin.schemas import CSV_EXAMPLE, FHIR_EXAMPLE
from shared.settings import CheckinSettings
from tests.openapi_support import assert_every_route_is_documented, operations


@pytest.fixture(scope="module")
def app() -> FastAPI:
    return create_app(CheckinSettings())  # nothing connects until the app starts


@pytest.fixture(scope="module")
def spec(app: FastAPI) -> dict[str, Any]:
    document: dict[str, Any] = app.openapi()
    return document


def test_every_checkin_route_is_in_the_document(spec: dict[str, Any]) -> None:
    routes = {(m, p) for m, p, _ in operations(spec)}
    assert routes == {
        ("POST", "/clinics/{clinic_id}/schedule/csv"),
        ("POST", "/clinics/{clinic_id}/schedule/fhir"),
        ("GET", "/clinics/{clinic_id}/schedule"),
        ("GET", "/clinics/{clinic_id}/directory"),
        ("POST", "/clinics/{clinic_id}/arrivals"),
        ("POST", "/clinics/{clinic_id}/visits/{visit_id}/cancel"),
        ("GET", "/clinics/{clinic_id}/no-shows"),
        ("POST", "/clinics/{clinic_id}/kiosk/check-ins"),
        ("GET", "/clinics/{clinic_id}/visits/{visit_id}/wait"),
        ("GET", "/clinics/{clinic_id}/tickets/{ticket_code}/wait"),
        ("GET", "/kiosk/{clinic_id}"),
        ("POST", "/clinics/{clinic_id}/fhir/Appointment"),
        ("PUT", "/clinics/{clinic_id}/fhir/Appointment/{resource_id}"),
        ("PUT", "/clinics/{clinic_id}/fhir/Encounter/{resource_id}"),
        ("POST", "/clinics/{clinic_id}/fhir"),
        ("POST", "/clinics/{clinic_id}/fhir/subscription"),
        ("GET", "/clinics/{clinic_id}/fhir/Encounter"),
        ("GET", "/clinics/{clinic_id}/fhir/Appointment"),
    }


def test_every_route_has_a_summary_a_description_and_examples(spec: dict[str, Any]) -> None:
    assert_every_route_is_documented(spec)


def test_commands_document_their_idempotency_key_and_refusals(spec: dict[str, Any]) -> None:
    for method, path, op in operations(spec):
        if method != "POST":
            continue
        keys = [p for p in op.get("parameters", []) if p["name"] == "Idempotency-Key"]
        assert keys, path
        for code in ("401", "403", "422", "503"):
            assert code in op["responses"], f"{path} {code}"
        # every command says how its retries are kept from duplicating
        assert "deduplicated" in op["description"] or "REQUIRE" in op["description"], path
    arrivals = spec["paths"]["/clinics/{clinic_id}/arrivals"]["post"]
    (key,) = [p for p in arrivals["parameters"] if p["name"] == "Idempotency-Key"]
    assert "REQUIRED for a walk-in" in key["description"]
    assert "Idempotency-Key" in arrivals["responses"]["428"]["content"]["application/json"][
        "example"]["detail"]


ANSWERS: dict[str, type[BaseModel]] = {
    "/clinics/{clinic_id}/schedule/csv": schemas.ImportAnswer,
    "/clinics/{clinic_id}/schedule/fhir": schemas.ImportAnswer,
    "/clinics/{clinic_id}/schedule": schemas.ScheduleAnswer,
    "/clinics/{clinic_id}/directory": schemas.DirectoryAnswer,
    "/clinics/{clinic_id}/arrivals": schemas.ArrivalAnswer,
    "/clinics/{clinic_id}/visits/{visit_id}/cancel": schemas.CancelAnswer,
    "/clinics/{clinic_id}/no-shows": schemas.FollowUpAnswer,
    "/clinics/{clinic_id}/kiosk/check-ins": schemas.KioskAnswer,
    "/clinics/{clinic_id}/visits/{visit_id}/wait": schemas.WaitAnswer,
    "/clinics/{clinic_id}/tickets/{ticket_code}/wait": schemas.WaitAnswer,
}
REQUESTS: dict[str, type[BaseModel]] = {
    "/clinics/{clinic_id}/arrivals": schemas.ArrivalRequest,
    "/clinics/{clinic_id}/visits/{visit_id}/cancel": schemas.CancelRequest,
    "/clinics/{clinic_id}/kiosk/check-ins": schemas.KioskRequest,
}


def test_success_examples_are_valid_answers_of_their_routes(spec: dict[str, Any]) -> None:
    for path, model in ANSWERS.items():
        (op,) = spec["paths"][path].values()
        (code,) = [c for c in op["responses"] if c.startswith("2")]
        model.model_validate(op["responses"][code]["content"]["application/json"]["example"])
        # the answer's schema is still documented next to the example
        assert "schema" in op["responses"][code]["content"]["application/json"], path


def test_request_examples_are_valid_requests(spec: dict[str, Any]) -> None:
    keys = ImportKeys(lambda born, letters: "digest", lambda ehr_id: f"pt-{len(ehr_id)}",
                      DEFAULT_VISIT_TYPES)
    parsed = parse_csv(CSV_EXAMPLE.encode(), clinic_id="north", keys=keys)
    assert parsed.errors == [] and len(parsed.appointments) == 2
    bundle = parse_fhir_bundle(orjson.dumps(FHIR_EXAMPLE), clinic_id="north", keys=keys)
    assert bundle.errors == [] and bundle.appointments[0].identity == "digest"
    assert bundle.appointments[0].visit_type == "follow_up"  # FOLLOWUP, HL7 v2 table 0276
    assert bundle.providers == {"dr-lee": "Dr. Ada Lee"}
    assert bundle.rooms == {"r5": "Exam room 5"}
    for path, model in REQUESTS.items():
        examples = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"][
            "examples"]
        assert examples, path
        for example in examples.values():
            model.model_validate(example["value"])


def test_the_refusals_are_documented_as_the_service_answers_them(spec: dict[str, Any]) -> None:
    arrivals = spec["paths"]["/clinics/{clinic_id}/arrivals"]["post"]["responses"]
    invalid = arrivals["422"]["content"]["application/json"]
    # the service answers a string detail naming the fields, not FastAPI's default list
    assert isinstance(invalid["example"]["detail"], str)
    for method, path, op in operations(spec):
        if path.startswith("/clinics/"):
            assert "HTTPValidationError" not in orjson.dumps(op).decode(), f"{method} {path}"
