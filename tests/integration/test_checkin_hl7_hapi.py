"""An independent HL7 v2 implementation talks to the feed: HAPI HL7v2 (Java, from Maven
Central) parses the clinic's SIU and ADT messages with its own v2.5.1 structures, sends
them over MLLP with its own client, and parses the ACKs checkin answers.

HAPI's jars are fetched by Maven on first use (deploy/local/hapi-hl7v2-pom.xml, pinned)
into ~/.cache/clinicflow/hapi-hl7v2, as Kafka's are; the sender (hapi/HapiSender.java)
is compiled once per session into a temporary directory."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.integration.hapi import HERE, java_command, maven_jars
from tests.integration.test_checkin_hl7_support import Ehr, Feed, module_prefix, running_feed

REPO = Path(__file__).resolve().parents[2]
POM = REPO / "deploy" / "local" / "hapi-hl7v2-pom.xml"
SENDER = HERE / "HapiSender.java"
HAPI_JAR = "hapi-base-2.6.0.jar"


@pytest.fixture(scope="session")
def hapi_sender(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The command that runs the compiled sender: ``java -cp ... HapiSender``."""
    return java_command(SENDER, maven_jars(POM, "hapi-hl7v2", HAPI_JAR),
                        tmp_path_factory.mktemp("hapi-classes"))


@pytest.fixture(scope="module")
async def feed(kafka_bootstrap: str, redis_url: str) -> AsyncIterator[Feed]:
    async with running_feed(kafka_bootstrap, redis_url, module_prefix()) as service:
        yield service


async def send_with_hapi(command: list[str], port: int, messages: dict[str, bytes],
                         folder: Path) -> dict[str, list[str]]:
    """HAPI sends each message (in order, one connection); its reading of each ACK."""
    files = []
    for name, message in messages.items():
        path = folder / name
        path.write_bytes(message)
        files.append(str(path))
    process = await asyncio.create_subprocess_exec(
        *command, str(port), *files, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, err.decode()[-3000:]
    lines = [line.split("\t") for line in out.decode().splitlines() if "\t" in line]
    return {fields[0]: fields[1:] for fields in lines}


async def test_hapi_sends_the_days_bookings_and_registrations_and_reads_our_acks(
    feed: Feed, hapi_sender: list[str], tmp_path: Path,
) -> None:
    ehr, now = Ehr(), datetime.now(UTC).replace(microsecond=0)
    booked, cancelled = f"H{uuid.uuid4().hex[:8]}", f"H{uuid.uuid4().hex[:8]}"
    patient, visit = str(uuid.uuid4().int)[:9], f"V{uuid.uuid4().hex[:8]}"
    earlier = now - timedelta(minutes=10)
    messages = {
        "1-s12": ehr.siu("S12", booked, now + timedelta(minutes=5), sent_at=earlier,
                         mrn=patient, control="HAPI-1-" + booked),
        "2-s12": ehr.siu("S12", cancelled, now + timedelta(minutes=50), sent_at=earlier,
                         control="HAPI-2-" + cancelled),
        "3-s14": ehr.siu("S14", booked, now + timedelta(minutes=5), minutes=30,
                         sent_at=earlier + timedelta(minutes=1), mrn=patient,
                         control="HAPI-3-" + booked),
        "4-s15": ehr.siu("S15", cancelled, now + timedelta(minutes=50), sent_at=now,
                         status="Cancelled", control="HAPI-4-" + cancelled),
        "5-a04": ehr.adt("A04", sent_at=now, visit=visit, mrn=patient,
                         control="HAPI-5-" + visit),
        "6-a08": ehr.adt("A08", sent_at=now + timedelta(seconds=1), visit=visit, mrn=patient,
                         control="HAPI-6-" + visit),
        "7-a11": ehr.adt("A11", sent_at=now + timedelta(seconds=2), visit=visit, mrn=patient,
                         control="HAPI-7-" + visit),
        "8-s26": ehr.siu("S26", "UNKNOWN-" + booked, now, sent_at=now,
                         control="HAPI-8-" + booked),
    }
    read = await send_with_hapi(hapi_sender, feed.port, messages, tmp_path)

    assert {name: fields[:3] for name, fields in read.items()} == {
        "1-s12": ["AA", "HAPI-1-" + booked, "ACK"],
        "2-s12": ["AA", "HAPI-2-" + cancelled, "ACK"],
        "3-s14": ["AA", "HAPI-3-" + booked, "ACK"],
        "4-s15": ["AA", "HAPI-4-" + cancelled, "ACK"],
        "5-a04": ["AA", "HAPI-5-" + visit, "ACK"],
        "6-a08": ["AA", "HAPI-6-" + visit, "ACK"],
        "7-a11": ["AA", "HAPI-7-" + visit, "ACK"],
        "8-s26": ["AE", "HAPI-8-" + booked, "ACK"],
    }
    assert read["8-s26"][3:] == ["SCH^2", "204"]  # HAPI reads our ERR: where and why

    events = await feed.floor()
    visits = {e["data"]["visit_id"] for e in events if e["event_type"] == "patient.arrived"
              and e["data"]["appointment_id"] == booked}
    kinds = [(e["event_type"], e["data"].get("status") or e["data"].get("reason"))
             for e in events if e["data"].get("appointment_id") in (booked, cancelled)
             or e["data"].get("visit_id") in visits]
    assert kinds == [("appointment.scheduled", "booked"), ("appointment.scheduled", "booked"),
                     ("appointment.scheduled", "booked"),
                     ("appointment.scheduled", "cancelled"),
                     ("patient.arrived", None), ("arrival.cancelled", "entered_in_error")]

    # HAPI resends the whole batch (its connection "dropped" before the ACKs): same ACKs,
    # nothing happens twice
    again = await send_with_hapi(hapi_sender, feed.port, messages, tmp_path)
    assert {n: f[:2] for n, f in again.items()} == {n: f[:2] for n, f in read.items()}
    assert len(await feed.floor()) == len(events)
