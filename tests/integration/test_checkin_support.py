"""Shared pieces of the checkin integration tests: the service running for real (uvicorn
in this loop) on the session's Kafka and Redis with this test's own topics and keys,
schedule files built around "now", and reading the floor topic back.

The service runs no no-show sweep of its own here: a test that wants one calls
``Checkin.sweep_no_shows(now)`` at the time it chooses, and may give the service a
``FakeClock`` for the time of its commands and lookups.

Collected by pytest but holds no tests; the checkin test modules import from here."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import orjson

from services.checkin.app import create_app
from services.checkin.desk import NoShowSweepResult
from shared import events as ev
from shared.admin import ensure_topics
from shared.clock import Clock
from shared.settings import CheckinSettings
from shared.topics import FLOOR, TopicSpec, topic_name
from tests.helpers import auth, producer, read_topic, serving

FRONT_DESK = auth("dev-front-desk")
KIOSK = auth("dev-kiosk")
MANAGER = auth("dev-manager")
NURSE = auth("dev-nurse")
CSV = {"Content-Type": "text/csv"}
FHIR = {"Content-Type": "application/fhir+json"}
HEADER = ("appointment_id,patient_ref,provider_id,visit_type,scheduled_at,duration_minutes,"
          "dob,initials\n")


@dataclass(slots=True)
class Checkin:
    client: httpx.AsyncClient
    kafka_bootstrap: str
    floor_topic: str
    app: Any

    async def events(self, expect: int | None = None, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Every event on the floor topic, decoded, in order."""
        records = await read_topic(self.kafka_bootstrap, self.floor_topic, expect=expect,
                                   timeout=timeout if expect is not None else 2.0)
        return [orjson.loads(r.value) for r in records]

    async def raw_floor(self) -> bytes:
        records = await read_topic(self.kafka_bootstrap, self.floor_topic, timeout=2.0)
        return b"\n".join(r.value for r in records)

    async def import_csv(self, text: str, **headers: str) -> httpx.Response:
        return await self.client.post("/clinics/north/schedule/csv", content=text.encode(),
                                      headers={**FRONT_DESK, **CSV, **headers})

    async def kiosk_codes(self, clinic: str = "north",
                          day: str | None = None) -> dict[str, str]:
        """The kiosk code of each appointment of the clinic's day (default: its today), as
        the front desk reads them from the schedule to send with the confirmations."""
        query = f"?day={day}" if day else ""
        answer = await self.client.get(f"/clinics/{clinic}/schedule{query}",
                                       headers=FRONT_DESK)
        assert answer.status_code == 200, answer.text
        return {row["appointment_id"]: row["kiosk_code"]
                for row in answer.json()["appointments"]}

    async def sweep_no_shows(self, now: datetime) -> NoShowSweepResult:
        """One run of the service's no-show sweep, at ``now``."""
        result: NoShowSweepResult = await self.app.state.desk.sweep_no_shows(now)
        return result


@contextlib.asynccontextmanager
async def running_checkin(kafka_bootstrap: str, redis_url: str, topic_prefix: str,
                          ready: bool = True, clock: Clock | None = None,
                          **overrides: Any) -> AsyncIterator[Checkin]:
    """Checkin serving on a free port; ``ready=False``: do not wait for Kafka (a test of
    an unreachable broker); ``clock``: the time of its commands and lookups (default:
    the system's)."""
    if ready:
        await ensure_topics(kafka_bootstrap, topic_prefix)
    settings = CheckinSettings(**{
        "env": "test",
        "checkin_timezone": midday_zone(),
        "kafka_bootstrap": kafka_bootstrap,
        "redis_url": redis_url,
        "topic_prefix": topic_prefix,
        "redis_prefix": topic_prefix.rstrip("."),
        "checkin_group_id": f"{topic_prefix}checkin",
        "checkin_no_show_check_seconds": 0,  # no sweep of its own: tests call it
        **overrides,
    })
    app = create_app(settings, clock=clock)
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        if ready:
            await _ready(client)
        yield Checkin(client, kafka_bootstrap, topic_name(FLOOR, topic_prefix), app)


async def _ready(client: httpx.AsyncClient) -> None:
    for _ in range(200):
        if (await client.get("/readyz")).status_code == 200:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("checkin did not become ready")


async def publish(kafka_bootstrap: str, topic: TopicSpec, topic_prefix: str,
                  events: list[ev.Event]) -> None:
    """Events on this test's ``topic``, keyed by clinic, as flow publishes them."""
    async with producer(kafka_bootstrap) as client:
        for event in events:
            await client.send_and_wait(topic_name(topic, topic_prefix), ev.encode(event),
                                       key=event.clinic_id.encode())


def a_key() -> dict[str, str]:
    """A fresh ``Idempotency-Key`` header: one check-in attempt."""
    return {"Idempotency-Key": uuid.uuid4().hex}


def midday_zone() -> str:
    """An IANA zone where it is about noon now: "today" of the clinic then holds every
    time a test uses (now - 3 h ... now + 3 h), whenever the tests run."""
    offset = 12 - datetime.now(UTC).hour  # hours east of UTC, -11 ... +12
    return "Etc/GMT" if offset == 0 else f"Etc/GMT{-offset:+d}"


def at(minutes_from_now: float, now: datetime | None = None) -> str:
    """An ISO time with an offset, ``minutes_from_now`` from ``now`` (default: the
    system's now; negative: past)."""
    moment = (now or datetime.now(UTC)) + timedelta(minutes=minutes_from_now)
    return moment.replace(microsecond=0).astimezone(ZoneInfo("America/New_York")).isoformat()


def csv_rows(*rows: tuple[str, ...]) -> str:
    return HEADER + "".join(",".join(row) + "\n" for row in rows)


def fhir_bundle(*appointments: dict[str, Any], patients: tuple[dict[str, Any], ...] = ()
                ) -> str:
    entries = [{"resource": p} for p in patients] + [{"resource": a} for a in appointments]
    return orjson.dumps({"resourceType": "Bundle", "type": "collection", "entry": entries},
                        option=orjson.OPT_INDENT_2).decode()


def fhir_appointment(appointment_id: str, patient: str, provider: str, start: str,
                     status: str = "booked", visit_type: str = "follow_up") -> dict[str, Any]:
    return {"resourceType": "Appointment", "id": appointment_id, "status": status,
            "appointmentType": {"coding": [{"code": visit_type}]},
            "start": start, "minutesDuration": 15,
            "participant": [{"actor": {"reference": f"Patient/{patient}"}},
                            {"actor": {"reference": f"Practitioner/{provider}"}}]}
