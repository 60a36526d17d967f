"""Shared pieces of the notifications tests: a real SMTP server (aiosmtpd) that keeps what
it receives, a local HTTP receiver that checks HMAC signatures (SMS gateway, pager), the
service's settings for a test, event helpers, and a barrier that waits until the notifier has
read everything published (before a test ticks it). Other notifications test modules import
the helpers from here; tests/integration/conftest.py registers the fixtures."""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiosmtpd.controller import Controller
from fastapi import FastAPI, Request, Response

from services.notifications.app import create_app
from services.notifications.channels import SIGNATURE_HEADER, signature_valid
from services.notifications.consumer import NotifierProjection
from shared import events as ev
from shared.admin import ensure_topics
from shared.settings import NotificationsSettings
from shared.topics import ESTIMATES, FLOOR, TopicSpec, topic_name
from tests.helpers import auth, eventually, free_port, producer, serving

FRONT_DESK = auth("dev-front-desk")
NURSE = auth("dev-nurse")
SMS_SECRET = "test-sms-secret-0123456789"
PAGING_SECRET = "test-paging-secret-0123456789"


# ------------------------------------------------------------------- SMTP


@dataclass(slots=True)
class Mail:
    to: tuple[str, ...]
    message_id: str
    subject: str
    text: str
    received_at: float
    date: str = ""  # the Date header: the clinic's clock


class MailCatcher:
    """An aiosmtpd handler that keeps every message (it runs in aiosmtpd's own thread)."""

    def __init__(self) -> None:
        self.port = 0
        self._mails: list[Mail] = []
        self._lock = threading.Lock()
        self.delay = 0.0  # seconds to think before answering DATA (crash tests)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.delay:
            await asyncio.sleep(self.delay)
        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        body = parsed.get_body(("plain",))
        mail = Mail(tuple(envelope.rcpt_tos), str(parsed["Message-ID"]), str(parsed["Subject"]),
                    body.get_content().strip() if body is not None else "", time.monotonic(),
                    str(parsed["Date"]))
        with self._lock:
            self._mails.append(mail)
        return "250 Message accepted for delivery"

    @property
    def mails(self) -> list[Mail]:
        with self._lock:
            return list(self._mails)

    def to(self, address: str) -> list[Mail]:
        return [m for m in self.mails if address in m.to]


@pytest.fixture
def smtp_server() -> Iterator[MailCatcher]:
    """A real SMTP server on a free loopback port."""
    catcher = MailCatcher()
    catcher.port = free_port()
    controller = Controller(catcher, hostname="127.0.0.1", port=catcher.port)
    controller.start()
    try:
        yield catcher
    finally:
        controller.stop()


# ------------------------------------------------------- signed receivers


@dataclass(slots=True)
class Receiver:
    """An HTTP receiver on loopback (SMS gateway or pager) that checks signatures."""

    secret: str
    url: str = ""
    accepted: list[dict[str, Any]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    fail_next: int = 0  # answer 503 to this many requests first
    seen_keys: list[str] = field(default_factory=list)
    attempts_at: list[float] = field(default_factory=list)  # every signed request

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/send")
        async def send(request: Request) -> Response:
            body = await request.body()
            if not signature_valid(body, request.headers.get(SIGNATURE_HEADER), self.secret):
                self.refused.append("bad signature")
                return Response(status_code=401, content=b'{"error": "bad signature"}')
            self.seen_keys.append(request.headers.get("idempotency-key", ""))
            self.attempts_at.append(time.monotonic())
            if self.fail_next > 0:
                self.fail_next -= 1
                return Response(status_code=503)
            self.accepted.append(orjson.loads(body))
            return Response(status_code=202, content=b'{"queued": true}')

        return app


@contextlib.asynccontextmanager
async def receiving(secret: str) -> AsyncIterator[Receiver]:
    receiver = Receiver(secret)
    async with serving(receiver.app()) as url:
        receiver.url = f"{url}/send"
        yield receiver


# --------------------------------------------------------------- settings


@pytest.fixture
async def notifications_env(kafka_bootstrap: str, redis_url: str, topic_prefix: str,
                            smtp_server: MailCatcher) -> dict[str, Any]:
    """Settings for one test: its own topics, group, Redis keys and SMTP server; quick
    retries and a short settle. The notifier never acts on the clock by itself (tick
    period 0): a test that needs time to pass calls its ``tick(now)`` with the time it
    chose."""
    await ensure_topics(kafka_bootstrap, topic_prefix)
    return {
        "kafka_bootstrap": kafka_bootstrap,
        "redis_url": redis_url,
        "topic_prefix": topic_prefix,
        "redis_prefix": topic_prefix.rstrip("."),
        "notifications_group_id": f"{topic_prefix}notifications",
        "notifications_tick_seconds": 0,
        # a contact command waits for the notifier to hold the floor: on a test's fresh
        # consumer group that includes joining it (a loaded machine takes seconds)
        "notifications_barrier_timeout_seconds": 30,
        "notifications_retry_base_seconds": 0.1,
        "notifications_send_timeout_seconds": 3.0,
        "smtp_host": "127.0.0.1",
        "smtp_port": smtp_server.port,
        # no quiet hours: these tests run on the machine's clock, at any hour
        "notifications_rules": orjson.dumps({"default": {"settle_seconds": 1,
                                                         "quiet_hours": None}}).decode(),
    }


def rules_json(**rules: Any) -> str:
    return orjson.dumps({"default": {"quiet_hours": None, **rules}}).decode()


# ----------------------------------------------------------------- events


def floor_event(payload: ev.Payload, at: datetime, clinic: str = "north") -> ev.Event:
    return ev.make_event(payload, clinic_id=clinic, source="test", occurred_at=at)


def estimate(visit: str, ticket: str, provider: str | None, wait: float, at: datetime,
             position: int = 2, clinic: str = "north", spread: float = 5.0) -> ev.Event:
    return ev.make_event(
        ev.WaitEstimated(visit_id=visit, ticket_code=ticket, provider_id=provider,
                         position=position, wait_minutes=wait, low=max(0.0, wait - spread),
                         high=wait + spread),
        clinic_id=clinic, source="flow", occurred_at=at, correlation_id=visit)


def arrival(visit: str, ticket: str, provider: str | None, at: datetime,
            clinic: str = "north") -> ev.Event:
    return floor_event(ev.PatientArrived(visit_id=visit, ticket_code=ticket,
                                         provider_id=provider, visit_type="follow_up"),
                       at, clinic)


async def publish_floor(bootstrap: str, prefix: str, events: list[ev.Event]) -> None:
    await _publish(bootstrap, topic_name(FLOOR, prefix), events)


async def publish_estimates(bootstrap: str, prefix: str, events: list[ev.Event]) -> None:
    await _publish(bootstrap, topic_name(ESTIMATES, prefix), events)


async def _publish(bootstrap: str, topic: str, events: list[ev.Event]) -> None:
    async with producer(bootstrap) as client:
        for event in events:
            await client.send_and_wait(topic, ev.encode(event), key=event.clinic_id.encode())


async def record_contact(client: httpx.AsyncClient, visit: str, channel: str, address: str,
                         clinic: str = "north", **preferences: Any) -> dict[str, Any]:
    """The front desk records a contact for a visit on the clinic's floor (its arrival
    published before: the service waits until it has read it)."""
    answer = await client.put(f"/clinics/{clinic}/visits/{visit}/contact",
                              json={"channel": channel, "address": address, "consent": True,
                                    **preferences}, headers=FRONT_DESK)
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


def minutes_ago(minutes: float) -> datetime:
    return datetime.now(UTC) - timedelta(minutes=minutes)


async def notifier_has_read_everything(app: FastAPI, bootstrap: str, prefix: str,
                                       timeout: float = 20.0) -> None:
    """Wait until the notifier has applied every floor and estimate record published so
    far (its stored offsets reach the end of each partition)."""
    notifier: NotifierProjection = app.state.notifier
    await has_read_everything(notifier.projection, bootstrap, prefix, (FLOOR, ESTIMATES),
                              timeout)


async def has_read_everything(projection: Any, bootstrap: str, prefix: str,
                              topics: tuple[TopicSpec, ...], timeout: float = 20.0) -> None:
    """Wait until ``projection`` (anything with the runner's ``positions``) has applied
    every record of ``topics`` published so far."""
    partitions = [TopicPartition(topic_name(spec, prefix), p)
                  for spec in topics for p in range(spec.partitions)]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        ends = await consumer.end_offsets(partitions)
    finally:
        await consumer.stop()
    published = {(tp.topic, tp.partition): end - 1 for tp, end in ends.items() if end > 0}

    async def caught_up() -> bool:
        applied = await projection.positions(list(published))
        return all(applied[tp] is not None and applied[tp] >= last
                   for tp, last in published.items())

    await eventually(caught_up, timeout=timeout)


@contextlib.asynccontextmanager
async def notifications_service(env: dict[str, Any],
                                ) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The notifications service on ``env`` (``notifications_env``), served by uvicorn in
    this event loop, and a client of it."""
    app = create_app(NotificationsSettings(**env))
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        yield app, client
