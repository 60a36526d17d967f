"""An independent HL7 v2 implementation talks to the feed: HAPI HL7v2 (Java, from Maven
Central) parses the clinic's SIU and ADT messages with its own v2.5.1 structures, sends
them over MLLP with its own client, and parses the ACKs checkin answers.

HAPI's jars are fetched by Maven on first use (deploy/local/hapi-hl7v2-pom.xml, pinned)
into ~/.cache/clinicflow/hapi-hl7v2, as Kafka's are; the sender (hapi/HapiSender.java)
is compiled once per session into a temporary directory."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.integration.test_checkin_hl7_support import Ehr, Feed, module_prefix, running_feed
from tools.stack import _file_lock, cache_dir, require_java, require_maven

REPO = Path(__file__).resolve().parents[2]
POM = REPO / "deploy" / "local" / "hapi-hl7v2-pom.xml"
SENDER = Path(__file__).resolve().parent / "hapi" / "HapiSender.java"
HAPI_JAR = "hapi-base-2.6.0.jar"


def ensure_hapi_jars() -> Path:
    """HAPI HL7v2's jars: Maven copies them from Maven Central the first time, later
    calls return at once (a marker lists a complete copy)."""
    libs = cache_dir() / "hapi-hl7v2"
    marker = libs / "complete"
    if marker.is_file() and all((libs / n).is_file() for n in marker.read_text().split()):
        return libs
    require_java()
    mvn = require_maven()
    with _file_lock(cache_dir() / ".hapi-lock"):
        if marker.is_file():
            return libs
        staging = cache_dir() / f"hapi-hl7v2.{os.getpid()}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        result = subprocess.run(
            [mvn, "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
             f"-DoutputDirectory={staging}"], capture_output=True, text=True, check=False)
        jars = sorted(p.name for p in staging.glob("*.jar"))
        if result.returncode != 0 or HAPI_JAR not in jars:
            shutil.rmtree(staging, ignore_errors=True)
            raise AssertionError(f"Maven could not fetch HAPI HL7v2 (exit {result.returncode})"
                                 f":\n{(result.stdout + result.stderr)[-2000:]}")
        shutil.rmtree(libs, ignore_errors=True)
        staging.rename(libs)
        marker.write_text("\n".join(jars) + "\n")
    return libs


@pytest.fixture(scope="session")
def hapi_sender(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The command that runs the compiled sender: ``java -cp ... HapiSender``."""
    libs = ensure_hapi_jars()
    classpath = os.pathsep.join(str(p) for p in sorted(libs.glob("*.jar")))
    classes = tmp_path_factory.mktemp("hapi-classes")
    javac = shutil.which("javac")
    assert javac is not None, "javac (a JDK 17) is needed: apt-get install openjdk-17-jdk-headless"
    compiled = subprocess.run([javac, "-d", str(classes), "-cp", classpath, str(SENDER)],
                              capture_output=True, text=True, check=False)
    assert compiled.returncode == 0, compiled.stderr
    return ["java", "-cp", os.pathsep.join([str(classes), classpath]), "HapiSender"]


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
