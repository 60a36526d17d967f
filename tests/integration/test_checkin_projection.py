"""What a waiting patient is told comes from the floor and flow's estimates on Kafka:
the status lookup gives the place in line and the range from flow's latest estimate, and
stops once the patient is roomed. Credentials scoped to one clinic stay in it, and a
busy kiosk is limited even when every code it asks about is real."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from shared import events as ev
from tests.helpers import auth, eventually
from tests.integration.notifications_support import publish_estimates, publish_floor
from tests.integration.test_checkin_support import FRONT_DESK, KIOSK, running_checkin
from tools.stack import LocalStack


async def test_the_lookup_follows_flows_estimates_and_stops_when_the_patient_is_roomed(
    kafka_bootstrap: str, redis_url: str, topic_prefix: str,
) -> None:
    async with running_checkin(kafka_bootstrap, redis_url, topic_prefix) as checkin:
        arrived = await checkin.client.post("/clinics/north/arrivals",
                                            json={"provider_id": "dr-lee",
                                                  "visit_type": "follow_up"},
                                            headers=FRONT_DESK)
        visit, code = arrived.json()["visit_id"], arrived.json()["ticket_code"]
        path = f"/clinics/north/tickets/{code}/wait"
        first = (await checkin.client.get(path, headers=KIOSK)).json()
        assert first == {"ticket_code": code, "waiting": True, "position": None,
                         "low_minutes": None, "high_minutes": None}

        now = datetime.now(UTC)
        await publish_estimates(kafka_bootstrap, topic_prefix, [ev.make_event(
            ev.WaitEstimated(visit_id=visit, ticket_code=code, provider_id="dr-lee",
                             position=2, wait_minutes=20.0, low=15.0, high=25.0),
            clinic_id="north", source="flow", occurred_at=now, correlation_id=visit)])

        async def estimated() -> Any:
            answer = (await checkin.client.get(path, headers=FRONT_DESK)).json()
            return answer if answer["position"] is not None else None

        answer = await eventually(estimated, timeout=10)
        assert answer["position"] == 2
        assert 14 <= answer["low_minutes"] <= 15 and 24 <= answer["high_minutes"] <= 25
        # nothing but place and range: no provider, no visit type, no patient
        assert "dr-lee" not in orjson.dumps(answer).decode()

        await publish_floor(kafka_bootstrap, topic_prefix, [ev.make_event(
            ev.PatientRoomed(visit_id=visit, room_id="4"), clinic_id="north", source="flow",
            occurred_at=datetime.now(UTC), correlation_id=visit)])

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
    async with running_checkin(kafka_bootstrap, redis_url, topic_prefix,
                               credentials=orjson.dumps(credentials).decode(),
                               checkin_lookup_rate_per_minute=3) as checkin:
        desk, kiosk = auth("north-desk-token-0123456789"), auth("south-kiosk-token-0123456789")
        arrived = await checkin.client.post("/clinics/north/arrivals",
                                            json={"visit_type": "follow_up"}, headers=desk)
        assert arrived.status_code == 201
        code = arrived.json()["ticket_code"]
        elsewhere = await checkin.client.post("/clinics/south/arrivals",
                                              json={"visit_type": "follow_up"}, headers=desk)
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
                                            headers=FRONT_DESK)
        visit, code = arrived.json()["visit_id"], arrived.json()["ticket_code"]
        await asyncio.sleep(1.5)  # in Redis's append-only file
        await asyncio.to_thread(own_stack.stop_redis, True)
        await publish_estimates(kafka_bootstrap, topic_prefix, [ev.make_event(
            ev.WaitEstimated(visit_id=visit, ticket_code=code, provider_id="dr-lee",
                             position=3, wait_minutes=30.0, low=25.0, high=35.0),
            clinic_id="north", source="flow", occurred_at=datetime.now(UTC),
            correlation_id=visit)])
        await asyncio.sleep(2)
        await asyncio.to_thread(own_stack.start_redis)

        async def estimated() -> Any:
            response = await checkin.client.get(f"/clinics/north/tickets/{code}/wait",
                                                headers=FRONT_DESK)
            answer = response.json() if response.status_code == 200 else None
            return answer if answer and answer["position"] is not None else None

        answer = await eventually(estimated, timeout=20)
        assert answer["position"] == 3
