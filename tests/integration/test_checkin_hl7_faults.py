"""The HL7 listener when things go wrong, on the real broker and Redis: a connection cut
mid-message, bytes that are not HL7, a 5 MB message, a hundred engines at once, and
Kafka out of reach (no AA; the engine's resend lands once)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from tests.helpers import free_port
from tests.integration.test_checkin_hl7_support import (
    VT,
    Ehr,
    Feed,
    MllpClient,
    module_prefix,
    running_feed,
)

PREFIX = module_prefix()


@pytest.fixture(scope="module")
async def feed(kafka_bootstrap: str, redis_url: str) -> AsyncIterator[Feed]:
    async with running_feed(kafka_bootstrap, redis_url, PREFIX) as service:
        yield service


def appointment_id() -> str:
    return f"F{uuid.uuid4().hex[:10]}"


async def booked(feed: Feed, appointment: str) -> list[dict[str, object]]:
    return [e for e in await feed.floor() if e["data"].get("appointment_id") == appointment]


async def test_a_message_cut_by_a_dropped_connection_changes_nothing_until_it_is_resent(
    feed: Feed,
) -> None:
    ehr, now = Ehr(), datetime.now(UTC)
    appointment = appointment_id()
    message = ehr.siu("S12", appointment, now + timedelta(hours=1), sent_at=now)
    _reader, writer = await asyncio.open_connection("127.0.0.1", feed.port)
    writer.write(VT + message[: len(message) // 2])
    await writer.drain()
    writer.close()
    await writer.wait_closed()

    resent = await feed.send(message)
    assert resent.code == "AA", resent.raw
    assert len(await booked(feed, appointment)) == 1


async def test_garbage_on_the_line_is_skipped_and_a_framed_non_message_is_rejected(
    feed: Feed,
) -> None:
    ehr, now = Ehr(), datetime.now(UTC)
    appointment = appointment_id()
    client = await MllpClient.connect(feed.port)
    try:
        client.writer.write(b"\x00\xff GET / HTTP/1.1\r\n\r\n" + bytes(range(1, 11)))
        framed_garbage = await client.send(b"\x00\x01binary\xfe\xff not hl7")
        after = await client.send(ehr.siu("S12", appointment, now + timedelta(hours=1),
                                          sent_at=now))
    finally:
        await client.close()
    assert framed_garbage.code == "AR"
    assert framed_garbage.error is not None and framed_garbage.error[2] == "MSH^1^1^1"
    assert after.code == "AA"
    assert len(await booked(feed, appointment)) == 1


async def test_a_five_megabyte_message_is_refused_unread_and_the_connection_goes_on(
    feed: Feed,
) -> None:
    ehr, now = Ehr(), datetime.now(UTC)
    huge_id, appointment = appointment_id(), appointment_id()
    message = ehr.siu("S12", huge_id, now + timedelta(hours=1), sent_at=now,
                      control="HUGE-" + huge_id)
    huge = message + b"NTE|2||" + b"x" * (5 * 1024 * 1024) + b"\r"
    client = await MllpClient.connect(feed.port)
    try:
        refused = await client.send(huge, timeout=60)
        after = await client.send(ehr.siu("S12", appointment, now + timedelta(hours=1),
                                          sent_at=now))
    finally:
        await client.close()
    assert refused.code == "AR"
    assert refused.control_id == "HUGE-" + huge_id  # named from its header alone
    assert refused.error is not None and "over this listener's limit" in refused.error[8]
    assert after.code == "AA"
    assert await booked(feed, huge_id) == []
    assert len(await booked(feed, appointment)) == 1


async def test_a_hundred_engines_sending_at_once_are_each_answered_aa_and_booked_once(
    feed: Feed,
) -> None:
    ehr, now = Ehr(), datetime.now(UTC)
    appointments = [appointment_id() for _ in range(100)]

    async def engine(appointment: str) -> str:
        client = await MllpClient.connect(feed.port)
        try:
            answer = await client.send(ehr.siu("S12", appointment, now + timedelta(hours=2),
                                               sent_at=now, mrn=str(uuid.uuid4().int)[:9]),
                                       timeout=60)
            return answer.code
        finally:
            await client.close()

    started = time.perf_counter()
    codes = await asyncio.gather(*(engine(a) for a in appointments))
    elapsed = time.perf_counter() - started
    assert codes == ["AA"] * 100
    events = await feed.floor()
    assert sorted(e["data"]["appointment_id"] for e in events
                  if e["data"].get("appointment_id") in set(appointments)) == sorted(appointments)
    print(f"100 connections, 100 bookings answered AA in {elapsed:.2f} s")


async def test_with_kafka_out_of_reach_no_aa_is_sent_and_the_resent_message_lands_once(
    feed: Feed, redis_url: str,
) -> None:
    ehr, now = Ehr(), datetime.now(UTC)
    appointment = appointment_id()
    message = ehr.siu("S12", appointment, now + timedelta(hours=1), sent_at=now,
                      control="KAFKA-DOWN-" + appointment)
    dead_kafka = f"127.0.0.1:{free_port()}"
    async with running_feed(dead_kafka, redis_url, PREFIX, ready=False) as cut_off:
        first = await cut_off.send(message)
        second = await cut_off.send(message)  # the engine retries: still not AA
    for refused in (first, second):
        assert refused.code == "AR", refused.raw
        assert refused.error is not None and refused.error[3].startswith("207^")
        assert "send the message again" in refused.error[8]

    # Kafka is back (the same clinic's checkin, the same Redis): the resend lands once
    landed = await feed.send(message)
    again = await feed.send(message)
    assert landed.code == "AA" and again.raw == landed.raw
    assert len(await booked(feed, appointment)) == 1

