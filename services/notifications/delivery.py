"""Sending: due notifications out through their channels.

``NotificationSender`` takes due notifications from Redis, claims each atomically,
reads the contact details at send time (an audit event is queued with the read), words
the message with the clinic's names as configured now (``records.words``),
records the hand-over just before the channel can have the message, and settles the
outcome:

* sent -> ``notification.sent``; a deferred message settled for good (sent, failed,
  unconfirmed, cancelled) no longer keeps its patient's contact past the clinic's
  midnight (store.py deletes it in the same step when nothing else keeps it);
* the channel certainly does not have it -> retried with exponential backoff;
  after the last attempt (or at once when retrying cannot help) ->
  ``notification.failed`` and a dead-letter record;
* the channel may have it (connection lost after the message went) ->
  ``unconfirmed``: never sent again, ``notification.failed`` with
  ``may_have_been_delivered``, and a dead-letter record for staff to follow up.

Two periodic jobs drive it (``tick(now)``: start what is due at ``now``;
``heartbeat(now)``: announce this instance, recover claims left by dead ones), and
``send(ids)`` starts the notifications a batch just decided at once rather than at the
next tick. A claim whose instance died is recovered by any live one: not yet handed
over -> tried again; handed over -> unconfirmed. The one window left: the process dies
after the channel accepted the message and before Redis records "sent" (one Redis round
trip): the notification ends "unconfirmed" though it was delivered. Nothing is ever sent
twice for the same notification id; a message can be lost only if the channel lost it.

The events it queues (sent, failed, audit, dead letters) leave through the service's
outbox (shared/outbox.py), in the same Redis step as the outcome they report.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime

from services.notifications import metrics as m
from services.notifications import records
from services.notifications.channels import (
    Channel,
    ClaimLost,
    NotDelivered,
    Outgoing,
    Unconfirmed,
)
from services.notifications.domain import Names, backoff_seconds
from services.notifications.store import NotificationStore
from shared.clock import Clock
from shared.logging import get_logger, scrub
from shared.metrics import OUTBOX_EVENTS

log = get_logger("clinicflow.notifications.delivery")

SEND_EVERY_SECONDS = 0.5  # how often due notifications (retries) are looked for
HEARTBEAT_EVERY_SECONDS = 1.0


class NotificationSender:
    """Sends due notifications, at most once each."""

    def __init__(self, store: NotificationStore, channels: Mapping[str, Channel], *,
                 clock: Clock, names: Callable[[str], Names], notifications_topic: str,
                 concurrency: int, send_timeout: float,
                 max_attempts: int, retry_base: float, retry_max: float,
                 on_settled: Callable[[], None] | None = None,
                 feedback_link: Callable[[str, str], str] | None = None) -> None:
        self.store = store
        self.feedback_link = feedback_link  # (clinic, visit) -> the form's signed link
        self.channels = dict(channels)
        self.clock = clock
        self.names = names
        self.notifications_topic = notifications_topic
        self.send_timeout = send_timeout
        self.max_attempts = max_attempts
        self.retry_base = retry_base
        self.retry_max = retry_max
        self.instance_id = uuid.uuid4().hex
        self.on_settled = on_settled
        self.closed = False
        self._semaphore = asyncio.Semaphore(concurrency)
        self._active: set[str] = set()
        self._tasks: set[asyncio.Task[str]] = set()

    # -------------------------------------------------------------- jobs

    async def tick(self, now: datetime) -> int:
        """Start sending every notification due at ``now`` (first attempts the batch
        that decided them did not start, a message deferred to the end of quiet hours,
        retries whose time came), and delete the contacts due for deletion at ``now``
        (their own expiry passed, no deferred message kept for them); returns how many
        sends were started."""
        started = self.send(await self.store.due_notifications(now.timestamp(), 200))
        deleted = await self.store.expire_contacts(now.timestamp())
        if deleted:
            log.info("contact details deleted: no longer needed", contacts=deleted)
        return started

    async def heartbeat(self, now: datetime) -> None:
        """Announce this instance, recover claims left by instances that died, and report
        what waits (due notifications, outbox events)."""
        await self.store.heartbeat(self.instance_id)
        await self.recover_abandoned(now)
        m.DUE_NOTIFICATIONS.set(await self.store.due_count())
        OUTBOX_EVENTS.labels("notifications").set(await self.store.outbox.length())

    def send(self, notification_ids: Iterable[str]) -> int:
        """Start sending these notifications now, each not already on its way (each is
        claimed first: one not due, or already settled, is left alone). Returns how many
        were started."""
        started = 0
        for notification_id in notification_ids:
            if self.closed or notification_id in self._active:
                continue
            self._active.add(notification_id)
            task = asyncio.create_task(self._deliver_and_forget(notification_id))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            started += 1
        return started

    def close(self) -> None:
        """Start nothing more (shutdown); ``drain`` waits for what is on its way."""
        self.closed = True

    async def drain(self) -> None:
        """Wait for the sends in progress (shutdown, tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _deliver_and_forget(self, notification_id: str) -> str:
        try:
            return await self.deliver(notification_id)
        except Exception as exc:
            log.error("delivery crashed", notification_id=notification_id, error=repr(exc))
            return "crashed"
        finally:
            self._active.discard(notification_id)

    # ------------------------------------------------------------ one send

    async def deliver(self, notification_id: str) -> str:
        """Claim, send and settle one notification. Returns the outcome."""
        async with self._semaphore:
            claim = uuid.uuid4().hex
            record = await self.store.claim(notification_id, self.clock.now().timestamp(),
                                            claim, self.instance_id)
            if record is None:
                return "not_due"
            outcome = await self._send(record, claim)
            if self.on_settled is not None:
                self.on_settled()
            return outcome

    async def _send(self, record: dict[str, str], claim: str) -> str:
        notification_id = record["notification_id"]
        kind = record["kind"]
        channel_kind = record["channel"]
        address: str | None = None
        if record.get("audience") == "patient":
            contact = await self.store.read_contact(
                record["clinic_id"], record["visit_id"],
                records.contact_read(record["clinic_id"], record["visit_id"],
                                     reader=records.SENDER, role="service", purpose="send",
                                     at=self.clock.now(), notification_id=notification_id))
            if contact is None:
                return await self._finish(record, claim, "cancelled", channel_kind,
                                          "no contact details on file (erased, expired or "
                                          "never given)")
            channel_kind, address = contact["channel"], contact.get("address") or None
        channel = self.channels.get(channel_kind)
        if channel is None:
            return await self._not_delivered(
                record, claim, channel_kind, f"no {channel_kind} channel is configured", True)
        # the words are made now, with the clinic's names as configured now
        names = self.names(record["clinic_id"])
        link = (self.feedback_link(record["clinic_id"], record["visit_id"])
                if kind == "feedback_request" and self.feedback_link is not None else None)
        subject, text, payload = records.words(record, names, link)
        message = Outgoing(notification_id=notification_id, kind=kind, subject=subject,
                           text=text, address=address, payload=payload,
                           sent_at=names.local(self.clock.now()))
        handed_over = False

        async def hand_over() -> bool:
            nonlocal handed_over
            handed_over = await self.store.hand_over(notification_id, claim)
            return handed_over

        started = time.perf_counter()
        try:
            await asyncio.wait_for(channel.send(message, hand_over), self.send_timeout * 3)
        except ClaimLost:
            return "claim_lost"
        except NotDelivered as exc:
            return await self._not_delivered(record, claim, channel_kind, exc.reason,
                                             exc.permanent)
        except Unconfirmed as exc:
            return await self._unconfirmed(record, claim, channel_kind, exc.reason)
        except Exception as exc:  # a timeout or a bug: what the channel has depends on when
            reason = f"{type(exc).__name__}: {scrub(str(exc))}"[:300]
            if handed_over:
                return await self._unconfirmed(record, claim, channel_kind, reason)
            return await self._not_delivered(record, claim, channel_kind, reason, False)
        finally:
            m.SEND_SECONDS.labels(channel_kind).observe(time.perf_counter() - started)
        now = self.clock.now()
        if link is not None:  # the patient's link is theirs: staff see where it went only
            subject, text, _payload = records.words(record, names)
        await self.store.settle(notification_id, claim, "sent", now=now.timestamp(),
                                patient=_patient(record),
                                fields={"sent_at": now.isoformat(),
                                        "finished_at": now.isoformat(), "channel": channel_kind,
                                        "last_error": "", "subject": subject, "text": text},
                                events=[records.sent_event(record, channel_kind, now),
                                        *records.told_events(record, channel_kind, now)])
        m.DELIVERIES.labels(channel_kind, kind, "sent").inc()
        log.info("notification sent", notification_id=notification_id, kind=kind,
                 channel=channel_kind, attempts=record.get("attempts"))
        return "sent"

    async def _not_delivered(self, record: dict[str, str], claim: str, channel: str,
                             reason: str, permanent: bool) -> str:
        attempts = int(record.get("attempts", "1"))
        if not permanent and attempts < self.max_attempts:
            wait = backoff_seconds(attempts, self.retry_base, self.retry_max)
            now = self.clock.now().timestamp()
            await self.store.settle(record["notification_id"], claim, "retrying", now=now,
                                    fields={"last_error": reason, "channel": channel},
                                    next_at=now + wait)
            m.DELIVERIES.labels(channel, record["kind"], "retrying").inc()
            log.info("notification not delivered, will retry",
                     notification_id=record["notification_id"], attempt=attempts,
                     retry_in=wait, reason=reason)
            return "retrying"
        return await self._finish(record, claim, "failed", channel, reason)

    async def _unconfirmed(self, record: dict[str, str], claim: str, channel: str,
                           reason: str) -> str:
        return await self._finish(record, claim, "unconfirmed", channel,
                                  f"may have been delivered, not sent again: {reason}")

    async def _finish(self, record: dict[str, str], claim: str, status: str, channel: str,
                      reason: str) -> str:
        now = self.clock.now()
        events: list[bytes] = []
        if status in ("failed", "unconfirmed"):
            events = records.failed_events(record, channel, now, reason,
                                           "failed" if status == "failed" else "unconfirmed",
                                           self.notifications_topic)
            log.warning("notification not delivered", notification_id=record["notification_id"],
                        status=status, reason=reason, attempts=record.get("attempts"))
        await self.store.settle(record["notification_id"], claim, status, now=now.timestamp(),
                                patient=_patient(record),
                                fields={"finished_at": now.isoformat(), "last_error": reason,
                                        "channel": channel}, events=events)
        m.DELIVERIES.labels(channel, record["kind"], status).inc()
        return status

    # -------------------------------------------------------------- recovery

    async def recover_abandoned(self, at: datetime) -> int:
        """Settle claims whose sender died (or hung far past its timeout)."""
        recovered = 0
        now = at.timestamp()
        for notification_id, claimed_at in await self.store.inflight():
            if notification_id in self._active:
                continue
            record = await self.store.record(notification_id)
            if record is None or record.get("status") != "sending":
                await self.store.recover(notification_id, "", now)
                continue
            owner = record.get("instance", "")
            stuck = now - claimed_at > self.send_timeout * 6
            if owner != self.instance_id and not stuck and \
                    await self.store.instance_alive(owner):
                continue
            channel = record.get("channel", "log")
            events = records.failed_events(
                record, channel, at,
                "the sender stopped while the channel had the message", "unconfirmed",
                self.notifications_topic)
            outcome = await self.store.recover(notification_id, record.get("claim", ""), now,
                                               events, patient=_patient(record))
            if outcome == 2:
                m.DELIVERIES.labels(channel, record["kind"], "unconfirmed").inc()
                log.warning("abandoned send marked unconfirmed", notification_id=notification_id)
            elif outcome == 1:
                log.info("abandoned send tried again", notification_id=notification_id)
                self.send([notification_id])
            recovered += 1 if outcome else 0
        return recovered


def _patient(record: dict[str, str]) -> tuple[str, str] | None:
    """The clinic and visit whose contact a patient message was sent to (None: a page)."""
    if record.get("audience") != "patient" or not record.get("visit_id"):
        return None
    return record["clinic_id"], record["visit_id"]
