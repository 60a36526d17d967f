"""Flow's staff commands while Kafka cannot be reached (a real Redis, no broker listening):
a clear 503 the nurse station can retry, never a 500, and an Idempotency-Key that is not
left holding the retry off."""

from __future__ import annotations

import httpx
import pytest

from services.flow.app import create_app
from shared.settings import FlowSettings
from tests.helpers import free_port, serving
from tests.integration.flow_support import NURSE, flow_settings


@pytest.mark.reliability(
    "a floor command while Kafka is unreachable",
    "503 with Retry-After saying nothing was published; the same Idempotency-Key retried "
    "is tried again (503 again), not held off (409)",
)
async def test_a_floor_command_without_kafka_is_a_503_to_retry_not_a_500(
    redis_url: str, topic_prefix: str,
) -> None:
    unreachable = f"127.0.0.1:{free_port()}"  # nothing listens there
    settings = FlowSettings(**flow_settings(unreachable, redis_url, topic_prefix))
    async with serving(create_app(settings)) as url, \
            httpx.AsyncClient(base_url=url, timeout=30) as client:
        command = {"provider_id": "dr-lee", "minutes": 10}
        headers = {**NURSE, "Idempotency-Key": "delay-1"}
        first = await client.post("/clinics/north/delays", json=command, headers=headers)
        again = await client.post("/clinics/north/delays", json=command, headers=headers)
        ready = await client.post("/clinics/north/rooms/r1/ready", headers=NURSE)
    for answer in (first, again, ready):
        assert answer.status_code == 503, answer.text
        assert "nothing was published" in answer.json()["detail"]
        assert int(answer.headers["Retry-After"]) >= 1
