"""Notifications' OpenAPI document: every route has a summary and a description, every
parameter an example, its request body and success answer carry examples, and it
documents the refusals it can answer (401, 403, 422 and 503 everywhere; 404 where it
names a visit or a notification; 409 where a visit may have ended) with an example
each. The examples are valid (they are what a reader copies first)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from fastapi import FastAPI
from pydantic import BaseModel

from services.notifications import schemas
from services.notifications.accuracy_api import AccuracyAnswer
from services.notifications.app import create_app
from shared.settings import NotificationsSettings
from tests.openapi_support import assert_every_route_is_documented, has_example, operations

CONTACT = "/clinics/{clinic_id}/visits/{visit_id}/contact"


@pytest.fixture(scope="module")
def app() -> FastAPI:
    return create_app(NotificationsSettings())  # nothing connects until the app starts


@pytest.fixture(scope="module")
def spec(app: FastAPI) -> dict[str, Any]:
    document: dict[str, Any] = app.openapi()
    return document


def test_every_notifications_route_is_in_the_document(spec: dict[str, Any]) -> None:
    assert {(m, p) for m, p, _ in operations(spec)} == {
        ("PUT", CONTACT), ("GET", CONTACT), ("PATCH", CONTACT), ("DELETE", CONTACT),
        ("GET", "/clinics/{clinic_id}/notifications"),
        ("GET", "/clinics/{clinic_id}/notifications/{notification_id}"),
        ("GET", "/clinics/{clinic_id}/told"),
        ("GET", "/clinics/{clinic_id}/alerts"),
        ("GET", "/clinics/{clinic_id}/alerts/stream"),
        ("GET", "/clinics/{clinic_id}/estimates"),
        ("GET", "/clinics/{clinic_id}/rules"),
        ("GET", "/clinics/{clinic_id}/accuracy"),
        ("GET", "/clinics/{clinic_id}/satisfaction"),
        ("POST", "/clinics/{clinic_id}/complaints"),
        ("GET", "/clinics/{clinic_id}/complaints"),
        ("GET", "/clinics/{clinic_id}/complaints/{complaint_id}"),
        ("POST", "/clinics/{clinic_id}/complaints/{complaint_id}/acknowledge"),
        ("POST", "/clinics/{clinic_id}/complaints/{complaint_id}/resolve"),
    }


def test_every_route_has_a_summary_a_description_and_examples(spec: dict[str, Any]) -> None:
    assert_every_route_is_documented(spec)


def test_every_route_documents_its_refusals_with_an_example(spec: dict[str, Any]) -> None:
    for method, path, op in operations(spec):
        where = f"{method} {path}"
        expected = {"401", "403", "422", "503"}
        if "{visit_id}" in path or "{notification_id}" in path:
            expected.add("404")
        if path == CONTACT and method in ("PUT", "PATCH"):
            expected.add("409")  # the visit has ended (or the same key is still running)
        assert expected <= set(op["responses"]), (where, expected - set(op["responses"]))
        for code, response in op["responses"].items():
            if code.startswith("2"):
                continue
            assert response.get("description"), f"{where} {code}"
            [media] = response["content"].values()
            assert has_example(media) and "schema" in media, f"{where} {code}"
            assert isinstance(media["example"]["detail"], str), f"{where} {code}"


def test_the_refusals_name_what_they_refuse(spec: dict[str, Any]) -> None:
    put = spec["paths"][CONTACT]["put"]
    assert "no visit" in put["responses"]["404"]["content"]["application/json"]["example"][
        "detail"]
    assert "ended" in put["responses"]["409"]["content"]["application/json"]["example"][
        "detail"]
    # how retries are kept from duplicating, said where a client reads it
    for method in ("put", "patch"):
        op = spec["paths"][CONTACT][method]
        assert "deduplicated on the visit" in op["description"], method
        (key,) = [p for p in op["parameters"] if p["name"] == "Idempotency-Key"]
        assert not key["required"] and "deduplicated" in key["description"]
    for method, path, op in operations(spec):
        # the service answers a string detail naming the fields, not FastAPI's list
        assert "HTTPValidationError" not in orjson.dumps(op).decode(), f"{method} {path}"


ANSWERS: dict[tuple[str, str], tuple[type[BaseModel], str]] = {
    ("put", CONTACT): (schemas.ContactSaved, "200"),
    ("get", CONTACT): (schemas.ContactView, "200"),
    ("patch", CONTACT): (schemas.ContactSaved, "200"),
    ("get", "/clinics/{clinic_id}/notifications"): (schemas.NotificationList, "200"),
    ("get", "/clinics/{clinic_id}/notifications/{notification_id}"): (
        schemas.NotificationStatus, "200"),
    ("get", "/clinics/{clinic_id}/told"): (schemas.ToldAnswer, "200"),
    ("get", "/clinics/{clinic_id}/alerts"): (schemas.AlertsAnswer, "200"),
    ("get", "/clinics/{clinic_id}/estimates"): (schemas.EstimatesAnswer, "200"),
    ("get", "/clinics/{clinic_id}/rules"): (schemas.RulesAnswer, "200"),
    ("get", "/clinics/{clinic_id}/accuracy"): (AccuracyAnswer, "200"),
}


def test_success_examples_are_valid_answers_of_their_routes(spec: dict[str, Any]) -> None:
    for (method, path), (model, code) in ANSWERS.items():
        media = spec["paths"][path][method]["responses"][code]["content"]["application/json"]
        model.model_validate(media["example"])
        assert "schema" in media, path  # the answer's schema next to its example
    stream = spec["paths"]["/clinics/{clinic_id}/alerts/stream"]["get"]["responses"]["200"]
    assert "event: alert.raised" in stream["content"]["text/event-stream"]["example"]


def test_request_examples_are_valid_requests(spec: dict[str, Any]) -> None:
    for method, model in (("put", schemas.ContactIn), ("patch", schemas.PreferencesPatch)):
        examples = spec["paths"][CONTACT][method]["requestBody"]["content"][
            "application/json"]["examples"]
        assert examples, method
        for example in examples.values():
            model.model_validate(example["value"])
