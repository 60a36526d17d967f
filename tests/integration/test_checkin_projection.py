"""What a waiting patient is told comes from the floor and flow's estimates on Kafka:
the status lookup gives the place in line and the range from flow's latest estimate, and
stops once the patient is roomed. Credentials scoped to one clinic stay in it, and a
busy kiosk is limited even when every code it asks about is real.

Checkin's consumer is the shared runner on a real Redis: what it cannot apply goes to
the dead-letter topic with the reason, what it applied before is skipped, and an empty
Redis is rebuilt from the records."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY

from services.checkin.app import create_app
from shared import events as ev
from shared.settings import CheckinSettings
from shared.topics import DEAD_LETTER, ESTIMATES, FLOOR, topic_name
from tests.fakes import FakeClock, KafkaRecord, record_of
from tests.helpers import auth, eventually, producer, read_topic
from tests.integration.test_checkin_support import (
    FRONT_DESK,
    KIOSK,
    a_key,
    publish,
    running_checkin,
)
from tools.stack import LocalStack


def batch_failures() -> float:
    """Batches checkin's consumer could not apply so far (each is read again)."""
    return REGISTRY.get_sample_value("clinicflow_batch_failures_total",
                                     {"service": "checkin", "consumer": "checkin"}) or 0.0


async def publish_estimates(kafka_bootstrap: str, topic_prefix: str,
                            events: list[ev.Event]) -> None:
    await publish(kafka_bootstrap, ESTIMATES, topic_prefix, events)


async def publish_floor(kafka_bootstrap: str, topic_prefix: str,
                        events: list[ev.Event]) -> None:
    await publish(kafka_bootstrap, FLOOR, topic_prefix, events)


async def test_the_lookup_follows_flows_estimates_and_stops_when_the_patient_is_roomed(
    kafka_bootstrap: str, redis_url: str, topic_prefix: str,
) -> None:
    clock = FakeClock(datetime.now(UTC).replace(microsecond=0))
    async with running_checkin(kafka_bootstrap, redis_url, topic_prefix,
                               clock=clock) as checkin:
        arrived = await checkin.client.post("/clinics/north/arrivals",
                                            json={"provider_id": "dr-lee",
                                                  "visit_type": "follow_up"},
                                            headers={**FRONT_DESK, **a_key()})
        visit, code = arrived.json()["visit_id"], arrived.json()["ticket_code"]
        path = f"/clinics/north/tickets/{code}/wait"
        first = (await checkin.client.get(path, headers=KIOSK)).json()
        assert first == {"ticket_code": code, "waiting": True, "position": None,
                         "low_minutes": None, "high_minutes": None}

        await publish_estimates(kafka_bootstrap, topic_prefix, [ev.make_event(
            ev.WaitEstimated(visit_id=visit, ticket_code=code, provider_id="dr-lee",
                             position=2, wait_minutes=20.0, low=15.0, high=25.0),
            clinic_id="north", source="flow", occurred_at=clock.now(), correlation_id=visit)])

        async def estimated() -> Any:
            answer = (await checkin.client.get(path, headers=FRONT_DESK)).json()
            return answer if answer["position"] is not None else None

        answer = await eventually(estimated, timeout=10)
        # second in the clinic's queue, first in its provider's (nobody else waits for
        # dr-lee): the line the patient is in
        assert answer == {"ticket_code": code, "waiting": True, "position": 1,
                          "low_minutes": 15, "high_minutes": 25}
        # nothing but place and range: no provider, no visit type, no patient
        assert "dr-lee" not in orjson.dumps(answer).decode()
        # four minutes on, the same estimate is told four minutes shorter
        clock.advance(minutes=4)
        aged = (await checkin.client.get(path, headers=FRONT_DESK)).json()
        assert (aged["low_minutes"], aged["high_minutes"]) == (11, 21)

        await publish_floor(kafka_bootstrap, topic_prefix, [ev.make_event(
            ev.PatientRoomed(visit_id=visit, room_id="4"), clinic_id="north", source="flow",
            occurred_at=clock.now(), correlation_id=visit)])

        async def called() -> Any:
            answer = (await checkin.client.get(path, headers=FRONT_DESK)).json()
            return answer if answer["waiting"] is False else None

        answer = await eventually(called, timeout=10)
        assert answer == {"ticket_code": code, "waiting": False, "position": None,
                          "low_minutes": None, "high_minutes": None}
        # a roomed patient can no longer be cancelled at the desk
        cancel = await checkin.client.post(f"/clinics/north/visits/{visit}/cancel",
                                           json={"reason": "cancelled"}, headers=FRONT_DESK)
        assert cancel.status_code == 409


async def test_credentials_scoped_to_one_clinic_and_the_lookup_rate_limit(
    kafka_bootstrap: str, redis_url: str, topic_prefix: str,
) -> None:
    credentials = [
        {"name": "north desk", "role": "front_desk", "clinics": ["north"],
         "token": "north-desk-token-0123456789"},
        {"name": "south kiosk", "role": "kiosk", "clinics": ["south"],
         "token": "south-kiosk-token-0123456789"},
    ]
    # the clinic's clock stands still: the four lookups fall in one rate-limit minute
    clock = FakeClock(datetime.now(UTC).replace(microsecond=0))
    async with running_checkin(kafka_bootstrap, redis_url, topic_prefix, clock=clock,
                               credentials=orjson.dumps(credentials).decode(),
                               checkin_lookup_rate_per_minute=3) as checkin:
        desk, kiosk = auth("north-desk-token-0123456789"), auth("south-kiosk-token-0123456789")
        arrived = await checkin.client.post("/clinics/north/arrivals",
                                            json={"visit_type": "follow_up"},
                                            headers={**desk, **a_key()})
        assert arrived.status_code == 201
        code = arrived.json()["ticket_code"]
        elsewhere = await checkin.client.post("/clinics/south/arrivals",
                                              json={"visit_type": "follow_up"},
                                              headers={**desk, **a_key()})
        assert elsewhere.status_code == 403 and "south" in elsewhere.json()["detail"]
        other = await checkin.client.get(f"/clinics/north/tickets/{code}/wait", headers=kiosk)
        assert other.status_code == 403
        kiosk_north = await checkin.client.post("/clinics/north/kiosk/check-ins",
                                                json={"appointment_code": "apt-1"},
                                                headers=kiosk)
        assert kiosk_north.status_code == 403

        statuses = [(await checkin.client.get(f"/clinics/north/tickets/{code}/wait",
                                              headers=desk)).status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429]


@pytest.mark.reliability(
    "Redis killed with -9 under checkin while flow's estimates stream in, then started again",
    "the estimates that came while Redis was away are applied once it is back",
)
async def test_estimates_arriving_while_redis_is_down_are_applied_once_it_is_back(
    kafka_bootstrap: str, redis_url: str, topic_prefix: str, own_stack: LocalStack,
) -> None:
    async with running_checkin(kafka_bootstrap, redis_url, topic_prefix) as checkin:
        arrived = await checkin.client.post("/clinics/north/arrivals",
                                            json={"provider_id": "dr-lee",
                                                  "visit_type": "follow_up"},
                                            headers={**FRONT_DESK, **a_key()})
        visit, code = arrived.json()["visit_id"], arrived.json()["ticket_code"]
        runner = checkin.app.state.runner
        # the arrival read back and applied first: what fails below is the estimate
        await eventually(lambda: runner.applied_total >= 1, timeout=10)
        failed_before = batch_failures()
        # Redis writes its append-only file before it answers; anything a kill could
        # still lose would come back from the topics
        await asyncio.to_thread(own_stack.stop_redis, True)
        await publish_estimates(kafka_bootstrap, topic_prefix, [ev.make_event(
            ev.WaitEstimated(visit_id=visit, ticket_code=code, provider_id="dr-lee",
                             position=3, wait_minutes=30.0, low=25.0, high=35.0),
            clinic_id="north", source="flow", occurred_at=datetime.now(UTC),
            correlation_id=visit)])
        # the estimate was read while Redis was away: its batch failed, to be read again
        await eventually(lambda: batch_failures() > failed_before, timeout=20)
        await asyncio.to_thread(own_stack.start_redis)

        async def estimated() -> Any:
            response = await checkin.client.get(f"/clinics/north/tickets/{code}/wait",
                                                headers=FRONT_DESK)
            answer = response.json() if response.status_code == 200 else None
            return answer if answer and answer["position"] is not None else None

        answer = await eventually(estimated, timeout=20)
        assert answer["high_minutes"] == 35  # the estimate applied (its place: 1st for dr-lee)
        assert answer["position"] == 1


@pytest.mark.reliability(
    "a cancel sent the moment the patient is checked out, or the arrival undone, on the "
    "floor (before checkin has read it)",
    "409 naming the visit; never a 2xx for a cancel flow would dead-letter",
)
async def test_a_cancel_just_after_the_floor_moved_on_is_refused_not_dead_lettered_later(
    kafka_bootstrap: str, redis_url: str, topic_prefix: str,
) -> None:
    async with running_checkin(kafka_bootstrap, redis_url, topic_prefix) as checkin:
        seen, mistaken = [
            (await checkin.client.post("/clinics/north/arrivals",
                                       json={"visit_type": "follow_up"},
                                       headers={**FRONT_DESK, **a_key()})).json()
            for _ in range(2)]
        now = datetime.now(UTC)
        # billing checks the first patient out; flow undoes the second arrival; the desk
        # cancels both at once, without waiting for checkin to read any of it
        await publish_floor(kafka_bootstrap, topic_prefix, [
            ev.make_event(ev.PatientCheckedOut(visit_id=seen["visit_id"]), clinic_id="north",
                          source="billing", occurred_at=now, correlation_id=seen["visit_id"]),
            ev.make_event(ev.ActionUndone(undone_event_id=mistaken["event_id"]),
                          clinic_id="north", source="flow", occurred_at=now)])
        for visit, state in ((seen["visit_id"], "checked out"),
                             (mistaken["visit_id"], "undone")):
            cancel = await checkin.client.post(f"/clinics/north/visits/{visit}/cancel",
                                               json={"reason": "left_without_being_seen"},
                                               headers=FRONT_DESK)
            assert cancel.status_code == 409, cancel.text
            assert visit in cancel.json()["detail"] and state in cancel.json()["detail"]
        events = await checkin.events(expect=4)
        assert "arrival.cancelled" not in [e["event_type"] for e in events]
        # the undone arrival's ticket no longer waits
        gone = await checkin.client.get(
            f"/clinics/north/tickets/{mistaken['ticket_code']}/wait", headers=FRONT_DESK)
        assert gone.json()["waiting"] is False


# ------------------------------------------------------------------ the consumer


def arrival(visit: str, ticket: str, at: datetime, appointment: str | None = None
            ) -> ev.Event:
    return ev.make_event(ev.PatientArrived(visit_id=visit, ticket_code=ticket,
                                           visit_type="follow_up", appointment_id=appointment),
                         clinic_id="north", source="checkin", occurred_at=at,
                         correlation_id=visit)


def estimate(visit: str, ticket: str, at: datetime) -> ev.Event:
    return ev.make_event(ev.WaitEstimated(visit_id=visit, ticket_code=ticket,
                                          provider_id="dr-lee", position=1, wait_minutes=10.0,
                                          low=5.0, high=15.0),
                         clinic_id="north", source="flow", occurred_at=at, correlation_id=visit)


@pytest.fixture
async def unstarted_checkin(redis_url: str, topic_prefix: str) -> AsyncIterator[FastAPI]:
    """Checkin built on the real Redis but not started: the test hands batches to its
    consumer (``app.state.runner.handle``) itself, as Kafka would."""
    app = create_app(CheckinSettings(env="test", redis_url=redis_url,
                                     topic_prefix=topic_prefix,
                                     redis_prefix=topic_prefix.rstrip("."),
                                     checkin_no_show_check_seconds=0))
    try:
        yield app
    finally:
        await app.state.runtime.redis.aclose()


async def test_the_consumer_dead_letters_what_it_cannot_apply_and_skips_what_it_applied(
    unstarted_checkin: FastAPI, topic_prefix: str,
) -> None:
    app = unstarted_checkin
    floor, estimates = topic_name(FLOOR, topic_prefix), topic_name(ESTIMATES, topic_prefix)
    now = datetime.now(UTC)
    good = record_of(arrival("v-1", "A-1", now), floor, 0)
    batch = [
        good,
        KafkaRecord(floor, 0, 1, b"north", None),  # a tombstone
        KafkaRecord(floor, 0, 2, b"south", good.value),  # keyed by another clinic
        record_of(estimate("v-1", "A-1", now), floor, 3),  # an estimate on the floor topic
        record_of(estimate("v-1", "A-1", now + timedelta(minutes=1)), estimates, 0),
    ]
    applied = await app.state.runner.handle(batch)
    assert applied is not None
    assert (applied.applied, applied.already_applied) == (2, 0)
    assert sorted(letter.record.offset for letter in applied.dead_letters) == [1, 2, 3]
    outbox = app.state.relay.outbox
    queued = [orjson.loads(orjson.loads(entry)["value"])
              for entry in await outbox.redis.lrange(outbox.key, 0, -1)]
    assert [(q["source_topic"], q["offset"], q["consumer"]) for q in queued] == [
        (floor, 1, "checkin"), (floor, 2, "checkin"), (floor, 3, "checkin")]
    assert "tombstone" in queued[0]["reason"]
    assert "is not the event's clinic_id" in queued[1]["reason"]
    assert "wait.estimated does not belong on" in queued[2]["reason"]
    visit = await app.state.store.visit("north", "v-1")
    assert visit is not None and visit.position == 1

    # delivered again (a retried batch, a rebalance): nothing applied or dead-lettered twice
    again = await app.state.runner.handle(batch)
    assert again is not None
    assert (again.applied, again.already_applied, again.dead_letters) == (0, 5, [])
    assert await outbox.length() == 3


async def test_an_empty_redis_is_rebuilt_from_the_records_and_no_ticket_code_is_reused(
    unstarted_checkin: FastAPI, redis_url: str, topic_prefix: str,
) -> None:
    app = unstarted_checkin
    floor = topic_name(FLOOR, topic_prefix)
    # noon of the clinic's day (UTC here) today: what Redis keeps of it expires days later
    now = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    today = now.date()
    missed_at = now - timedelta(minutes=40)
    records = [
        record_of(arrival("v-1", "A-1", now - timedelta(minutes=3), appointment="apt-1"),
                  floor, 0),
        record_of(arrival("v-2", "A-2", now - timedelta(minutes=2)), floor, 1),
        record_of(ev.make_event(ev.PatientRoomed(visit_id="v-2", room_id="4"),
                                clinic_id="north", source="flow",
                                occurred_at=now - timedelta(minutes=1)), floor, 2),
        record_of(ev.make_event(ev.PatientNoShow(appointment_id="apt-9", provider_id="dr-lee",
                                                 scheduled_at=missed_at),
                                clinic_id="north", source="checkin", occurred_at=now),
                  floor, 3),
    ]
    store = app.state.store

    async def projected() -> tuple[Any, ...]:
        first, second = await store.visit("north", "v-1"), await store.visit("north", "v-2")
        return (first and (first.ticket_code, first.status, first.appointment_id),
                second and (second.ticket_code, second.status),
                await store.redis.get(store._arrived("north", "apt-1")),
                await store.no_shows("north", missed_at.date()))

    first = await app.state.runner.handle(records)
    assert first is not None and first.applied == 4
    built = await projected()
    assert built == (("A-1", "waiting", "apt-1"), ("A-2", "roomed"), b"v-1",
                     [("apt-9", missed_at)])

    keys = [key async for key in store.redis.scan_iter(match=f"{topic_prefix.rstrip('.')}:*")]
    await store.redis.delete(*keys)
    rebuilt = await app.state.runner.handle(records)
    assert rebuilt is not None and (rebuilt.applied, rebuilt.already_applied) == (4, 0)
    assert await projected() == built
    # the day's ticket counter was raised past every ticket rebuilt
    assert await store.redis.get(store._seq("north", today)) == b"2"


async def test_records_checkin_cannot_apply_reach_the_dead_letter_topic_with_the_reason(
    kafka_bootstrap: str, redis_url: str, topic_prefix: str,
) -> None:
    floor = topic_name(FLOOR, topic_prefix)
    async with running_checkin(kafka_bootstrap, redis_url, topic_prefix) as checkin:
        now = datetime.now(UTC)
        async with producer(kafka_bootstrap) as client:
            await client.send_and_wait(floor, None, key=b"north")
            await client.send_and_wait(floor, ev.encode(arrival("v-1", "A-7", now)),
                                       key=b"south")
            await client.send_and_wait(floor, ev.encode(estimate("v-1", "A-7", now)),
                                       key=b"north")
            await client.send_and_wait(floor, ev.encode(arrival("v-2", "A-8", now)),
                                       key=b"north")
        letters = await read_topic(kafka_bootstrap, topic_name(DEAD_LETTER, topic_prefix),
                                   expect=3, timeout=15)
        reasons = sorted(orjson.loads(letter.value)["reason"] for letter in letters)
        assert len(reasons) == 3, reasons
        assert "empty record (tombstone)" in reasons
        assert any("is not the event's clinic_id" in r for r in reasons), reasons
        assert any("wait.estimated does not belong on" in r for r in reasons), reasons

        # the consumer kept going: the arrival after them is applied
        async def applied() -> bool:
            answer = await checkin.client.get("/clinics/north/tickets/A-8/wait",
                                              headers=FRONT_DESK)
            return answer.status_code == 200
        await eventually(applied, timeout=10)
