"""Fixtures and helpers of the browser tests: Debian's Chromium driven by Playwright
(never a downloaded browser) and the flow service as a real child process on the session's
Kafka and Redis."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, async_playwright

from shared import events as ev
from shared.admin import ensure_topics
from tests.helpers import ServiceProcess, producer
from tests.integration.notifications_support import smtp_server

__all__ = ["browser", "flow", "flow_env", "publish", "smtp_server"]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run",
        "--disable-dev-shm-usage"]


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                                    args=ARGS)
        try:
            yield launched
        finally:
            await launched.close()


def flow_env(kafka_bootstrap: str, redis_url: str, topic_prefix: str) -> dict[str, str]:
    """The environment of a flow child process on the test's Kafka, Redis and names."""
    return {
        "CLINICFLOW_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "CLINICFLOW_REDIS_URL": redis_url,
        "CLINICFLOW_TOPIC_PREFIX": topic_prefix,
        "CLINICFLOW_REDIS_PREFIX": topic_prefix.rstrip("."),
        "CLINICFLOW_FLOW_GROUP_ID": f"{topic_prefix}flow",
    }


@pytest.fixture
async def flow(kafka_bootstrap: str, redis_url: str, topic_prefix: str,
               tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    await ensure_topics(kafka_bootstrap, topic_prefix)
    env = {**flow_env(kafka_bootstrap, redis_url, topic_prefix),
           "CLINICFLOW_FLOW_CHECKPOINT_SECONDS": "0.2"}
    service = ServiceProcess("flow", env, tmp_path / "flow.log")
    service.start()
    await service.wait_ready()
    try:
        yield {"service": service, "topic": f"{topic_prefix}clinicflow.floor.v1",
               "bootstrap": kafka_bootstrap}
    finally:
        service.stop()


async def publish(flow: dict[str, Any], *payloads: ev.Payload,
                  at: datetime | None = None) -> None:
    """Floor events for the "lobby" clinic, as if they happened ``at`` (default: now)."""
    async with producer(flow["bootstrap"]) as client:
        for payload in payloads:
            event = ev.make_event(payload, clinic_id="lobby", source="test",
                                  occurred_at=at or datetime.now(UTC))
            await client.send_and_wait(flow["topic"], ev.encode(event), key=b"lobby")


