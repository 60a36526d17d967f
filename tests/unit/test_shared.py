"""The shared library: envelope, settings, logging redaction, auth, AsyncAPI, compose."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import jsonschema
import orjson
import pytest
import structlog
import yaml

from shared import events as ev
from shared.auth import Authenticator
from shared.logging import configure_logging
from shared.service import stop_tasks
from shared.settings import (
    CommonSettings,
    InsecureConfiguration,
    NotificationsSettings,
    hash_token,
    parse_credentials,
)
from tools.asyncapi import build_document

REPO = Path(__file__).resolve().parents[2]


def test_an_event_round_trips_as_plain_json_with_the_documented_envelope() -> None:
    local = timezone(timedelta(hours=-5))
    event = ev.make_event(
        ev.PatientArrived(visit_id="v1", ticket_code="A-17", patient_ref="p-9f2",
                          provider_id="dr-lee", visit_type="follow_up"),
        clinic_id="north", source="checkin", correlation_id="v1",
        occurred_at=datetime(2026, 3, 2, 8, 14, tzinfo=local),
    )
    document = orjson.loads(ev.encode(event))
    assert set(document) == {"event_id", "event_type", "schema_version", "occurred_at",
                             "clinic_id", "correlation_id", "source", "data"}
    assert document["event_type"] == "patient.arrived" and document["schema_version"] == 1
    assert document["occurred_at"] == "2026-03-02T13:14:00Z"  # UTC inside
    back = ev.decode(ev.encode(event))
    assert back.payload == event.payload and back.envelope == event.envelope


def test_consumers_ignore_fields_they_do_not_know() -> None:
    event = ev.make_event(ev.RoomReady(room_id="r1"), clinic_id="north", source="t")
    document = orjson.loads(ev.encode(event))
    document["added_later"] = 1
    document["data"]["colour"] = "blue"
    assert ev.decode(orjson.dumps(document)).payload == ev.RoomReady(room_id="r1")


def test_an_event_over_the_size_limit_is_refused_before_it_is_parsed() -> None:
    event = ev.make_event(ev.DelayAnnounced(provider_id="dr-lee", minutes=5, reason="late"),
                          clinic_id="north", source="t")
    document = orjson.loads(ev.encode(event))
    document["padding"] = "x" * ev.MAX_EVENT_BYTES
    with pytest.raises(ev.InvalidEvent, match=r"^too large: \d+ bytes, over the 65536-byte"):
        ev.decode(orjson.dumps(document))
    assert ev.decode(ev.encode(event)).payload == event.payload


def test_an_old_version_is_upcast_before_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    """room.ready v2 renamed a field: v1 events still on the topic are upcast on read."""
    monkeypatch.delitem(ev.EVENT_TYPES, ("room.ready", 1))
    monkeypatch.setitem(ev.EVENT_TYPES, ("room.ready", 2), ev.RoomReady)
    monkeypatch.setitem(ev.UPCASTERS, ("room.ready", 1), lambda data: {"room_id": data["room"]})
    raw = orjson.dumps({"event_type": "room.ready", "schema_version": 1, "clinic_id": "n",
                        "source": "old", "data": {"room": "r7"}})
    decoded = ev.decode(raw)
    assert decoded.payload == ev.RoomReady(room_id="r7")
    assert decoded.envelope.schema_version == 2


def test_a_decoded_event_equals_the_event_sent_with_its_time_in_utc() -> None:
    local = timezone(timedelta(hours=-5))
    event = ev.make_event(ev.RoomReady(room_id="r2"), clinic_id="north", source="t",
                          occurred_at=datetime(2026, 3, 2, 8, 45, tzinfo=local))
    document = orjson.loads(ev.encode(event))
    document["occurred_at"] = "2026-03-02T08:45:00-05:00"  # as sent from a local clock
    raw = orjson.dumps(document)
    back = ev.decode(raw)
    assert back == event
    assert back.occurred_at == datetime(2026, 3, 2, 13, 45, tzinfo=UTC)
    assert back.occurred_at.tzinfo is UTC


_ROOM_READY = {"event_type": "room.ready", "schema_version": 1, "clinic_id": "north",
               "source": "t", "data": {"room_id": "r1"}}


@pytest.mark.parametrize(("raw", "reason"), [
    (b"{", "not valid JSON: Invalid JSON: EOF while parsing an object at line 1 column 1"),
    (b"[1]", "event is not a JSON object"),
    (orjson.dumps({**_ROOM_READY, "occurred_at": "2026-03-02T13:14:00"}),
     "bad envelope: occurred_at: Input should have timezone info"),
    (orjson.dumps({**_ROOM_READY, "schema_version": 3}), "unknown schema_version 3 for room.ready"),
    (orjson.dumps({**_ROOM_READY, "event_type": "room.painted"}),
     "unknown event_type 'room.painted'"),
    (orjson.dumps({**_ROOM_READY, "data": {}}), "bad room.ready data: room_id: Field required"),
    (orjson.dumps({**_ROOM_READY, "event_type": "delay.announced", "data": {"minutes": -1}}),
     "bad delay.announced data: minutes: Input should be greater than or equal to 0"),
    (orjson.dumps({**_ROOM_READY, "event_type": "charge.posted", "data": {}}),
     "bad charge.posted data: entry_id: Field required"),
])
def test_an_unreadable_event_is_refused_with_the_reason_for_its_dead_letter_record(
    raw: bytes, reason: str,
) -> None:
    with pytest.raises(ev.InvalidEvent) as refused:
        ev.decode(raw)
    assert refused.value.reason == reason


def test_an_upcast_event_that_is_still_invalid_is_refused_for_its_data(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delitem(ev.EVENT_TYPES, ("room.ready", 1))
    monkeypatch.setitem(ev.EVENT_TYPES, ("room.ready", 2), ev.RoomReady)
    monkeypatch.setitem(ev.UPCASTERS, ("room.ready", 1), lambda data: {"room_id": data["room"]})
    with pytest.raises(ev.InvalidEvent) as refused:
        ev.decode(orjson.dumps({**_ROOM_READY, "data": {"room": ""}}))
    assert refused.value.reason == ("bad room.ready data: room_id: String should match pattern "
                                    "'^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$'")


@pytest.mark.parametrize("field", ["name", "birth_date", "phone"])
def test_no_event_model_has_a_field_for_names_birth_dates_or_phones(field: str) -> None:
    for model in ev.EVENT_TYPES.values():
        assert not any(field in name for name in model.model_fields), model


def test_production_refuses_default_or_missing_secrets() -> None:
    with pytest.raises(InsecureConfiguration, match="CLINICFLOW_CREDENTIALS is not set"):
        CommonSettings(env="production", redis_url="redis://:s3cret@redis:6379/0")
    dev = json.dumps([{"name": "x", "role": "nurse", "token": "dev-nurse"}])
    with pytest.raises(InsecureConfiguration, match="development token"):
        CommonSettings(env="production", credentials=dev, redis_url="redis://:s@r:6379/0")
    good = json.dumps([{"name": "x", "role": "nurse", "token": "a-long-random-token-123"}])
    with pytest.raises(InsecureConfiguration, match="no password"):
        CommonSettings(env="production", credentials=good)
    with pytest.raises(InsecureConfiguration, match="SMS_HMAC_SECRET"):
        NotificationsSettings(env="production", credentials=good,
                              redis_url="redis://:s@r:6379/0")
    with pytest.raises(InsecureConfiguration, match="needs SASL_SSL"):
        CommonSettings(env="production", credentials=good, redis_url="redis://:s@r:6379/0")
    with pytest.raises(InsecureConfiguration, match="SASL_PASSWORD is not set"):
        CommonSettings(env="production", credentials=good, redis_url="redis://:s@r:6379/0",
                       kafka_security_protocol="SASL_SSL", kafka_sasl_username="cf")
    assert CommonSettings(env="production", credentials=good, redis_url="redis://:s@r:6379/0",
                          kafka_security_protocol="SASL_SSL", kafka_sasl_username="cf",
                          kafka_sasl_password="a-kafka-secret").env == "production"


def test_tokens_are_kept_hashed_and_matched_to_their_role_and_clinics() -> None:
    raw = json.dumps([
        {"name": "north nurse", "role": "nurse", "clinics": ["north"],
         "token": "north-nurse-token-0001"},
        {"name": "tv", "role": "screen", "token_sha256": hash_token("tv-token-000000001")},
    ])
    credentials = parse_credentials(raw)
    assert all("token" not in c.model_dump() for c in credentials)
    auth = Authenticator(credentials)
    nurse = auth.authenticate("north-nurse-token-0001")
    assert nurse is not None and nurse.role == "nurse"
    assert nurse.allows_clinic("north") and not nurse.allows_clinic("south")
    tv = auth.authenticate("tv-token-000000001")
    assert tv is not None and tv.allows_clinic("south")
    assert auth.authenticate("north-nurse-token-0002") is None


def logs_to_memory(level: str = "INFO") -> io.StringIO:
    """Configure logging as a service does (JSON) and write it to a string instead."""
    stream = io.StringIO()
    configure_logging(level, "json")
    handler = logging.getLogger().handlers[0]
    handler.stream = stream  # type: ignore[attr-defined]
    return stream


def test_logs_never_show_names_birth_dates_phone_numbers_or_emails() -> None:
    stream = logs_to_memory()
    structlog.get_logger("t").info(
        "front desk typed 555-867-5309 for jane.doe@example.org born 1984-07-12",
        name="Jane Doe", phone="+1 555 867 5309", dob="1984-07-12", visit_id="v1",
        url="http://127.0.0.1:8002/x", at="2026-03-02T13:14:00Z",
    )
    line = json.loads(stream.getvalue().strip().splitlines()[-1])
    text = json.dumps(line)
    for secret in ("Jane", "867", "jane.doe", "1984"):
        assert secret not in text
    assert line["visit_id"] == "v1" and line["url"] == "http://127.0.0.1:8002/x"
    assert line["at"] == "2026-03-02T13:14:00Z"


def test_a_level_below_the_configured_one_is_dropped_and_the_rest_written() -> None:
    stream = logs_to_memory("WARNING")
    log = structlog.get_logger("t.levels")
    log.info("patient checked in", visit_id="v1")
    log.warning("publish failed", visit_id="v2")
    lines = [json.loads(line) for line in stream.getvalue().strip().splitlines()]
    assert [(line["event"], line["level"]) for line in lines] == [("publish failed",
                                                                  "warning")]
    configure_logging("INFO", "json")  # as the other tests expect it


def test_a_retried_coordinator_lookup_is_a_warning_and_any_other_failure_an_error() -> None:
    from aiokafka.errors import GroupAuthorizationFailedError, GroupCoordinatorNotAvailableError

    stream = logs_to_memory()
    coordinator = logging.getLogger("aiokafka.consumer.group_coordinator")
    # as aiokafka says it at every start while the broker forms the group (and retries)
    coordinator.error("Group Coordinator Request failed: %s",
                      GroupCoordinatorNotAvailableError())
    coordinator.error("Group Coordinator Request failed: %s",
                      GroupAuthorizationFailedError("g"))
    levels = [json.loads(line)["level"] for line in stream.getvalue().strip().splitlines()]
    assert levels == ["warning", "error"]


def test_the_asyncapi_document_lists_every_event_on_its_topic() -> None:
    document = build_document()
    floor = document["channels"]["clinicflow_floor_v1"]
    assert "patient_arrived_v1" in floor["messages"]
    assert floor["bindings"]["kafka"]["partitions"] == 12
    for (event_type, version), _model in ev.EVENT_TYPES.items():
        name = f"{event_type.replace('.', '_')}_v{version}"
        assert name in document["components"]["messages"]


def test_every_event_in_the_asyncapi_document_has_an_example_that_decodes() -> None:
    """Each message's example is what a consumer accepts (shared.events.decode) and what
    its own schema in the document describes (checked with jsonschema)."""
    document = build_document()
    messages = document["components"]["messages"]
    assert len(messages) == len(ev.EVENT_TYPES)
    for name, message in messages.items():
        (sample,) = [e["payload"] for e in message["examples"]]
        event = ev.decode(orjson.dumps(sample))
        assert event.event_type == message["name"], name
        schema = {**message["payload"], "components": document["components"]}
        jsonschema.validate(sample, schema)
        for forbidden in ("name", "birth", "phone", "dob"):
            assert forbidden not in {k.lower() for k in sample["data"]}, (name, forbidden)


def test_the_asyncapi_document_says_how_records_are_partitioned() -> None:
    floor = build_document()["channels"]["clinicflow_floor_v1"]
    assert "murmur2" in floor["description"]
    assert "partitioner=murmur2_random" in floor["description"]


def test_the_compose_file_follows_the_compose_specification() -> None:
    schema = json.loads((REPO / "tests" / "data" / "compose-spec.json").read_text())
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    jsonschema.validate(compose, schema)
    services = compose["services"]
    assert {"kafka", "redis", "checkin", "flow", "notifications", "billing", "prometheus",
            "grafana"} <= set(services)
    for name in ("checkin", "flow", "notifications", "billing"):
        assert services[name]["depends_on"]["kafka"]["condition"] == "service_healthy"
        assert "healthcheck" in services[name]


def test_a_broken_compose_file_is_caught_by_the_schema_check() -> None:
    schema = json.loads((REPO / "tests" / "data" / "compose-spec.json").read_text())
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    compose["services"]["flow"]["depends_on"] = {"kafka": {"condition": "whenever"}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(compose, schema)


def test_utc_is_kept_inside() -> None:
    event = ev.make_event(ev.RoomReady(room_id="r1"), clinic_id="n", source="t")
    assert event.occurred_at.tzinfo == UTC


def test_the_published_asyncapi_document_is_the_one_the_code_generates() -> None:
    """docs/asyncapi.json is generated (`clinicflow asyncapi --out docs/asyncapi.json`);
    an event model changed without regenerating it fails here."""
    committed = json.loads((REPO / "docs" / "asyncapi.json").read_text())
    assert committed == json.loads(json.dumps(build_document(), default=str))


async def test_stopping_background_loops_survives_a_swallowed_cancellation() -> None:
    swallowed = 0

    async def loop() -> None:  # like a Redis client that eats a cancellation once
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed += 1

    async def failing() -> None:
        raise RuntimeError("the loop's own error")

    tasks = [asyncio.create_task(loop()), asyncio.create_task(failing())]
    await asyncio.wait_for(stop_tasks([*tasks, None]), 5)
    assert swallowed == 1 and all(task.done() for task in tasks)
