"""The Redis outbox: events a service decided in a Redis transaction, published to Kafka
afterwards, in order, at least once.

A consumer that must publish something because of what it applied (a dead letter, a
notification event, an audit record) cannot publish inside its Redis transaction. It
queues the event in the outbox *in* that transaction instead (``Outbox.queue``), so the
state change, the stored offsets and the events to publish commit together or not at
all. ``OutboxRelay.tick`` then publishes the oldest entries with ``acks=all`` and drops
them from the list. One relay drains at a time (a lock with an expiry, so a relay that
died leaves no lock behind). An entry published but not yet dropped when the relay
dies is published again by the next one: consumers of these topics take events by
``event_id`` (dead letters by topic, partition and offset).

Key layout (``P`` is the service's Redis prefix)::

    P:outbox          LIST of entries (JSON: topic role, key, value)
    P:outbox-lock     the current drainer's token (expires)
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

import orjson
from redis.asyncio import Redis

from shared.metrics import EVENTS_PUBLISHED, OUTBOX_EVENTS

# hands one record (value, topic, key) to the producer, in the order called, and returns
# its confirmation (``acks=all``) to await: ``ServiceRuntime.send``
Send = Callable[[bytes, str, bytes | None], Awaitable[Awaitable[Any]]]

# KEYS: the lock, the list; ARGV: the drainer's token, how many it published. Trims only
# while the lock is still its own: a drainer whose lock lapsed (a batch slower than the
# lock) and was taken by another must not trim what the other may not have published
_DONE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
if tonumber(ARGV[2]) > 0 then redis.call('LTRIM', KEYS[2], ARGV[2], -1) end
redis.call('DEL', KEYS[1])
return tonumber(ARGV[2])
"""


def outbox_entry(role: str, key: str | None, value: bytes) -> bytes:
    """An event waiting in the outbox: the role of its topic ("deadletter",
    "notifications", "audit", ...), its Kafka key and its bytes (UTF-8 JSON)."""
    return orjson.dumps({"topic": role, "key": key, "value": value.decode()})


class Outbox:
    """The outbox list of one service (or one consumer): what to queue, what to relay."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.key = f"{prefix}:outbox"
        self.lock_key = f"{prefix}:outbox-lock"
        self._done = redis.register_script(_DONE)

    def queue(self, pipe: Any, entries: list[bytes]) -> None:
        """Queue ``entries`` (``outbox_entry``) on a Redis pipeline inside its MULTI."""
        if entries:
            pipe.rpush(self.key, *entries)

    async def take(self, limit: int) -> tuple[str, list[bytes]] | None:
        """Take the drainer's lock and the oldest ``limit`` entries (None: someone else
        drains, or nothing waits)."""
        token = uuid.uuid4().hex
        if not await self.redis.set(self.lock_key, token, nx=True, px=15_000):
            return None
        entries: list[bytes] = await self.redis.lrange(self.key, 0, limit - 1)
        if not entries:
            await self.done(token, 0)
            return None
        return token, entries

    async def done(self, token: str, published: int) -> bool:
        """Drop the ``published`` entries (from the head) and release the lock, in one
        step and only while the lock is still ``token``'s; False when it had lapsed (the
        entries stay: published again by the next drainer, at least once, never lost)."""
        return int(await self._done(keys=[self.lock_key, self.key],
                                    args=[token, published])) >= 0

    async def length(self) -> int:
        return int(await self.redis.llen(self.key))


class OutboxRelay:
    """Publishes an outbox to Kafka: ``tick(now)`` drains what waits, and ``kick`` wakes
    the service's relay loop at once after a transaction that queued something."""

    def __init__(self, outbox: Outbox, send: Send, topics: Mapping[str, str], *,
                 service: str, batch: int = 200) -> None:
        self.outbox = outbox
        self.send = send
        self.topics = dict(topics)
        self.service = service
        self.batch = batch
        self.kick = asyncio.Event()
        self._stopping = False
        # after a refused entry, the next drains send the head alone until it goes out:
        # a batch after an entry the broker keeps refusing (too large, say) would go out
        # again at every retry, and its entries be published over and over
        self._head_only = False

    async def tick(self, _now: datetime | None = None) -> int:
        """Publish everything waiting, in order; returns how many events went out."""
        return await self._drain(lambda _total: True)

    async def _drain(self, more: Callable[[int], bool]) -> int:
        """Publish what waits, a batch (``batch`` entries) at a time, while ``more(total
        published so far)`` says to go on after a batch; returns how many went out."""
        total = 0
        try:
            while True:
                taken = await self.outbox.take(1 if self._head_only else self.batch)
                if taken is None:
                    break
                published = await self._publish(*taken)
                total += published
                if not more(total):
                    break
        finally:
            # what waits, also when a publish failed (Kafka down: the outbox grows, and
            # this gauge is how an operator sees it)
            with contextlib.suppress(Exception):
                OUTBOX_EVENTS.labels(self.service).set(await self.outbox.length())
        return total

    async def _publish(self, token: str, entries: list[bytes]) -> int:
        """Hand every entry to the producer in order, then await their confirmations, and
        drop those confirmed from the head (``Outbox.done``, also on a failure or a
        cancel); returns how many, or raises the first failure. What is not confirmed
        stays for the next drain, at least once: an entry after a failed one may have
        gone out already (consumers take these by event id)."""
        confirmations: list[asyncio.Future[Any]] = []
        roles: list[str] = []
        failure: Exception | None = None
        published = 0
        try:
            try:
                for raw in entries:
                    entry = orjson.loads(raw)
                    key = entry["key"]
                    roles.append(entry["topic"])
                    confirmations.append(asyncio.ensure_future(await self.send(
                        entry["value"].encode(), self.topics[entry["topic"]],
                        key.encode() if key else None)))
            except Exception as exc:  # not handed over: those that were are awaited
                failure = exc
            for confirmation in confirmations:
                try:
                    await confirmation
                except Exception as exc:
                    failure = failure or exc
                    break
                EVENTS_PUBLISHED.labels(self.service, roles[published]).inc()
                published += 1
        finally:
            for left in confirmations[published:]:  # a failure's or a cancel's leftovers
                left.add_done_callback(_outcome_seen)
            await self.outbox.done(token, published)
        self._head_only = failure is not None
        if failure is not None:
            raise failure
        return published

    async def run(self, every: float, ready: Callable[[], bool]) -> None:
        """Drain whenever kicked, and at least every ``every`` seconds; a failure is
        retried with a growing pause (the entries stay in Redis meanwhile). Ends after
        the batch under way when ``stop`` is called, so that ``stop`` need not cancel it
        between a publish and the trim that records it (that entry would go out twice): a
        backlog of thousands drained to its end outlasted ``stop``'s wait, and was cut (a
        single batch slower than the wait still would be). What is left waits in Redis
        for the last drain (``drain_at_shutdown``), or the next start."""
        from shared.logging import get_logger

        log = get_logger("clinicflow.outbox")
        delay = every
        pause = every
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.kick.wait(), pause)
            self.kick.clear()
            pause = every
            if self._stopping:
                break
            if not ready():
                continue
            try:
                await self._drain(lambda _total: not self._stopping)
                delay = every
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("outbox relay failed, retrying", service=self.service,
                            error=repr(exc), retry_in=delay)
                pause = delay  # a stop wakes it at once all the same
                delay = min(delay * 2, 10.0)

    async def drain_at_shutdown(self, ready: bool) -> None:
        """The last drain, once ``stop`` has ended the ``run`` loops (each after its batch
        under way): publish what waited when it began, when Kafka is up (``ready``), and no
        more (the consumers may still be queueing: a drain to an empty list could outlast
        the shutdown's grace and be cut mid-publish); the rest stays in Redis, for the next
        start."""
        from shared.logging import get_logger

        if not ready:
            return
        try:
            waiting = await self.outbox.length()
            await self._drain(lambda total: total < waiting)
        except Exception as exc:
            get_logger("clinicflow.outbox").warning(
                "outbox not drained at shutdown", service=self.service, error=repr(exc))

    async def stop(self, running: Iterable[asyncio.Task[None]],
                   timeout: float = 5.0) -> None:
        """Ask the ``run`` loops to end after the batch under way and wait for them up to
        ``timeout`` seconds (whatever is left is the caller's to cancel)."""
        self._stopping = True
        self.kick.set()
        tasks = [task for task in running if not task.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)


def _outcome_seen(future: asyncio.Future[Any]) -> None:
    """A confirmation nobody awaits any more: its outcome read, so a failure is not
    reported as never retrieved (the entry stays in the outbox for the next drain)."""
    if not future.cancelled():
        future.exception()
