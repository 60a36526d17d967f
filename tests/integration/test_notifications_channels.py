"""Channels against real servers on loopback (aiosmtpd, a signed-HTTP receiver, a mail
server that hangs up), and the service's retries: backoff, then ``notification.failed``
and a dead-letter record."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI

from services.notifications.app import create_app
from services.notifications.channels import (
    SIGNATURE_HEADER,
    ClaimLost,
    EmailChannel,
    NotDelivered,
    Outgoing,
    SmsGateway,
    Unconfirmed,
    sign,
)
from shared import events as ev
from shared.settings import NotificationsSettings
from shared.topics import DEAD_LETTER, NOTIFICATIONS, topic_name
from tests.helpers import eventually, free_port, read_topic, serving
from tests.integration.notifications_support import (
    FRONT_DESK,
    SMS_SECRET,
    MailCatcher,
    arrival,
    estimate,
    floor_event,
    publish_estimates,
    publish_floor,
    receiving,
    record_contact,
)

MESSAGE = Outgoing(notification_id="n-0123456789abcdef01234567", kind="delay_warning",
                   subject="North Clinic: your wait is longer",
                   text="Dr. Lee is running about 25 minutes behind; your new estimated wait "
                        "is 30\u201340 minutes.", address="a17@patients.example.org")


class HandOvers:
    def __init__(self, allow: bool = True) -> None:
        self.calls = 0
        self.allow = allow

    async def __call__(self) -> bool:
        self.calls += 1
        return self.allow


def email_channel(port: int, timeout: float = 3.0) -> EmailChannel:
    return EmailChannel(host="127.0.0.1", port=port, sender="clinic@example.invalid",
                        timeout=timeout)


# ------------------------------------------------------------------- email


async def test_an_email_reaches_the_smtp_server_with_the_notification_as_its_message_id(
    smtp_server: MailCatcher,
) -> None:
    hand_over = HandOvers()
    await email_channel(smtp_server.port).send(MESSAGE, hand_over)
    [mail] = smtp_server.mails
    assert mail.to == ("a17@patients.example.org",)
    assert mail.message_id == "<n-0123456789abcdef01234567@clinicflow.invalid>"
    assert mail.subject == MESSAGE.subject and mail.text == MESSAGE.text
    assert hand_over.calls == 1


async def test_a_lost_claim_stops_the_email_before_the_server_has_it(
    smtp_server: MailCatcher,
) -> None:
    with pytest.raises(ClaimLost):
        await email_channel(smtp_server.port).send(MESSAGE, HandOvers(allow=False))
    assert smtp_server.mails == []


async def test_a_mail_server_that_cannot_be_reached_has_not_got_the_message() -> None:
    hand_over = HandOvers()
    with pytest.raises(NotDelivered) as failure:
        await email_channel(free_port(), timeout=1).send(MESSAGE, hand_over)
    assert not failure.value.permanent and hand_over.calls == 0
    assert "a17@" not in failure.value.reason


@contextlib.asynccontextmanager
async def hanging_up_smtp(after: bytes) -> AsyncIterator[int]:
    """A mail server that follows the protocol until ``after`` and then hangs up: at the
    end of DATA (b".") it may or may not have kept the message."""

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 hangs-up ESMTP\r\n")
        in_data = False
        while line := await reader.readline():
            if in_data:
                if line == b".\r\n":
                    break
                continue
            verb = line.split(b" ")[0].split(b":")[0].strip().upper()
            if verb == after:
                break
            if verb in (b"EHLO", b"HELO"):
                writer.write(b"250 hangs-up\r\n")
            elif verb == b"DATA":
                writer.write(b"354 go ahead\r\n")
                in_data = True
            else:
                writer.write(b"250 ok\r\n")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(session, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.reliability(
    "mail server connection lost after the message went",
    "unconfirmed, never sent again",
)
async def test_a_connection_lost_after_the_message_went_is_unconfirmed_never_retried() -> None:
    async with hanging_up_smtp(after=b".") as port:
        with pytest.raises(Unconfirmed):
            await email_channel(port).send(MESSAGE, HandOvers())
    async with hanging_up_smtp(after=b"RCPT") as port:
        with pytest.raises(NotDelivered):  # before DATA: safe to try again
            await email_channel(port).send(MESSAGE, HandOvers())


# --------------------------------------------------------------------- SMS


async def test_an_sms_is_posted_to_the_gateway_with_an_hmac_signature_over_the_body() -> None:
    async with receiving(SMS_SECRET) as gateway, httpx.AsyncClient() as client:
        sms = SmsGateway(url=gateway.url, secret=SMS_SECRET, client=client, timeout=3)
        await sms.send(Outgoing(notification_id="n-1", kind="come_back_now", subject="",
                                text="Please come back now", address="+15551234567"),
                       HandOvers())
        forged = SmsGateway(url=gateway.url, secret="not-the-secret", client=client, timeout=3)
        with pytest.raises(NotDelivered) as refused:
            await forged.send(MESSAGE, HandOvers())
    [accepted] = gateway.accepted
    assert (accepted["to"], accepted["text"], accepted["notification_id"]) == (
        "+15551234567", "Please come back now", "n-1")
    assert gateway.seen_keys == ["n-1"]
    assert refused.value.permanent and gateway.refused == ["bad signature"]


async def test_a_gateway_that_takes_the_request_but_never_answers_is_unconfirmed() -> None:
    slow = FastAPI()
    taken: list[bytes] = []

    @slow.post("/send")
    async def send(body: dict[str, Any]) -> dict[str, bool]:
        taken.append(orjson.dumps(body))
        await asyncio.sleep(1)
        return {"queued": True}

    async with serving(slow) as url, httpx.AsyncClient() as client:
        sms = SmsGateway(url=f"{url}/send", secret=SMS_SECRET, client=client, timeout=0.2)
        with pytest.raises(Unconfirmed):
            await sms.send(Outgoing("n-2", "delay_warning", "", "text", "+15551234567"),
                           HandOvers())
        unreachable = SmsGateway(url=f"http://127.0.0.1:{free_port()}/send", secret=SMS_SECRET,
                                 client=client, timeout=0.3)
        with pytest.raises(NotDelivered):
            await unreachable.send(Outgoing("n-3", "delay_warning", "", "text", "+15551234567"),
                                   HandOvers())
    assert len(taken) == 1


# ------------------------------------------------------- through the service


async def _warn_v1(env: dict[str, Any], client: httpx.AsyncClient, channel: str,
                   address: str) -> None:
    """A-1 checks in for Dr. Lee and leaves a contact; Dr. Lee runs 20 minutes late."""
    now = datetime.now(UTC)
    bootstrap, prefix = env["kafka_bootstrap"], env["topic_prefix"]
    await publish_floor(bootstrap, prefix, [arrival("v1", "A-1", "dr-lee", now)])
    await record_contact(client, "v1", channel, address)
    await publish_floor(bootstrap, prefix, [
        floor_event(ev.DelayAnnounced(provider_id="dr-lee", minutes=20), now)])
    await publish_estimates(bootstrap, prefix, [estimate("v1", "A-1", "dr-lee", 25, now)])


async def _status_of_only(client: httpx.AsyncClient, status: str) -> dict[str, Any] | None:
    listed = (await client.get("/clinics/north/notifications",
                               headers=FRONT_DESK)).json()["notifications"]
    if len(listed) != 1:
        return None
    detail: dict[str, Any] = (await client.get(
        f"/clinics/north/notifications/{listed[0]['notification_id']}",
        headers=FRONT_DESK)).json()
    return detail if detail["status"] == status else None


@pytest.mark.reliability(
    "SMS gateway refusing, then accepting",
    "retried with backoff; the SMS goes once",
)
async def test_a_gateway_refusal_is_retried_with_backoff_and_the_sms_goes_once(
    notifications_env: dict[str, Any],
) -> None:
    async with receiving(SMS_SECRET) as gateway:
        gateway.fail_next = 2
        env = {**notifications_env, "sms_gateway_url": gateway.url,
               "sms_hmac_secret": SMS_SECRET}
        async with serving(create_app(NotificationsSettings(**env))) as url, \
                httpx.AsyncClient(base_url=url) as client:
            await _warn_v1(env, client, "sms", "+1 (555) 123-4567")
            status = await eventually(lambda: _status_of_only(client, "sent"), timeout=20)
    assert status["attempts"] == 3 and status["channel"] == "sms"
    [sms] = gateway.accepted
    assert sms["to"] == "+15551234567"
    assert sms["text"] == ("Dr. Lee is running about 20 minutes behind; your new estimated "
                           "wait is 20\u201330 minutes.")
    assert len(set(gateway.seen_keys)) == 1 and len(gateway.seen_keys) == 3  # one key, 3 tries
    first, second, third = gateway.attempts_at
    assert second - first >= 0.09 and third - second >= 0.19  # backoff: 0.1 s, then 0.2 s


@pytest.mark.reliability(
    "SMTP server unreachable",
    "retried with backoff, then notification.failed and a dead-letter record",
)
async def test_an_unreachable_mail_server_is_retried_then_reported_failed_and_dead_lettered(
    notifications_env: dict[str, Any],
) -> None:
    env = {**notifications_env, "smtp_port": free_port(), "notifications_max_attempts": 3}
    bootstrap, prefix = env["kafka_bootstrap"], env["topic_prefix"]
    async with serving(create_app(NotificationsSettings(**env))) as url, \
            httpx.AsyncClient(base_url=url) as client:
        await _warn_v1(env, client, "email", "a1@patients.example.org")
        status = await eventually(lambda: _status_of_only(client, "failed"), timeout=20)
    assert status["attempts"] == 3
    assert "unreachable" in status["last_error"] and "a1@" not in status["last_error"]
    failed = [ev.decode(r.value) for r in await read_topic(
        bootstrap, topic_name(NOTIFICATIONS, prefix), expect=1)]
    assert [(e.event_type, e.payload.final_status, e.payload.attempts)  # type: ignore[attr-defined]
            for e in failed] == [("notification.failed", "failed", 3)]
    [letter] = [orjson.loads(r.value) for r in await read_topic(
        bootstrap, topic_name(DEAD_LETTER, prefix), expect=1)]
    assert letter["consumer"] == "notifications"
    assert letter["reason"].startswith("notification failed: SMTP server")
    assert "a1@" not in letter["original"]


async def test_a_contact_erased_before_sending_cancels_the_message(
    notifications_env: dict[str, Any],
) -> None:
    env = {**notifications_env, "smtp_port": free_port(), "notifications_max_attempts": 50,
           "notifications_retry_base_seconds": 0.2, "notifications_retry_max_seconds": 0.2}
    async with serving(create_app(NotificationsSettings(**env))) as url, \
            httpx.AsyncClient(base_url=url) as client:
        await _warn_v1(env, client, "email", "a1@patients.example.org")
        await eventually(lambda: _status_of_only(client, "retrying"), timeout=20)
        assert (await client.delete("/clinics/north/visits/v1/contact",
                                    headers=FRONT_DESK)).status_code == 204
        status = await eventually(lambda: _status_of_only(client, "cancelled"), timeout=20)
    assert "no contact details" in status["last_error"]


async def test_the_receiver_refuses_a_body_signed_with_another_secret() -> None:
    async with receiving(SMS_SECRET) as receiver, httpx.AsyncClient() as client:
        body = b'{"to": "+15550001111", "text": "hello"}'
        good = await client.post(receiver.url, content=body,
                                 headers={SIGNATURE_HEADER: sign(body, SMS_SECRET)})
        forged = await client.post(receiver.url, content=body,
                                   headers={SIGNATURE_HEADER: sign(body, "another-secret")})
        tampered = await client.post(receiver.url, content=body + b" ",
                                     headers={SIGNATURE_HEADER: sign(body, SMS_SECRET)})
    assert (good.status_code, forged.status_code, tampered.status_code) == (202, 401, 401)
    assert len(receiver.accepted) == 1 and len(receiver.refused) == 2
