"""Sending: due notifications out through their channels; events out through the outbox.

``Dispatcher`` takes due notifications from Redis, claims each atomically, reads
the contact details at send time (an audit event is queued with the read),
records the hand-over just before the channel can have the message, and
settles the outcome:

* sent -> ``notification.sent``;
* the channel certainly does not have it -> retried with exponential backoff;
  after the last attempt (or at once when retrying cannot help) ->
  ``notification.failed`` and a dead-letter record;
* the channel may have it (connection lost after the message went) ->
  ``unconfirmed``: never sent again, ``notification.failed`` with
  ``may_have_been_delivered``, and a dead-letter record for staff to follow up.

Instances announce themselves with a heartbeat. A claim whose instance died is
recovered by any live one: not yet handed over -> tried again; handed over ->
unconfirmed. The one window left: the process dies after the channel accepted
the message and before Redis records "sent" (one Redis round trip): the
notification ends "unconfirmed" though it was delivered. Nothing is ever sent
twice for the same notification id; a message can be lost only if the channel
lost it.

``OutboxPublisher`` publishes the events written to the Redis outbox (one
drainer at a time across instances), then trims what it published. A crash in
between publishes them again: at least once, with stable event ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime

import orjson

from services.notifications import metrics as m
from services.notifications import records
from services.notifications.channels import (
    Channel,
    ClaimLost,
    NotDelivered,
    Outgoing,
    Unconfirmed,
)
from services.notifications.domain import backoff_seconds
from services.notifications.store import NotificationStore
from shared.logging import get_logger, scrub
from shared.service import ServiceRuntime

log = get_logger("clinicflow.notifications.delivery")


class Dispatcher:
    """Sends due notifications, at most once each."""

    def __init__(self, store: NotificationStore, channels: Mapping[str, Channel], *,
                 notifications_topic: str, concurrency: int, send_timeout: float,
                 max_attempts: int, retry_base: float, retry_max: float,
                 on_settled: asyncio.Event | None = None) -> None:
        self.store = store
        self.channels = dict(channels)
        self.notifications_topic = notifications_topic
        self.send_timeout = send_timeout
        self.max_attempts = max_attempts
        self.retry_base = retry_base
        self.retry_max = retry_max
        self.instance_id = uuid.uuid4().hex
        self.kick = asyncio.Event()
        self.on_settled = on_settled
        self._semaphore = asyncio.Semaphore(concurrency)
        self._active: set[str] = set()
        self._tasks: set[asyncio.Task[str]] = set()

    # -------------------------------------------------------------- loops

    async def run(self) -> None:
        """Send what is due whenever kicked, and at least twice a second."""
        delay = 0.5
        while True:
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.kick.wait(), 0.5)
                self.kick.clear()
                await self.pump()
                delay = 0.5
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("sender loop failed, retrying", error=repr(exc), retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def keep_alive(self, every: float = 1.0) -> None:
        """Heartbeat, and recover claims left by instances that died."""
        while True:
            try:
                await self.store.heartbeat(self.instance_id)
                await self.recover_abandoned()
                m.DUE_NOTIFICATIONS.set(await self.store.due_count())
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("sender heartbeat failed", error=repr(exc))
            await asyncio.sleep(every)

    async def pump(self) -> int:
        """Start sending every due notification not already on its way; returns how many."""
        due = await self.store.due_notifications(time.time(), 200)
        started = 0
        for notification_id in due:
            if notification_id in self._active:
                continue
            self._active.add(notification_id)
            task = asyncio.create_task(self._deliver_and_forget(notification_id))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            started += 1
        return started

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
            record = await self.store.claim(notification_id, time.time(), claim,
                                            self.instance_id)
            if record is None:
                return "not_due"
            outcome = await self._send(record, claim)
            if self.on_settled is not None:
                self.on_settled.set()
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
                                     at=datetime.now(UTC), notification_id=notification_id))
            if contact is None:
                return await self._finish(record, claim, "cancelled", channel_kind,
                                          "no contact details on file (erased, expired or "
                                          "never given)")
            channel_kind, address = contact["channel"], contact.get("address") or None
        channel = self.channels.get(channel_kind)
        if channel is None:
            return await self._not_delivered(
                record, claim, channel_kind, f"no {channel_kind} channel is configured", True)
        message = Outgoing(notification_id=notification_id, kind=kind,
                           subject=record.get("subject", ""), text=record.get("text", ""),
                           address=address,
                           payload=orjson.loads(record["payload"]) if record.get("payload")
                           else {})
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
        now = datetime.now(UTC)
        await self.store.settle(notification_id, claim, "sent",
                                fields={"sent_at": now.isoformat(),
                                        "finished_at": now.isoformat(), "channel": channel_kind,
                                        "last_error": ""},
                                events=[records.sent_event(record, channel_kind, now)])
        m.DELIVERIES.labels(channel_kind, kind, "sent").inc()
        log.info("notification sent", notification_id=notification_id, kind=kind,
                 channel=channel_kind, attempts=record.get("attempts"))
        return "sent"

    async def _not_delivered(self, record: dict[str, str], claim: str, channel: str,
                             reason: str, permanent: bool) -> str:
        attempts = int(record.get("attempts", "1"))
        if not permanent and attempts < self.max_attempts:
            wait = backoff_seconds(attempts, self.retry_base, self.retry_max)
            await self.store.settle(record["notification_id"], claim, "retrying",
                                    fields={"last_error": reason, "channel": channel},
                                    next_at=time.time() + wait)
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
        now = datetime.now(UTC)
        events: list[bytes] = []
        if status in ("failed", "unconfirmed"):
            events = records.failed_events(record, channel, now, reason,
                                           "failed" if status == "failed" else "unconfirmed",
                                           self.notifications_topic)
            log.warning("notification not delivered", notification_id=record["notification_id"],
                        status=status, reason=reason, attempts=record.get("attempts"))
        await self.store.settle(record["notification_id"], claim, status,
                                fields={"finished_at": now.isoformat(), "last_error": reason,
                                        "channel": channel}, events=events)
        m.DELIVERIES.labels(channel, record["kind"], status).inc()
        return status

    # -------------------------------------------------------------- recovery

    async def recover_abandoned(self) -> int:
        """Settle claims whose sender died (or hung far past its timeout)."""
        recovered = 0
        now = time.time()
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
                record, channel, datetime.now(UTC),
                "the sender stopped while the channel had the message", "unconfirmed",
                self.notifications_topic)
            outcome = await self.store.recover(notification_id, record.get("claim", ""), now,
                                               events)
            if outcome == 2:
                m.DELIVERIES.labels(channel, record["kind"], "unconfirmed").inc()
                log.warning("abandoned send marked unconfirmed", notification_id=notification_id)
            elif outcome == 1:
                log.info("abandoned send tried again", notification_id=notification_id)
                self.kick.set()
            recovered += 1 if outcome else 0
        return recovered


class OutboxPublisher:
    """Publishes the Redis outbox to Kafka, in order, one drainer at a time."""

    def __init__(self, runtime: ServiceRuntime, store: NotificationStore,
                 topics: Mapping[str, str]) -> None:
        self.runtime = runtime
        self.store = store
        self.topics = dict(topics)
        self.kick = asyncio.Event()

    async def run(self) -> None:
        delay = 0.5
        while True:
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.kick.wait(), 0.5)
                self.kick.clear()
                if self.runtime.kafka_started:
                    await self.drain()
                delay = 0.5
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("outbox publisher failed, retrying", error=repr(exc), retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def drain(self) -> int:
        """Publish everything waiting; returns how many events went out."""
        total = 0
        while True:
            taken = await self.store.outbox_batch(200)
            if taken is None:
                break
            token, entries = taken
            published = 0
            try:
                for raw in entries:
                    entry = orjson.loads(raw)
                    key = entry["key"]
                    await self.runtime.broker.publish(
                        entry["value"].encode(), self.topics[entry["topic"]],
                        key=key.encode() if key else None)
                    published += 1
            finally:
                await self.store.release_outbox(token, published)
            total += published
        m.OUTBOX_EVENTS.set(await self.store.outbox_length())
        return total
