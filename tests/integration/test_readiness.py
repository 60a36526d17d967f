"""A service whose Kafka or Redis is down says which on /readyz, keeps retrying with
backoff (and logs it), and becomes ready by itself once the dependency is there."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.admin import ensure_topics
from tests.helpers import ServiceProcess, eventually
from tools.stack import free_port, start_redis, stop_process, wait_redis


def _flow_env(kafka_bootstrap: str, topic_prefix: str, redis_url: str) -> dict[str, str]:
    return {
        "CLINICFLOW_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "CLINICFLOW_REDIS_URL": redis_url,
        "CLINICFLOW_TOPIC_PREFIX": topic_prefix,
        "CLINICFLOW_FLOW_GROUP_ID": f"{topic_prefix}flow",
        "CLINICFLOW_LOG_FORMAT": "json",
    }


async def _ready(url: str) -> Any:
    async with httpx.AsyncClient() as client:
        try:
            response = await client.get(f"{url}/readyz", timeout=3)
        except httpx.HTTPError:
            return None
        return response


@pytest.mark.reliability(
    "Redis stopped, then started again",
    "/readyz 503 names Redis; the service recovers by itself",
)
async def test_readyz_names_the_missing_dependency_and_the_service_recovers_by_itself(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path,
) -> None:
    await ensure_topics(kafka_bootstrap, topic_prefix)
    redis_port = free_port()
    env = _flow_env(kafka_bootstrap, topic_prefix, f"redis://127.0.0.1:{redis_port}/0")
    service = ServiceProcess("flow", env, tmp_path / "flow.log")
    service.start()
    redis = None
    try:
        async def answering() -> Any:
            response = await _ready(service.url)
            return response if response is not None and response.status_code == 503 else None

        response = await eventually(answering, timeout=30)
        checks = response.json()["checks"]
        assert checks["redis"].startswith("unreachable")
        async with httpx.AsyncClient() as client:
            healthz = await client.get(f"{service.url}/healthz", timeout=3)
        assert healthz.status_code == 200  # alive, just not ready: no crash loop

        await eventually(lambda: "redis not reachable, retrying" in
                         (tmp_path / "flow.log").read_text(), timeout=10)
        redis = start_redis(tmp_path / "redis", redis_port)
        await wait_redis(f"redis://127.0.0.1:{redis_port}/0", redis)

        async def ready() -> Any:
            answer = await _ready(service.url)
            return answer if answer is not None and answer.status_code == 200 else None

        ok = await eventually(ready, timeout=40)
        assert ok.json()["checks"] == {"redis": "ok", "kafka": "ok"}
    finally:
        service.stop()
        if redis is not None:
            stop_process(redis.pid, redis.cmdline_hint)


@pytest.mark.reliability(
    "Kafka unreachable",
    "/readyz 503 names Kafka",
)
async def test_readyz_names_kafka_when_the_broker_is_unreachable(
    redis_url: str, tmp_path: Path,
) -> None:
    env = {
        "CLINICFLOW_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
        "CLINICFLOW_REDIS_URL": redis_url,
        "CLINICFLOW_LOG_FORMAT": "json",
    }
    service = ServiceProcess("checkin", env, tmp_path / "checkin.log")
    service.start()
    try:
        async def not_ready() -> Any:
            response = await _ready(service.url)
            if response is None or response.status_code != 503:
                return None
            return response if response.json()["checks"]["kafka"] != "connecting" else None

        response = await eventually(not_ready, timeout=30)
        assert response.json()["checks"]["redis"] == "ok"
        assert "unreachable" in response.json()["checks"]["kafka"]
        await eventually(lambda: "kafka not reachable, retrying" in
                         (tmp_path / "checkin.log").read_text(), timeout=10)
    finally:
        service.stop()


@pytest.mark.reliability(
    "Redis restarted under a serving API, then stopped",
    "the first requests after the restart succeed (no 500 from stale pooled connections); "
    "with Redis down a request gets 503 with Retry-After",
)
async def test_requests_ride_out_a_redis_restart_and_get_503_while_it_is_down(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path,
) -> None:
    await ensure_topics(kafka_bootstrap, topic_prefix)
    redis_port = free_port()
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    redis = start_redis(tmp_path / "redis", redis_port)
    await wait_redis(redis_url, redis)
    env = _flow_env(kafka_bootstrap, topic_prefix, redis_url)
    service = ServiceProcess("flow", env, tmp_path / "flow.log")
    service.start()
    headers = {"Authorization": "Bearer dev-manager"}
    try:
        await service.wait_ready(60)
        async with httpx.AsyncClient(base_url=service.url, headers=headers,
                                     timeout=10) as client:
            async def burst() -> list[int]:
                # several at once, so the service's pool holds several connections
                answers = await asyncio.gather(*(
                    client.post("/clinics/north/delays", json={
                        "provider_id": "dr-lee", "minutes": n, "reason": "running late"},
                        headers={"Idempotency-Key": uuid.uuid4().hex})
                    for n in range(1, 7)))
                return [a.status_code for a in answers]

            assert await burst() == [202] * 6
            stop_process(redis.pid, redis.cmdline_hint)
            redis = start_redis(tmp_path / "redis", redis_port)
            await wait_redis(redis_url, redis)
            assert await burst() == [202] * 6  # stale connections replaced, not a 500

            stop_process(redis.pid, redis.cmdline_hint)
            down = await client.post("/clinics/north/delays", json={
                "provider_id": "dr-lee", "minutes": 5, "reason": "late"},
                headers={"Idempotency-Key": uuid.uuid4().hex})
            assert down.status_code == 503, down.text
            assert down.headers["Retry-After"]
            assert "Redis" in down.json()["detail"]
    finally:
        service.stop()
        stop_process(redis.pid, redis.cmdline_hint)
