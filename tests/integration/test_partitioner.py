"""A clinic's order kept from any producer: records produced by kcat (librdkafka, an
independent Kafka client) with its default partitioner land on another partition than
Kafka's default murmur2 puts the clinic's key on; every consumer of the floor refuses them
to the dead-letter topic saying so, and keeps going. With ``-X
partitioner=murmur2_random`` (the README's and the AsyncAPI document's example) the same
producer's records are applied."""

from __future__ import annotations

import subprocess
import zlib
from datetime import UTC, datetime
from typing import Any

import orjson

from shared import events as ev
from shared.projection import partition_for
from tests.helpers import eventually
from tests.integration.services_support import Services, bearer

PARTITIONS = 12  # clinicflow.floor.v1


def a_clinic_kcat_misplaces() -> str:
    """A clinic id whose CRC32 partition (librdkafka's default, consistent_random) is not
    its murmur2 partition (Kafka's default)."""
    for n in range(1000):
        clinic = f"kcat-{n}"
        if zlib.crc32(clinic.encode()) % PARTITIONS != partition_for(clinic.encode(),
                                                                     PARTITIONS):
            return clinic
    raise AssertionError("no clinic id found")


def kcat(services: Services, clinic: str, event: ev.Event, *extra: str) -> None:
    subprocess.run(
        ["kcat", "-P", "-b", services.kafka_bootstrap, "-t",
         services.topic("clinicflow.floor.v1"), "-k", clinic, *extra],
        input=ev.encode(event), check=True, timeout=30)


async def test_a_record_on_the_wrong_partition_is_dead_lettered_and_the_right_one_applied(
        all_services: Services) -> None:
    services = all_services
    clinic = a_clinic_kcat_misplaces()
    misplaced = ev.make_event(ev.RoomReady(room_id="r1"), clinic_id=clinic, source="kcat",
                              occurred_at=datetime.now(UTC))
    kcat(services, clinic, misplaced)  # librdkafka's default partitioner
    placed = ev.make_event(ev.RoomReady(room_id="r2"), clinic_id=clinic, source="kcat",
                           occurred_at=datetime.now(UTC))
    kcat(services, clinic, placed, "-X", "partitioner=murmur2_random")

    assert await eventually(services.settled, timeout=60)
    wrong_id = misplaced.envelope.event_id
    letters = [e for e in await services.events() if e["_topic"] == "clinicflow.deadletter.v1"
               and orjson.loads(e["original"] or "{}").get("event_id") == wrong_id]
    consumers = {letter["consumer"] for letter in letters}
    assert {"flow", "checkin", "notifications"} <= consumers, consumers
    right = partition_for(clinic.encode(), PARTITIONS)
    for letter in letters:
        assert letter["reason"].startswith(f"wrong partition: key {clinic!r} belongs on "
                                           f"partition {right} of {PARTITIONS}"), letter
    board: Any = (await services.clients["flow"].get(
        f"/clinics/{clinic}/board", headers=bearer("manager"))).json()
    rooms = {room["room_id"] for room in board["rooms"]}
    assert rooms == {"r2"}, rooms  # the misplaced record changed nothing
