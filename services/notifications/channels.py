"""Channels: how a message leaves the building. Thin adapters, one ``send`` each.

Every channel sorts what goes wrong into three kinds, because the sender's
exactly-once promise depends on it:

* ``NotDelivered`` (``permanent`` or not): the channel certainly does not have
  the message (connection refused, the server said no). Safe to try again.
* ``Unconfirmed``: the channel may have the message (the connection broke or
  timed out after the message body was sent). Never tried again.
* anything else is a bug and is treated as ``Unconfirmed`` by the sender.

Before the point of no return each channel awaits ``hand_over()``, which
records it in Redis; if that returns False (the claim was lost), the channel
stops without sending.

Signatures (SMS gateway, paging webhook): ``X-Clinicflow-Signature:
sha256=<hex HMAC-SHA256 of the raw body with the shared secret>``; the body
carries ``notification_id`` (also sent as ``Idempotency-Key``) and ``sent_at``
so a receiver can refuse replays and de-duplicate.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import smtplib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any, Protocol

import httpx
import orjson

from shared.logging import get_logger, scrub

SIGNATURE_HEADER = "X-Clinicflow-Signature"
HandOver = Callable[[], Awaitable[bool]]
log = get_logger("clinicflow.notifications.channels")


class NotDelivered(Exception):
    """The channel does not have the message. ``permanent``: trying again will not help."""

    def __init__(self, reason: str, *, permanent: bool = False) -> None:
        super().__init__(scrub(reason))
        self.reason = scrub(reason)
        self.permanent = permanent


class Unconfirmed(Exception):
    """The channel may have the message: it is never sent again."""

    def __init__(self, reason: str) -> None:
        super().__init__(scrub(reason))
        self.reason = scrub(reason)


class ClaimLost(Exception):
    """Another sender owns the notification now: stop before handing anything over."""


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message as a channel sees it. ``address`` is read from the contact at send time
    and lives only as long as this object."""

    notification_id: str
    kind: str
    subject: str
    text: str
    address: str | None = None
    payload: dict[str, Any] = field(default_factory=dict)
    sent_at: datetime | None = None  # on the clinic's clock (the e-mail's Date)


class Channel(Protocol):
    kind: str

    async def send(self, message: Outgoing, hand_over: HandOver) -> None: ...


def sign(body: bytes, secret: str) -> str:
    """The signature header's value for ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signature_valid(body: bytes, header: str | None, secret: str) -> bool:
    """What a receiver checks (constant-time)."""
    return header is not None and hmac.compare_digest(header, sign(body, secret))


async def _hand_over_or_stop(hand_over: HandOver) -> None:
    if not await hand_over():
        raise ClaimLost


# ----------------------------------------------------------------- email


class EmailChannel:
    """SMTP with the standard library's ``smtplib``, run in a worker thread.

    The conversation is split where it matters: connecting, ``MAIL FROM`` and
    ``RCPT TO`` fail safely (``NotDelivered``); ``DATA`` is the point of no
    return, so the hand-over is recorded just before it. An error reply to
    ``DATA`` is still ``NotDelivered`` (the server refused it); a broken
    connection or a timeout during or after ``DATA`` is ``Unconfirmed``.
    """

    kind = "email"

    def __init__(self, *, host: str, port: int, sender: str, timeout: float,
                 username: str | None = None, password: str | None = None,
                 starttls: bool = False) -> None:
        self.host, self.port, self.sender, self.timeout = host, port, sender, timeout
        self.username, self.password, self.starttls = username, password, starttls

    def _envelope(self, to: str) -> smtplib.SMTP:
        try:
            smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        except (OSError, smtplib.SMTPException) as exc:
            raise NotDelivered(f"SMTP server {self.host}:{self.port} unreachable: {exc}") \
                from None
        try:
            smtp.ehlo()
            if self.starttls:
                smtp.starttls()
                smtp.ehlo()
            if self.username:
                smtp.login(self.username, self.password or "")
            code, reply = smtp.mail(self.sender)
            if code != 250:
                raise NotDelivered(f"MAIL FROM refused: {code} {reply!r}", permanent=code >= 500)
            code, reply = smtp.rcpt(to)
            if code not in (250, 251):
                raise NotDelivered(f"recipient refused: {code} {reply!r}", permanent=code >= 500)
            return smtp
        except NotDelivered:
            _close(smtp)
            raise
        except smtplib.SMTPAuthenticationError as exc:
            _close(smtp)
            raise NotDelivered(f"SMTP login refused: {exc.smtp_code}", permanent=True) from None
        except (OSError, smtplib.SMTPException) as exc:
            _close(smtp)
            raise NotDelivered(f"SMTP conversation failed before DATA: {exc!r}") from None

    @staticmethod
    def _data(smtp: smtplib.SMTP, body: bytes) -> None:
        try:
            code, reply = smtp.data(body)
        except smtplib.SMTPDataError as exc:  # the server answered DATA with an error
            raise NotDelivered(f"DATA refused: {exc.smtp_code} {exc.smtp_error!r}",
                               permanent=exc.smtp_code >= 500) from None
        except (OSError, smtplib.SMTPException) as exc:
            raise Unconfirmed(f"connection lost during DATA: {exc!r}") from None
        if code != 250:
            raise NotDelivered(f"message refused: {code} {reply!r}", permanent=code >= 500)

    def _compose(self, message: Outgoing) -> bytes:
        email = EmailMessage()
        email["From"] = self.sender
        email["To"] = message.address or ""
        email["Subject"] = message.subject
        email["Date"] = format_datetime(message.sent_at or datetime.now(UTC))
        email["Message-ID"] = f"<{message.notification_id}@clinicflow.invalid>"
        email["Auto-Submitted"] = "auto-generated"
        email["X-Clinicflow-Notification"] = message.notification_id
        email.set_content(message.text)
        return email.as_bytes()

    async def send(self, message: Outgoing, hand_over: HandOver) -> None:
        if not message.address:
            raise NotDelivered("no e-mail address", permanent=True)
        body = self._compose(message)
        smtp = await asyncio.to_thread(self._envelope, message.address)
        try:
            await _hand_over_or_stop(hand_over)
            await asyncio.to_thread(self._data, smtp, body)
        finally:
            await asyncio.to_thread(_close, smtp)


def _close(smtp: smtplib.SMTP) -> None:
    try:
        smtp.quit()
    except Exception:
        try:
            smtp.close()
        except Exception:
            pass


# ------------------------------------------------------------------ http


class _SignedPost:
    """An HTTP POST of a JSON body signed with HMAC-SHA256 (SMS gateway, paging webhook)."""

    def __init__(self, *, url: str, secret: str, client: httpx.AsyncClient,
                 timeout: float) -> None:
        self.url, self.secret, self.client, self.timeout = url, secret, client, timeout

    async def post(self, notification_id: str, document: dict[str, Any],
                   hand_over: HandOver) -> None:
        body = orjson.dumps({**document, "notification_id": notification_id,
                             "sent_at": datetime.now(UTC).isoformat()})
        headers = {"Content-Type": "application/json", "Idempotency-Key": notification_id,
                   SIGNATURE_HEADER: sign(body, self.secret)}
        await _hand_over_or_stop(hand_over)
        try:
            response = await self.client.post(self.url, content=body, headers=headers,
                                              timeout=self.timeout)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise NotDelivered(f"{_host(self.url)} unreachable: {exc!r}") from None
        except httpx.HTTPError as exc:  # sent, but no answer: it may have been taken
            raise Unconfirmed(f"no answer from {_host(self.url)}: {exc!r}") from None
        if response.is_success:
            return
        status = response.status_code
        # the receiver answered: it did not take the message; retries keep the same
        # Idempotency-Key, so a receiver that honours it never sends twice
        raise NotDelivered(f"{_host(self.url)} answered {status}",
                           permanent=400 <= status < 500 and status not in (408, 425, 429))


def _host(url: str) -> str:
    return httpx.URL(url).host or "receiver"


class SmsGateway:
    """SMS through an HTTP gateway: ``{"to", "text", "notification_id", "sent_at"}``."""

    kind = "sms"

    def __init__(self, *, url: str, secret: str, client: httpx.AsyncClient,
                 timeout: float) -> None:
        self._post = _SignedPost(url=url, secret=secret, client=client, timeout=timeout)

    async def send(self, message: Outgoing, hand_over: HandOver) -> None:
        if not message.address:
            raise NotDelivered("no phone number", permanent=True)
        await self._post.post(message.notification_id,
                              {"to": message.address, "text": message.text}, hand_over)


class PagingWebhook:
    """Nurse alerts for paging systems: ``{"type", "clinic_id", "alert", ...}``."""

    kind = "webhook"

    def __init__(self, *, url: str, secret: str, client: httpx.AsyncClient,
                 timeout: float) -> None:
        self._post = _SignedPost(url=url, secret=secret, client=client, timeout=timeout)

    async def send(self, message: Outgoing, hand_over: HandOver) -> None:
        await self._post.post(message.notification_id, message.payload, hand_over)


class LogChannel:
    """Development: the message goes to the log (text only, never an address)."""

    kind = "log"

    async def send(self, message: Outgoing, hand_over: HandOver) -> None:
        await _hand_over_or_stop(hand_over)
        log.info("notification (log channel)", notification_id=message.notification_id,
                 kind=message.kind, text=message.text)
