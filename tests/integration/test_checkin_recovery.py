"""Checkin when things go wrong: Kafka unreachable (a clear 503 and nothing recorded or
half-published), Redis lost (the projection and the ticket numbers come back from the
floor topic, so no ticket code is handed out twice), two desks racing for one appointment."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from tests.helpers import eventually, free_port
from tests.integration.test_checkin_support import (
    FRONT_DESK,
    KIOSK,
    a_key,
    at,
    csv_rows,
    running_checkin,
)


@pytest.mark.reliability(
    "Kafka unreachable under check-in commands",
    "503, nothing recorded or half-published",
)
async def test_with_kafka_unreachable_commands_answer_503_and_record_nothing(
    kafka_bootstrap: str, redis_url: str, topic_prefix: str,
) -> None:
    schedule = csv_rows(("apt-1", "p-aaa111", "dr-lee", "follow_up", at(10), "15", "", ""))
    dead_kafka = f"127.0.0.1:{free_port()}"
    async with running_checkin(kafka_bootstrap, redis_url, topic_prefix) as checkin:
        assert (await checkin.import_csv(schedule)).status_code == 200
    async with running_checkin(dead_kafka, redis_url, topic_prefix,
                               ready=False) as offline:
        walk_in = await offline.client.post("/clinics/north/arrivals",
                                            json={"visit_type": "follow_up"},
                                            headers={**FRONT_DESK, **a_key()})
        assert walk_in.status_code == 503, walk_in.text
        assert "nothing was recorded" in walk_in.json()["detail"]
        scheduled = await offline.client.post("/clinics/north/arrivals",
                                              json={"appointment_id": "apt-1"},
                                              headers={**FRONT_DESK, "Idempotency-Key": "a1"})
        assert scheduled.status_code == 503, scheduled.text
        moved = schedule.replace("dr-lee", "dr-kim")
        imported = await offline.import_csv(moved)
        assert imported.status_code == 503, imported.text
        listed = await offline.client.get("/clinics/north/schedule", headers=FRONT_DESK)
        rows = listed.json()["appointments"]
        assert [(r["provider_id"], r["status"]) for r in rows] == [("dr-lee", "booked")]
        lookup = await offline.client.get("/clinics/north/tickets/A-1/wait", headers=KIOSK)
        assert lookup.status_code == 404
    async with running_checkin(kafka_bootstrap, redis_url, topic_prefix) as checkin:
        # the failed attempt left nothing behind: the same Idempotency-Key now checks in
        retried = await checkin.client.post("/clinics/north/arrivals",
                                            json={"appointment_id": "apt-1"},
                                            headers={**FRONT_DESK, "Idempotency-Key": "a1"})
        assert retried.status_code == 201, retried.text
        assert retried.json()["replayed"] is False
        events = await checkin.events(expect=2)
        assert [e["event_type"] for e in events] == ["appointment.scheduled", "patient.arrived"]


@pytest.mark.reliability(
    "Redis lost under check-in",
    "visits rebuilt from Kafka; no ticket code reused",
)
async def test_after_redis_is_lost_visits_come_back_and_no_ticket_code_is_reused(
    kafka_bootstrap: str, redis_url: str, topic_prefix: str,
) -> None:
    async with running_checkin(kafka_bootstrap, redis_url, topic_prefix) as checkin:
        first = []
        for _ in range(2):
            answer = await checkin.client.post("/clinics/north/arrivals",
                                               json={"visit_type": "follow_up"},
                                               headers={**FRONT_DESK, **a_key()})
            assert answer.status_code == 201, answer.text
            first.append(answer.json()["ticket_code"])
        assert first == ["A-1", "A-2"]
    client = aioredis.from_url(redis_url)
    try:
        prefix = topic_prefix.rstrip(".")
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*")]
        assert keys
        await client.delete(*keys)
    finally:
        await client.aclose()
    async with running_checkin(kafka_bootstrap, redis_url, topic_prefix) as checkin:
        async def rebuilt() -> bool:
            answer = await checkin.client.get("/clinics/north/tickets/A-2/wait",
                                              headers=FRONT_DESK)
            return answer.status_code == 200
        await eventually(rebuilt, timeout=10)
        answer = await checkin.client.post("/clinics/north/arrivals",
                                           json={"visit_type": "follow_up"},
                                           headers={**FRONT_DESK, **a_key()})
        assert answer.status_code == 201, answer.text
        assert answer.json()["ticket_code"] == "A-3"


@pytest.mark.reliability(
    "two desks checking in one appointment at once",
    "one arrival",
)
async def test_two_desks_checking_in_the_same_appointment_at_once_make_one_arrival(
    kafka_bootstrap: str, redis_url: str, topic_prefix: str,
) -> None:
    async with running_checkin(kafka_bootstrap, redis_url, topic_prefix) as checkin:
        schedule = csv_rows(("apt-1", "p-aaa111", "dr-lee", "follow_up", at(10), "15",
                             "1980-04-02", "JS"))
        assert (await checkin.import_csv(schedule)).status_code == 200
        code = (await checkin.kiosk_codes())["apt-1"]
        answers = await asyncio.gather(
            *(checkin.client.post("/clinics/north/arrivals", json={"appointment_id": "apt-1"},
                                  headers=FRONT_DESK) for _ in range(4)),
            *(checkin.client.post("/clinics/north/kiosk/check-ins",
                                  json={"appointment_code": code}, headers=KIOSK)
              for _ in range(2)))
        assert sorted(a.status_code for a in answers) == [201, 409, 409, 409, 409, 409]
        events = await checkin.events(expect=2)
        assert [e["event_type"] for e in events] == ["appointment.scheduled", "patient.arrived"]


async def test_the_same_idempotency_key_sent_twice_at_once_makes_one_arrival(
    kafka_bootstrap: str, redis_url: str, topic_prefix: str,
) -> None:
    async with running_checkin(kafka_bootstrap, redis_url, topic_prefix) as checkin:
        answers = await asyncio.gather(*(
            checkin.client.post("/clinics/north/arrivals", json={"visit_type": "follow_up"},
                                headers={**FRONT_DESK, "Idempotency-Key": "double-tap"})
            for _ in range(3)))
        created = [a for a in answers if a.status_code == 201]
        assert created, [a.text for a in answers]
        # the others are the same arrival replayed, or told the first is still running
        assert {a.json()["visit_id"] for a in created} == {created[0].json()["visit_id"]}
        assert all(a.status_code in (201, 409) for a in answers)
        events = await checkin.events(expect=1)
        assert [e["event_type"] for e in events] == ["patient.arrived"]
