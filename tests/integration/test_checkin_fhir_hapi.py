"""An independent FHIR implementation reads the floor: HAPI FHIR's validator (Java,
ca.uhn.hapi.fhir from Maven Central, with the R4 core profiles, value sets and code
systems of hapi-fhir-validation-resources-r4, so nothing is fetched at run time)
validates what the read API answers: the day's visits as Encounters and its appointments
as Appointments, each searchset Bundle and each resource in it, over visits waiting,
cancelled and left, and appointments booked, arrived, cancelled and no-show.

The validator's jars come from Maven on first use (hapi/fhir-validator-pom.xml, pinned)
into ~/.cache/clinicflow/hapi-fhir-validator; hapi/FhirValidate.java is compiled once per
session. One JVM validates every file: a control resource that breaks R4 must be
reported, so the test can fail."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.integration.hapi import HERE, java_command, maven_jars
from tests.integration.test_checkin_fhir import FHIR, appointment, encounter, put
from tests.integration.test_checkin_hl7_support import Feed, module_prefix, running_feed
from tests.integration.test_checkin_support import NURSE

POM = HERE / "fhir-validator-pom.xml"
VALIDATOR = HERE / "FhirValidate.java"
SENTINEL = "hapi-fhir-validation-8.6.5.jar"


@pytest.fixture(scope="session")
def fhir_validator(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The command that validates JSON files: ``java -cp ... FhirValidate``."""
    return java_command(VALIDATOR, maven_jars(POM, "hapi-fhir-validator", SENTINEL),
                        tmp_path_factory.mktemp("fhir-validator-classes"))


@pytest.fixture(scope="module")
async def feed(kafka_bootstrap: str, redis_url: str) -> AsyncIterator[Feed]:
    async with running_feed(kafka_bootstrap, redis_url, module_prefix()) as service:
        yield service


async def validate(command: list[str], files: list[Path]) -> dict[str, list[list[str]]]:
    """HAPI's messages for each file: [severity, location, message]."""
    process = await asyncio.create_subprocess_exec(
        *command, *map(str, files), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 300)
    found: dict[str, list[list[str]]] = {str(f): [] for f in files}
    for line in out.decode().splitlines():
        name, *fields = line.split("\t")
        if name in found:
            found[name].append(fields)
    assert process.returncode in (0, 1), err.decode()[-3000:]
    return found


def errors(messages: list[list[str]]) -> list[list[str]]:
    return [m for m in messages if m[0] in ("error", "fatal")]


async def a_busy_morning(feed: Feed) -> None:
    """Appointments booked, arrived, cancelled and missed; visits waiting, cancelled in
    error and left without being seen; a walk-in."""
    client, now = feed.checkin.client, datetime.now(UTC).replace(microsecond=0)
    tag = uuid.uuid4().hex[:6]
    booked, arrived, cancelled, missed, left = (f"hv-{tag}-{n}" for n in range(5))
    entries = [(appointment(a, f"p-{a}", now + timedelta(minutes=m)), "Appointment", a)
               for a, m in ((booked, 50), (arrived, 5), (cancelled, 20), (missed, -90),
                            (left, -10))]
    entries += [(encounter(f"enc-{a}", "arrived", f"p-{a}", a), "Encounter", f"enc-{a}")
                for a in (arrived, left)]
    entries.append((encounter(f"walk-{tag}", "arrived", f"p-walk-{tag}"), "Encounter",
                    f"walk-{tag}"))
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": r, "request": {"method": "PUT", "url": f"{kind}/{rid}"}}
        for r, kind, rid in entries]}
    answer = await client.post("/clinics/north/fhir", content=orjson.dumps(bundle),
                               headers=FHIR)
    assert answer.status_code == 200, answer.text
    later = now + timedelta(minutes=1)  # after the transaction's (its own time: now)
    for path, body in (
            (f"Appointment/{cancelled}", appointment(cancelled, f"p-{cancelled}",
                                                     now + timedelta(minutes=20),
                                                     "cancelled", later)),
            (f"Appointment/{missed}", appointment(missed, f"p-{missed}",
                                                  now - timedelta(minutes=90), "noshow",
                                                  later)),
            (f"Encounter/enc-{left}", encounter(f"enc-{left}", "finished", f"p-{left}")),
            (f"Encounter/walk-{tag}", encounter(f"walk-{tag}", "entered-in-error",
                                                f"p-walk-{tag}"))):
        changed = await put(client, f"/clinics/north/fhir/{path}", body)
        assert changed.status_code == 200, changed.text


async def test_hapi_fhirs_validator_finds_no_error_in_the_days_encounters_and_appointments(
    feed: Feed, fhir_validator: list[str], tmp_path: Path,
) -> None:
    await a_busy_morning(feed)
    files: list[Path] = []
    statuses: dict[str, set[str]] = {}
    for kind in ("Encounter", "Appointment"):
        answer = await feed.checkin.client.get(f"/clinics/north/fhir/{kind}", headers=NURSE)
        assert answer.status_code == 200, answer.text
        bundle: dict[str, Any] = answer.json()
        files.append(tmp_path / f"{kind}-searchset.json")
        files[-1].write_bytes(orjson.dumps(bundle))
        for n, entry in enumerate(bundle["entry"]):
            statuses.setdefault(kind, set()).add(entry["resource"]["status"])
            files.append(tmp_path / f"{kind}-{n}.json")
            files[-1].write_bytes(orjson.dumps(entry["resource"]))
    assert statuses["Encounter"] >= {"arrived", "cancelled"}
    assert statuses["Appointment"] >= {"booked", "arrived", "cancelled", "noshow"}
    control = tmp_path / "control-not-r4.json"  # an Appointment needs a status and actors
    control.write_bytes(orjson.dumps({"resourceType": "Appointment", "id": "x",
                                      "status": "waiting", "participant": []}))

    found = await validate(fhir_validator, [*files, control])

    assert errors(found[str(control)]), found[str(control)]  # HAPI does reject bad R4
    wrong = {Path(name).name: errors(messages) for name, messages in found.items()
             if name != str(control) and errors(messages)}
    assert wrong == {}, orjson.dumps(wrong, option=orjson.OPT_INDENT_2).decode()
