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

An entry refused for good (larger than Kafka takes, not readable as an entry) would stop
every entry behind it for ever: it is moved aside, whole, to the parked list with the
reason (``clinicflow_outbox_parked_total`` counts it, the ``ClinicflowOutboxEntryParked``
alert fires, docs/operations.md says what to do), and the entries behind it go out.
Anything else (Kafka down, a leader moving, a timeout, a topic role this version does not
know) keeps the entry at the head, retried.

Key layout (``P`` is the service's Redis prefix)::

    P:outbox          LIST of entries (JSON: topic role, key, value)
    P:outbox-lock     the current drainer's token (expires)
    P:outbox-parked   LIST of entries refused for good (JSON: entry, reason, parked_at)
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

import orjson
from aiokafka.errors import MessageSizeTooLargeError, RecordTooLargeError
from redis.asyncio import Redis

from shared.clock import Clock, SystemClock
from shared.metrics import EVENTS_PUBLISHED, OUTBOX_EVENTS, OUTBOX_PARKED

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
# KEYS: the lock, the list, the parked list; ARGV: a token, the entry, what to park. Moves
# the head aside only if it is still that entry, and only while no drainer holds the lock
_PARK = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', 15000) then return -1 end
local parked = 0
if redis.call('LINDEX', KEYS[2], 0) == ARGV[2] then
  redis.call('RPUSH', KEYS[3], ARGV[3])  -- kept before it leaves: a failed step loses nothing
  redis.call('LPOP', KEYS[2])
  parked = 1
end
redis.call('DEL', KEYS[1])
return parked
"""
# what the producer or the broker says of a record that no retry will get through (a
# corrupt record is a checksum that may pass the next time: retried)
REFUSED_FOR_GOOD = (MessageSizeTooLargeError, RecordTooLargeError)


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
        self.parked_key = f"{prefix}:outbox-parked"
        self._done = redis.register_script(_DONE)
        self._park = redis.register_script(_PARK)

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

    async def park(self, entry: bytes, reason: str, at: datetime) -> bool:
        """Move ``entry`` from the head to the parked list with ``reason``; False when it
        is no longer the head or a drainer holds the lock (nothing moved)."""
        record = orjson.dumps({"entry": entry.decode(errors="replace"), "reason": reason,
                               "parked_at": at.isoformat()})
        return int(await self._park(keys=[self.lock_key, self.key, self.parked_key],
                                    args=[uuid.uuid4().hex, entry, record])) == 1

    async def parked(self) -> list[dict[str, str]]:
        """The entries parked so far, oldest first."""
        return [orjson.loads(raw) for raw in await self.redis.lrange(self.parked_key, 0, -1)]


class OutboxRelay:
    """Publishes an outbox to Kafka: ``tick(now)`` drains what waits, and ``kick`` wakes
    the service's relay loop at once after a transaction that queued something."""

    def __init__(self, outbox: Outbox, send: Send, topics: Mapping[str, str], *,
                 service: str, batch: int = 200, clock: Clock | None = None) -> None:
        self.outbox = outbox
        self.send = send
        self.topics = dict(topics)
        self.service = service
        self.batch = batch
        self.clock = clock or SystemClock()
        self.kick = asyncio.Event()
        self._stopping = False
        # how many entries to send one at a time from the head. After a failed entry, the
        # head alone until it goes out: a batch after an entry the broker keeps refusing
        # (a leader moving, say) would go out again at every retry, published over and
        # over. After a batch refused as too large (the broker refuses a produce request
        # whole, not the one record), the rest of that batch one by one: the one that is
        # refused alone is the one to park
        self._alone = 0

    async def tick(self, now: datetime | None = None) -> int:
        """Publish everything waiting, in order; returns how many events went out."""
        return await self._drain(lambda _total: True, now)

    async def _drain(self, more: Callable[[int], bool], now: datetime | None = None) -> int:
        """Publish what waits, a batch (``batch`` entries) at a time, while ``more(total
        published so far)`` says to go on after a batch; returns how many went out. An
        entry refused for good is parked and the drain goes on behind it; any other
        failure is raised (the entry stays at the head)."""
        total = 0
        try:
            while True:
                taken = await self.outbox.take(1 if self._alone else self.batch)
                if taken is None:
                    break
                published, refused = await self._publish(*taken)
                total += published
                if refused is None:
                    self._alone = max(self._alone - published, 0)
                    if not more(total):
                        break
                    continue
                entry, failure = refused
                if isinstance(failure, _RefusedForGood):
                    self._alone = max(self._alone - 1, 0)
                    await self._park(entry, failure.reason, now or self.clock.now())
                elif isinstance(failure, REFUSED_FOR_GOOD):  # in a batch: which one?
                    self._alone = len(taken[1]) - published
                else:
                    self._alone = max(self._alone, 1)
                    raise failure
        finally:
            # what waits, also when a publish failed (Kafka down: the outbox grows, and
            # this gauge is how an operator sees it)
            with contextlib.suppress(Exception):
                OUTBOX_EVENTS.labels(self.service).set(await self.outbox.length())
        return total

    async def _park(self, entry: bytes, reason: str, now: datetime) -> None:
        if await self.outbox.park(entry, reason, now):
            from shared.logging import get_logger

            OUTBOX_PARKED.labels(self.service).inc()
            get_logger("clinicflow.outbox").error(
                "outbox entry refused for good: parked, the entries behind it go on",
                service=self.service, reason=reason, parked=self.outbox.parked_key)

    async def _publish(self, token: str, entries: list[bytes]
                       ) -> tuple[int, tuple[bytes, Exception] | None]:
        """Hand every entry to the producer in order, then await their confirmations, and
        drop those confirmed from the head (``Outbox.done``, also on a failure or a
        cancel). Returns how many, and the first entry that failed with its failure (it
        is the head now; ``_RefusedForGood`` when no retry would get it through). What is
        not confirmed stays for the next drain, at least once: an entry after a failed one
        may have gone out already (consumers take these by event id)."""
        confirmations: list[asyncio.Future[Any]] = []
        roles: list[str] = []
        # the broker refuses a produce request whole: only an entry sent alone is known to
        # be the one it cannot take (the others of a batch go again, the head alone first)
        alone = len(entries) == 1
        not_handed: Exception | None = None
        failure: Exception | None = None
        published = 0
        try:
            try:
                for raw in entries:
                    value, topic, key, role = self._record(raw)
                    confirmations.append(asyncio.ensure_future(await self.send(
                        value, topic, key)))
                    roles.append(role)
            except Exception as exc:  # not handed over: those that were are awaited
                not_handed = _for_good(exc, alone)
            for confirmation in confirmations:
                try:
                    await confirmation
                except Exception as exc:
                    failure = _for_good(exc, alone)
                    break
                EVENTS_PUBLISHED.labels(self.service, roles[published]).inc()
                published += 1
        finally:
            for left in confirmations[published:]:  # a failure's or a cancel's leftovers
                left.add_done_callback(_outcome_seen)
            await self.outbox.done(token, published)
        failure = failure or not_handed
        return published, None if failure is None else (entries[published], failure)

    def _record(self, raw: bytes) -> tuple[bytes, str, bytes | None, str]:
        """An entry's value, topic, key and topic role; ``_RefusedForGood`` when it is not
        an entry at all. A topic role this relay does not know is retried, not parked: a
        newer version of the service may have queued it during a rolling deploy, and its
        own relay will publish it."""
        try:
            entry = orjson.loads(raw)
            key, role, value = entry["key"], entry["topic"], entry["value"].encode()
            if not isinstance(role, str) or not isinstance(key, str | None):
                raise TypeError(f"topic role {role!r} and key {key!r}: not text")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise _RefusedForGood(f"not an outbox entry: {exc!r}") from exc
        if role not in self.topics:
            raise LookupError(f"outbox entry for topic role {role!r}, which this relay does "
                              f"not publish (it knows {sorted(self.topics)})")
        return value, self.topics[role], key.encode() if key else None, role

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


class _RefusedForGood(Exception):
    """An entry no retry will get through, with the reason it is parked for."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _for_good(exc: Exception, alone: bool) -> Exception:
    """``exc`` as a ``_RefusedForGood`` when it says a record sent ``alone`` can never be
    taken (too large, corrupt); else as it is (retried)."""
    if alone and isinstance(exc, REFUSED_FOR_GOOD):
        return _RefusedForGood(f"refused by Kafka: {exc!r}")
    return exc


def _outcome_seen(future: asyncio.Future[Any]) -> None:
    """A confirmation nobody awaits any more: its outcome read, so a failure is not
    reported as never retrieved (the entry stays in the outbox for the next drain)."""
    if not future.cancelled():
        future.exception()
