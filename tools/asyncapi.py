"""``clinicflow asyncapi``: the AsyncAPI 3.0 document of every topic and event, generated
from the code (shared/topics.py and the pydantic models in shared/events*.py)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from shared import events as ev
from shared.topics import (
    ALL_TOPICS,
    DEAD_LETTER,
    DIRECTORY,
    ESTIMATES,
    FLOOR,
    LEDGER,
    NOTIFICATIONS,
    TOLD,
)
from tools.asyncapi_examples import example

PARTITIONING = (
    "Records are keyed by clinic_id (UTF-8) and placed by Kafka's default partitioner: "
    "murmur2 of the key, made positive, modulo the topic's partition count, as the Java "
    "client and aiokafka do. Every record of a clinic is on one partition, which keeps the "
    "clinic's day in order. librdkafka clients (kcat, confluent-kafka) default to another "
    "partitioner (consistent_random, crc32): set partitioner=murmur2_random, e.g. "
    "`kcat -P -b HOST:9092 -t clinicflow.floor.v1 -k north -X partitioner=murmur2_random`. "
    "A consumer that reads a record on another partition than its key's refuses it to the "
    "dead-letter topic with the reason ('wrong partition: ...').")

# which event types travel on which topic, and who publishes / consumes them
CHANNEL_EVENTS: dict[str, tuple[str, ...]] = {
    FLOOR.name: ("appointment.scheduled", "patient.arrived", "arrival.cancelled",
                 "patient.no_show", "room.ready", "room.out_of_service", "patient.roomed",
                 "provider.in", "delay.announced", "delay.cleared", "patient.checked_out",
                 "action.undone"),
    ESTIMATES.name: ("wait.estimated",),
    TOLD.name: ("wait.told",),
    DIRECTORY.name: ("directory.named",),
}


def _message_name(event_type: str, version: int) -> str:
    return f"{event_type.replace('.', '_')}_v{version}"


def build_document() -> dict[str, Any]:
    """The AsyncAPI document as a dict."""
    envelope = ev.Envelope.model_json_schema()
    envelope_props = {k: v for k, v in envelope["properties"].items() if k != "data"}
    messages: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    by_type: dict[str, list[str]] = {}
    for (event_type, version), model in sorted(ev.EVENT_TYPES.items()):
        name = _message_name(event_type, version)
        payload_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for def_name, definition in payload_schema.pop("$defs", {}).items():
            schemas[def_name] = definition
        schemas[model.__name__] = payload_schema
        sample = example(event_type, version)
        messages[name] = {
            "name": event_type,
            "title": f"{event_type} v{version}",
            "summary": (model.__doc__ or "").strip().splitlines()[0],
            "contentType": "application/json",
            "payload": {
                "type": "object",
                "required": ["event_id", "event_type", "schema_version", "occurred_at",
                             "clinic_id", "source", "data"],
                "properties": {
                    **envelope_props,
                    "event_type": {"const": event_type},
                    "schema_version": {"const": version},
                    "data": {"$ref": f"#/components/schemas/{model.__name__}"},
                },
            },
            "bindings": {"kafka": {"key": {"type": "string",
                                           "description": "the event's clinic_id"}}},
            "examples": [{"name": f"{event_type} example", "payload": sample}],
        }
        by_type.setdefault(event_type, []).append(name)
    channels: dict[str, Any] = {}
    for spec in ALL_TOPICS:
        if spec.name in CHANNEL_EVENTS:
            names = [n for t in CHANNEL_EVENTS[spec.name] for n in by_type.get(t, [])]
        elif spec is LEDGER:
            names = [n for t, ns in by_type.items() if t.split(".")[0] in
                     ("charge", "payment", "patient_share", "entry", "coverage", "ledger")
                     for n in ns]
        elif spec is NOTIFICATIONS:
            names = [n for t, ns in by_type.items()
                     if t.split(".")[0] in ("notification", "nurse_alert", "feedback",
                                              "complaint")
                     for n in ns]
        else:
            names = []
        channel: dict[str, Any] = {
            "address": spec.name,
            "description": f"{spec.description} {PARTITIONING}"
            if spec.name in (FLOOR.name, ESTIMATES.name, TOLD.name, LEDGER.name, DIRECTORY.name)
            else spec.description,
            "bindings": {"kafka": {"partitions": spec.partitions,
                                   "topicConfiguration": {"retention.ms": spec.retention_ms}}},
            "messages": {n: {"$ref": f"#/components/messages/{n}"} for n in names},
        }
        if spec is DEAD_LETTER:
            channel["description"] += (" Records: reason, consumer, source_topic, partition, "
                                       "offset, key, dead_lettered_at, original (text) or "
                                       "original_base64.")
        channels[spec.name.replace(".", "_")] = channel
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "clinicflow events",
            "version": "1",
            "description": "Every event clinicflow publishes. One JSON envelope for all; "
                           f"floor events are keyed by clinic_id. {PARTITIONING}",
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "components": {"messages": messages, "schemas": schemas},
    }


def run(args: argparse.Namespace) -> int:
    text = json.dumps(build_document(), indent=2, default=str)
    if args.out == "-":
        sys.stdout.write(text + "\n")
    else:
        with open(args.out, "w") as handle:
            handle.write(text + "\n")
    return 0


def add_cli(subparsers: Any) -> None:
    parser = subparsers.add_parser("asyncapi", help="write the AsyncAPI document of all events")
    parser.add_argument("--out", default="-", help="file to write (default stdout)")
    parser.set_defaults(func=run)
