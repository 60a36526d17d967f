"""All four services at once (checkin, flow, notifications, billing), in this event loop,
on the session's Kafka and Redis with their own topics and keys, and one credential per
role, for every clinic ("any") and for clinic north only ("north").

One set is started per session (``clinic_services``; tests take ``all_services``, which
waits until each is ready; both registered in conftest.py) and shared by the role matrix
and the API fuzzing: tests that read the topics look only at
what they added. Collected by pytest but holds no tests."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiosmtpd.controller import Controller
from fastapi import FastAPI

from services.billing.app import create_app as billing_app
from services.checkin.app import create_app as checkin_app
from services.flow.app import create_app as flow_app
from services.notifications.app import create_app as notifications_app
from shared.admin import ensure_topics
from shared.settings import (
    ROLES,
    BillingSettings,
    CheckinSettings,
    FlowSettings,
    NotificationsSettings,
)
from shared.topics import ALL_TOPICS, topic_name
from tests.helpers import eventually, free_port, read_topic, serving
from tests.integration.notifications_support import MailCatcher
from tests.integration.test_checkin_support import midday_zone

NONE = "none"


def token(role: str, scope: str) -> str:
    """The bearer token of ``role`` for ``scope`` ("any": every clinic, or one clinic)."""
    return f"matrix-{scope}-{role}-0000000000"


def bearer(role: str, scope: str = "any") -> dict[str, str]:
    return {} if role == NONE else {"Authorization": f"Bearer {token(role, scope)}"}


def credentials_json() -> str:
    """One credential per role opening every clinic, one per role opening north only."""
    scopes = {"any": ["*"], "north": ["north"]}
    return json.dumps([{"name": f"{scope} {role}", "role": role, "clinics": clinics,
                        "token": token(role, scope)}
                       for scope, clinics in scopes.items() for role in ROLES])


@dataclass
class Services:
    """The four services running, and where their events go."""

    kafka_bootstrap: str
    topic_prefix: str
    urls: dict[str, str]
    apps: dict[str, FastAPI]
    clients: dict[str, httpx.AsyncClient] = field(default_factory=dict)
    redis_url: str = ""

    def topic(self, declared: str) -> str:
        spec = next(s for s in ALL_TOPICS if s.name == declared)
        return topic_name(spec, self.topic_prefix)

    async def ready(self) -> None:
        """Wait until every service has Kafka and Redis (the set lives for the session:
        a fault test in between may have restarted either)."""
        for client in self.clients.values():

            async def ready(client: httpx.AsyncClient = client) -> bool:
                return (await client.get("/readyz")).status_code == 200

            await eventually(ready, timeout=90)

    async def settled(self) -> bool:
        """Every consumer group of this set has applied (and told Kafka) every record of
        its topics, and every service's outbox is empty: what the records lead to, dead
        letters included, is on Kafka now."""
        from aiokafka.admin import AIOKafkaAdminClient
        from redis.asyncio import Redis

        admin = AIOKafkaAdminClient(bootstrap_servers=self.kafka_bootstrap)
        await admin.start()
        consumer = AIOKafkaConsumer(bootstrap_servers=self.kafka_bootstrap)
        await consumer.start()
        await consumer._client.force_metadata_update()  # every topic's partitions known
        try:
            floor, estimates, ledger = (self.topic(n) for n in (
                "clinicflow.floor.v1", "clinicflow.estimates.v1", "clinicflow.ledger.v1"))
            reads = {"checkin": (floor, estimates), "flow": (floor,),
                     "notifications": (floor, estimates), "billing": (floor,),
                     "billing-ledger": (ledger,)}
            for name, topics in reads.items():
                committed = await admin.list_consumer_group_offsets(
                    f"{self.topic_prefix}{name}")
                partitions = [TopicPartition(t, p) for t in topics
                              for p in consumer.partitions_for_topic(t) or ()]
                if not partitions:
                    return False  # metadata not there yet: nothing can be said
                ends = await consumer.end_offsets(partitions)
                for tp, end in ends.items():
                    meta = committed.get(tp)
                    if end > 0 and (meta is None or meta.offset < end):
                        return False
        finally:
            await consumer.stop()
            await admin.close()
        redis = Redis.from_url(self.redis_url)
        try:
            prefix = self.topic_prefix.rstrip(".")
            async for key in redis.scan_iter(match=f"{prefix}:*outbox"):
                if await redis.llen(key):
                    return False
        finally:
            await redis.aclose()
        return True

    async def events(self) -> list[dict[str, Any]]:
        """Every event the services published (every declared topic), as JSON envelopes."""
        found: list[dict[str, Any]] = []
        for spec in ALL_TOPICS:
            for record in await read_topic(self.kafka_bootstrap,
                                           topic_name(spec, self.topic_prefix), timeout=3.0):
                with contextlib.suppress(orjson.JSONDecodeError):
                    envelope = orjson.loads(record.value)
                    if isinstance(envelope, dict):
                        found.append({**envelope, "_topic": spec.name})
        return found


@contextlib.asynccontextmanager
async def running_services(kafka_bootstrap: str, redis_url: str) -> AsyncIterator[Services]:
    """All four services in this loop, on their own topics and Redis keys, ready."""
    prefix = f"t{uuid.uuid4().hex[:10]}."
    await ensure_topics(kafka_bootstrap, prefix)
    # a real mail server, so the notifier takes e-mail contacts (it refuses them without)
    mail = MailCatcher()
    mail.port = free_port()
    mail_server = Controller(mail, hostname="127.0.0.1", port=mail.port)
    mail_server.start()
    common: dict[str, Any] = {"env": "test", "kafka_bootstrap": kafka_bootstrap,
                              "redis_url": redis_url, "topic_prefix": prefix,
                              "redis_prefix": prefix.rstrip("."),
                              "credentials": credentials_json()}
    apps: dict[str, FastAPI] = {
        # no no-show sweep of its own: no test here wants one publishing in between
        "checkin": checkin_app(CheckinSettings(**common, checkin_timezone=midday_zone(),
                                               checkin_group_id=f"{prefix}checkin",
                                               checkin_no_show_check_seconds=0)),
        "flow": flow_app(FlowSettings(**common, flow_group_id=f"{prefix}flow")),
        "notifications": notifications_app(NotificationsSettings(
            **common, notifications_group_id=f"{prefix}notifications",
            smtp_host="127.0.0.1", smtp_port=mail.port)),
        "billing": billing_app(BillingSettings(**common, billing_group_id=f"{prefix}billing",
                                               billing_batch_timeout_ms=10)),
    }
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(mail_server.stop)
        urls = {name: await stack.enter_async_context(serving(app))
                for name, app in apps.items()}
        services = Services(kafka_bootstrap, prefix, urls, apps, redis_url=redis_url)
        for name, url in urls.items():
            client = await stack.enter_async_context(httpx.AsyncClient(base_url=url,
                                                                       timeout=30))
            services.clients[name] = client
        await services.ready()
        yield services


@pytest.fixture(scope="session")
async def clinic_services(kafka_bootstrap: str, redis_url: str) -> AsyncIterator[Services]:
    """The four services, started once per session."""
    async with running_services(kafka_bootstrap, redis_url) as running:
        yield running


@pytest.fixture
async def all_services(clinic_services: Services) -> Services:
    """The session's four services, each ready now."""
    await clinic_services.ready()
    return clinic_services
