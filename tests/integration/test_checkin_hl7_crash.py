"""The listener killed with -9 between a message and its ACK: the interface engine hears
nothing, resends the same message to the restarted check-in, and gets AA, with one
effect on the floor.

Check-in runs as a real process (``clinicflow run checkin``) whose Redis is reached
through a proxy in this test. The proxy holds the first command that shows how far the
message got (the arrival's mapping and ACK stored after its publish, the visit saved before it,
the booking stored after it) and never forwards it: the process is then stopped in that
very place and killed there (SIGKILL). No sleep decides when; nothing in the service
knows it is tested."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from redis.asyncio import Redis

from shared.admin import ensure_topics
from shared.topics import FLOOR, topic_name
from tests.helpers import ServiceProcess, free_port, read_topic
from tests.integration.test_checkin_hl7_support import FEEDS, Ehr, MllpClient
from tests.integration.test_checkin_support import FRONT_DESK, midday_zone

CHUNK = 64 * 1024


class HoldingProxy:
    """A loopback TCP proxy to Redis that, once ``arm``ed, holds the first command from
    the service containing every one of ``triggers`` (and everything after it on that
    connection) and sets ``held``."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.triggers: tuple[bytes, ...] = ()
        self.held = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    def arm(self, *triggers: bytes) -> None:
        self.triggers = triggers

    async def __aenter__(self) -> HoldingProxy:
        self._server = await asyncio.start_server(self._connect, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _connect(self, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        for task in (self._pump(reader, up_writer, watch=True),
                     self._pump(up_reader, writer, watch=False)):
            running = asyncio.create_task(task)
            self._tasks.add(running)
            running.add_done_callback(self._tasks.discard)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, *,
                    watch: bool) -> None:
        try:
            while data := await source.read(CHUNK):
                if watch and self.triggers and all(t in data for t in self.triggers):
                    self.triggers = ()
                    self.held.set()
                    return  # held: neither this command nor anything after it goes on
                sink.write(data)
                await sink.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            sink.close()


@pytest.fixture
async def proxy(redis_url: str) -> AsyncIterator[HoldingProxy]:
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    async with HoldingProxy(port) as running:
        yield running


def checkin_env(kafka_bootstrap: str, redis_url: str, prefix: str, hl7_port: int) -> dict[str, str]:
    return {"CLINICFLOW_KAFKA_BOOTSTRAP": kafka_bootstrap, "CLINICFLOW_REDIS_URL": redis_url,
            "CLINICFLOW_TOPIC_PREFIX": prefix, "CLINICFLOW_REDIS_PREFIX": prefix.rstrip("."),
            "CLINICFLOW_CHECKIN_GROUP_ID": f"{prefix}checkin",
            "CLINICFLOW_CHECKIN_TIMEZONE": midday_zone(),
            "CLINICFLOW_CHECKIN_NO_SHOW_CHECK_SECONDS": "0",
            "CLINICFLOW_CHECKIN_HL7_PORT": str(hl7_port),
            "CLINICFLOW_CHECKIN_FEEDS": orjson.dumps(FEEDS).decode(),
            "CLINICFLOW_LOG_FORMAT": "json"}


async def floor_of(kafka_bootstrap: str, prefix: str, appointment: str) -> list[dict[str, Any]]:
    records = await read_topic(kafka_bootstrap, topic_name(FLOOR, prefix), timeout=10.0)
    events = [orjson.loads(r.value) for r in records]
    return [e for e in events if e["data"].get("appointment_id") == appointment]


async def killed_between_receive_and_ack(
    kafka_bootstrap: str, redis_url: str, proxy: HoldingProxy, tmp_path: Path,
    message: bytes, triggers: tuple[bytes, ...], before: list[bytes], appointment: str,
    lapsed: bool = False,
) -> tuple[bytes, str, dict[str, Any]]:
    """Send ``before`` (answered AA), then ``message`` to a check-in whose Redis proxy
    holds the first command with ``triggers``; kill check-in -9 there; start it again
    and resend ``message`` as the engine does (``lapsed``: so late that the dead try's
    claim on the EHR visit has expired). Returns (the resend's ACK, the topic prefix,
    ``appointment`` on the front desk's schedule after the restart)."""
    prefix, hl7_port = f"t{uuid.uuid4().hex[:10]}.", free_port()
    await ensure_topics(kafka_bootstrap, prefix)
    proxied = checkin_env(kafka_bootstrap, redis_url.replace(
        f":{proxy.target_port}/", f":{proxy.port}/"), prefix, hl7_port)
    first = ServiceProcess("checkin", proxied, tmp_path / "checkin-1.log")
    first.start()
    try:
        await first.wait_ready(60)
        engine = await MllpClient.connect(hl7_port)
        for earlier in before:
            assert (await engine.send(earlier)).code == "AA"
        proxy.arm(*triggers)
        engine.writer.write(b"\x0b" + message + b"\x1c\x0d")
        await engine.writer.drain()
        await asyncio.wait_for(proxy.held.wait(), 30)
        first.kill()  # -9, right where the message was held
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError, TimeoutError)):
            await engine.read(timeout=5)  # the engine never hears an ACK
        await engine.close()
    finally:
        first.stop()
    if lapsed:  # what its expiry does, without waiting for it
        redis = Redis.from_url(redis_url)
        async for key in redis.scan_iter(match=f"{prefix.rstrip('.')}:checkin:feed:visit:*"):
            await redis.delete(key)
        await redis.aclose()

    again = ServiceProcess("checkin", checkin_env(kafka_bootstrap, redis_url, prefix,
                                                  hl7_port), tmp_path / "checkin-2.log")
    again.start()
    try:
        await again.wait_ready(60)
        engine = await MllpClient.connect(hl7_port)
        try:
            resent = await engine.send(message, timeout=30)
            assert (await engine.send(message)).raw == resent.raw  # and once more: the same
        finally:
            await engine.close()
        async with httpx.AsyncClient(base_url=again.url, timeout=10) as client:
            answer = await client.get("/clinics/north/schedule", headers=FRONT_DESK)
        row = next(r for r in answer.json()["appointments"]
                   if r["appointment_id"] == appointment)
        return resent.raw, prefix, row
    finally:
        again.stop()


@pytest.mark.parametrize(("when", "hold", "lapsed"), [
    # the transaction storing the EHR visit's mapping and the ACK follows the publish
    ("after its arrival is on Kafka", "MULTI", False),
    ("after its arrival is on Kafka, resent late", "MULTI", True),
    # the visit is saved just before, with its ticket and the appointment's claim
    ("before its arrival is published", "EVALSHA", False),
])
async def test_a_registration_killed_before_its_ack_is_resent_and_checks_the_patient_in_once(
    kafka_bootstrap: str, redis_url: str, proxy: HoldingProxy, tmp_path: Path,
    when: str, hold: str, lapsed: bool,
) -> None:
    ehr, now = Ehr(), datetime.now(UTC).replace(microsecond=0)
    appointment, patient = f"K{uuid.uuid4().hex[:8]}", str(uuid.uuid4().int)[:9]
    booking = ehr.siu("S12", appointment, now + timedelta(minutes=10), sent_at=now,
                      mrn=patient)
    registration = ehr.adt("A04", sent_at=now, visit=f"V{appointment}", mrn=patient,
                           control=f"CRASH-{appointment}")
    triggers = ((b"MULTI", b":feed:visit:", b":feed:ack:") if hold == "MULTI"
                else (b"EVALSHA", b":seq:", b":visit:", b":arrived:"))
    ack, prefix, row = await killed_between_receive_and_ack(
        kafka_bootstrap, redis_url, proxy, tmp_path, registration, triggers, [booking],
        appointment, lapsed)

    assert b"MSA|AA|CRASH-" + appointment.encode() in ack, (when, ack)
    assert b"checked in on appointment " + appointment.encode() in ack
    arrived = [e for e in await floor_of(kafka_bootstrap, prefix, appointment)
               if e["event_type"] == "patient.arrived"]
    assert len(arrived) == 1, (when, arrived)  # exactly one arrival, whenever it died
    assert row["status"] == "arrived" and row["visit_id"] == arrived[0]["data"]["visit_id"]
    assert arrived[0]["data"]["ticket_code"].encode() in ack


async def test_a_booking_killed_after_its_publish_is_resent_and_booked_once(
    kafka_bootstrap: str, redis_url: str, proxy: HoldingProxy, tmp_path: Path,
) -> None:
    """The booking's event is on Kafka but not stored: the resend publishes that same
    event again (the same event id: one fact, which consumers apply once) and stores it."""
    ehr, now = Ehr(), datetime.now(UTC).replace(microsecond=0)
    appointment = f"B{uuid.uuid4().hex[:8]}"
    booking = ehr.siu("S12", appointment, now + timedelta(minutes=30), sent_at=now,
                      control=f"CRASH-{appointment}")
    ack, prefix, row = await killed_between_receive_and_ack(
        kafka_bootstrap, redis_url, proxy, tmp_path, booking,
        (b"MULTI", b":appt:", appointment.encode()), [], appointment)

    assert b"MSA|AA|CRASH-" + appointment.encode() in ack
    scheduled = await floor_of(kafka_bootstrap, prefix, appointment)
    assert {e["event_type"] for e in scheduled} == {"appointment.scheduled"}
    assert len({e["event_id"] for e in scheduled}) == 1  # one fact, maybe delivered twice
    assert row["status"] == "booked"
