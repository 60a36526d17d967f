"""What check-in tells is recorded (issue 17, part 1), on real Kafka and Redis: the status
lookup and the kiosk's poll of a visit each put one wait.told on the told topic (through
check-in's outbox) when they answer a range, and again only when flow's estimate moved
beyond what the clock explains, at most once in three minutes (the injected clock)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

from shared import events as ev
from shared.topics import ESTIMATES, TOLD, topic_name
from tests.fakes import FakeClock
from tests.helpers import eventually, read_topic
from tests.integration.test_checkin_support import (
    FRONT_DESK,
    KIOSK,
    a_key,
    publish,
    running_checkin,
)


async def test_the_status_lookup_and_the_kiosk_record_what_they_tell(
        kafka_bootstrap: str, redis_url: str, topic_prefix: str) -> None:
    clock = FakeClock(datetime.now(UTC).replace(microsecond=0))
    told_topic = topic_name(TOLD, topic_prefix)
    async with running_checkin(kafka_bootstrap, redis_url, topic_prefix,
                               clock=clock) as checkin:
        arrived = await checkin.client.post(
            "/clinics/north/arrivals", json={"provider_id": "dr-lee", "visit_type": "follow_up"},
            headers={**FRONT_DESK, **a_key()})
        visit, code = arrived.json()["visit_id"], arrived.json()["ticket_code"]
        status, kiosk = f"/clinics/north/tickets/{code}/wait", f"/clinics/north/visits/{visit}/wait"

        async def estimate(wait: float, low: float, high: float) -> None:
            await publish(kafka_bootstrap, ESTIMATES, topic_prefix, [ev.make_event(
                ev.WaitEstimated(visit_id=visit, ticket_code=code, provider_id="dr-lee",
                                 position=1, wait_minutes=wait, low=low, high=high),
                clinic_id="north", source="flow", occurred_at=clock.now())])

            async def shown() -> Any:
                answer = (await checkin.client.get(kiosk, headers=KIOSK)).json()
                return answer if answer["high_minutes"] == high else None

            await eventually(shown, timeout=10)

        assert (await checkin.client.get(status, headers=KIOSK)).json()["low_minutes"] is None
        await estimate(20.0, 14.0, 27.0)  # the kiosk's poll tells it
        for _ in range(3):  # the status lookup tells it once
            assert (await checkin.client.get(status, headers=KIOSK)).status_code == 200
        clock.advance(minutes=4)  # ran down with the clock: nothing new to tell
        await checkin.client.get(status, headers=KIOSK)
        await estimate(38.0, 30.0, 45.0)  # 20 minutes longer: told again on both
        await checkin.client.get(status, headers=KIOSK)

        records = await read_topic(kafka_bootstrap, told_topic, expect=4, timeout=10)
    told = [orjson.loads(r.value) for r in records]
    assert [(t["data"]["channel"], t["data"]["low"], t["data"]["high"]) for t in told] == [
        ("kiosk", 10.0, 30.0), ("status", 10.0, 30.0), ("kiosk", 30.0, 45.0),
        ("status", 30.0, 45.0)]
    assert {t["data"]["visit_id"] for t in told} == {visit}
    assert told[0]["data"]["wait_minutes"] == 20.0 and told[0]["source"] == "checkin"
    assert all(r.key == b"north" for r in records)
    assert {"patient_ref", "name"}.isdisjoint(told[0]["data"])
