"""Every HTTP API fuzzed from its own OpenAPI document (schemathesis 4): each operation of
checkin, flow, notifications and billing gets generated requests, valid and invalid, with
the credential its route names and with none, against the services running on the real
Kafka and Redis. Asserted: no 5xx; every answer's status is documented for its route,
its content type too, and its body matches the documented schema; a refused request
publishes nothing; and every event the run published belongs to a request that was
accepted (flow's and checkin's commands by the event id they answered with).

Deterministic (hypothesis derandomized, no example database) and bounded: a few examples
per operation and mode. Server-Sent Event routes are not body-fuzzed (nothing to
generate, and a stream never ends); their credential checks are asserted here and in
the role matrix.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.helpers import eventually
from tests.integration.services_support import Services, bearer
from tests.integration.test_role_matrix import POLICY, PUBLIC, SERVICES, STREAMS

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]
# examples per operation: (mode, count) with the route's credential, and without one
WITH_CREDENTIAL = ((GenerationMode.POSITIVE, 5), (GenerationMode.NEGATIVE, 3))
WITHOUT_CREDENTIAL = ((GenerationMode.POSITIVE, 1), (GenerationMode.NEGATIVE, 1))
# the facts commands make (estimates and notifications follow from them, by consumers)
COMMAND_TOPICS = {"clinicflow.floor.v1", "clinicflow.ledger.v1", "clinicflow.audit.v1"}


def role_for(service: str, key: str) -> str | None:
    """The credential the fuzzer uses: a manager where allowed, else the first named role
    (None: a public route)."""
    policy = POLICY[service][key]
    if policy == PUBLIC:
        return None
    assert isinstance(policy, frozenset)
    return "manager" if "manager" in policy else sorted(policy)[0]


def generate(operation: Any, mode: GenerationMode, count: int) -> list[Case]:
    """``count`` cases for ``operation`` (the schema's own examples first), always the
    same ones: hypothesis derandomized, no example database."""
    cases: list[Case] = []

    @settings(max_examples=count, database=None, derandomize=True, deadline=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(operation.as_strategy(generation_mode=mode))
    def collect(case: Case) -> None:
        cases.append(case)

    try:
        collect()
    except Unsatisfiable:
        assert mode is GenerationMode.NEGATIVE, f"no valid request for {operation.label}"
        # nothing in the request can be made invalid (e.g. GET /clinics): positive only
    return cases


@dataclass
class Answered:
    service: str
    key: str
    clinic_id: str | None  # as the server read it from the path
    status: int
    body: Any


def clinic_of(path_url: str) -> str | None:
    parts = urlsplit(path_url).path.split("/")
    return unquote(parts[2]) if len(parts) > 2 and parts[1] == "clinics" else None


@dataclass
class FuzzRun:
    answered: list[Answered] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    operations: int = 0


def fuzz_service(service: str, url: str, schema_document: dict[str, Any],
                 *, anonymous: bool) -> FuzzRun:
    """Fuzz every operation of one service (runs in a thread: the services answer from
    the event loop meanwhile)."""
    schema = schemathesis.openapi.from_dict(schema_document)
    run = FuzzRun()
    session = requests.Session()
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), f"{service}: an operation the fuzzer cannot read: {result}"
        operation = result.ok()
        key = f"{operation.method.upper()} {operation.path}"
        assert key in POLICY[service], f"{service}: {key} has no declared policy"
        if (service, key) in STREAMS:
            continue  # asserted by test_streams_refuse_without_the_right_credential
        role = role_for(service, key)
        if anonymous and role is None:
            continue  # public: fuzzed once, with the credentialed run
        headers = {} if anonymous or role is None else bearer(role)
        run.operations += 1
        for mode, count in WITHOUT_CREDENTIAL if anonymous else WITH_CREDENTIAL:
            for case in generate(operation, mode, count):
                response = case.call(base_url=url, headers=headers, session=session,
                                     timeout=60)
                try:
                    case.validate_response(response, checks=CHECKS)
                except FailureGroup as failure:  # every failed check, described
                    run.failures.append(f"{service} {key} ({mode.value}, "
                                        f"{role if headers else 'no credential'}): "
                                        f"{str(failure)[:1500]}")
                if anonymous and response.status_code < 400:
                    run.failures.append(f"{service} {key}: {response.status_code} without a "
                                        "credential")
                try:
                    body = response.json()
                except ValueError:
                    body = None
                run.answered.append(Answered(service, key, clinic_of(response.request.path_url),
                                             response.status_code, body))
    session.close()
    return run


async def fuzz_all(services: Services, *, anonymous: bool) -> FuzzRun:
    total = FuzzRun()
    for service in SERVICES:
        run = await asyncio.to_thread(fuzz_service, service, services.urls[service],
                                      services.apps[service].openapi(), anonymous=anonymous)
        assert run.operations > 0, f"{service}: no operation fuzzed"
        total.answered += run.answered
        total.failures += run.failures
        total.operations += run.operations
    return total


def dead_letters(events: list[dict[str, Any]]) -> set[tuple[str, str, str, int, int]]:
    """The dead letters on the topic: (consumer, reason, source topic, partition, offset)."""
    return {(e["consumer"], e["reason"], e["source_topic"], e["partition"], e["offset"])
            for e in events if e["_topic"] == "clinicflow.deadletter.v1"}


def command_events(events: list[dict[str, Any]], seen: set[str]) -> list[dict[str, Any]]:
    return [e for e in events if e["_topic"] in COMMAND_TOPICS and e["event_id"] not in seen]


# schemathesis draws from `random` inside its strategies (hypothesis seeds it per example)
@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
@pytest.mark.reliability(
    "every operation of the four HTTP APIs fuzzed from its OpenAPI spec (schemathesis, "
    "valid and invalid requests), with the route's credential and with none",
    "no 5xx; status, content type and body as documented; nothing published by a refused "
    "request; every event published belongs to an accepted request (flow and checkin "
    "commands: the very event id they answered)")
async def test_fuzzing_every_api_from_its_spec_finds_no_5xx_and_no_half_effect(
        all_services: Services) -> None:
    services = all_services
    assert await eventually(services.settled, timeout=60)
    seen = {e["event_id"] for e in await services.events()}
    letters_before = dead_letters(await services.events())

    refused = await fuzz_all(services, anonymous=True)
    assert not refused.failures, "\n\n".join(refused.failures)
    # refused before the credential is looked at only when the body cannot be read at all
    assert all(a.status in (400, 401, 413, 422) for a in refused.answered), sorted(
        {(a.service, a.key, a.status) for a in refused.answered
         if a.status not in (400, 401, 413, 422)})
    published = command_events(await services.events(), seen)
    assert not published, f"requests without a credential published {published[:3]}"

    accepted = await fuzz_all(services, anonymous=False)
    assert not accepted.failures, "\n\n".join(accepted.failures)
    published = command_events(await services.events(), seen)
    commands = [a for a in accepted.answered
                if not a.key.startswith("GET ") and 200 <= a.status < 300]
    clinics = {a.clinic_id for a in commands}
    strays = [e for e in published if e.get("clinic_id") not in clinics]
    assert not strays, f"events for clinics no request was accepted for: {strays[:3]}"
    answered_ids = {a.body["event_id"] for a in commands
                    if a.service in ("flow", "checkin") and isinstance(a.body, dict)
                    and "event_id" in a.body}
    # a kiosk check-in answers with its visit rather than the event id
    answered_visits = {a.body.get("visit_id") for a in commands if a.service == "checkin"
                       and isinstance(a.body, dict)}
    made = {e["event_id"] for e in published
            if e["source"] in ("flow", "checkin") and e["event_type"] in FROM_COMMANDS
            and e["data"].get("visit_id") not in answered_visits - {None}}
    assert made <= answered_ids, f"published, never answered: {sorted(made - answered_ids)}"
    assert answered_ids <= {e["event_id"] for e in published}, (
        f"answered, never published: {sorted(answered_ids - made)}")
    statuses = {a.status for a in accepted.answered}
    assert any(200 <= s < 300 for s in statuses), statuses  # the fuzz did get through
    # the invariant of a command checked against what exists: once every consumer has
    # applied everything the accepted requests published, none of it was dead-lettered
    # (a 2xx means the consumers will apply it)
    assert await eventually(services.settled, timeout=60)
    letters = dead_letters(await services.events()) - letters_before
    assert not letters, "accepted requests led to dead letters: " + "; ".join(
        f"{consumer}: {reason}" for consumer, reason, *_ in sorted(letters)[:5])


# the events flow's and checkin's commands publish, each answered with its event id
FROM_COMMANDS = {"room.ready", "room.out_of_service", "patient.roomed", "provider.in",
                 "delay.announced", "delay.cleared", "action.undone", "patient.arrived"}


@pytest.mark.reliability(
    "the Server-Sent Event streams (flow's board, notifications' nurse alerts) without a "
    "credential and with one",
    "401 without a credential, 403 for a role not named, 200 text/event-stream for one "
    "that is")
async def test_streams_refuse_without_the_right_credential(all_services: Services) -> None:
    for service, key in sorted(STREAMS):
        path = key.split(" ", 1)[1].replace("{clinic_id}", "fuzz")
        client = all_services.clients[service]
        allowed = POLICY[service][key]
        assert isinstance(allowed, frozenset)
        for role in ("none", "kiosk", *sorted(allowed)):
            async with client.stream("GET", path, headers=bearer(role)) as answer:
                if role == "none":
                    assert answer.status_code == 401
                elif role not in allowed:
                    assert answer.status_code == 403
                else:
                    assert answer.status_code == 200, (service, role)
                    assert answer.headers["content-type"].startswith("text/event-stream")
