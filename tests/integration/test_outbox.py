"""The outbox relay against a real Redis (and a real Kafka broker for what goes out): a
stop lets the batch under way finish, and leaves the rest for the last drain; a batch is
handed to the producer whole and trimmed as far as it is confirmed."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import orjson
import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from shared.outbox import Outbox, OutboxRelay, outbox_entry
from shared.service import ServiceRuntime
from shared.settings import CommonSettings
from tests.fakes import FakeClock
from tests.helpers import read_topic


class SlowBroker:
    """What the relay publishes to: each record handed over is confirmed once ``release``
    is set (the broker is slow to acknowledge); ``publishing`` is set by the first."""

    def __init__(self) -> None:
        self.published: list[bytes] = []
        self.publishing = asyncio.Event()
        self.release = asyncio.Event()

    async def send(self, value: bytes, _topic: str, _key: bytes | None) -> Awaitable[None]:
        self.publishing.set()
        return self._confirm(value)

    async def _confirm(self, value: bytes) -> None:
        await self.release.wait()
        self.published.append(value)


def confirmed() -> asyncio.Future[None]:
    """A confirmation already in (a record the broker took at once)."""
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    future.set_result(None)
    return future


def numbered(count: int) -> list[bytes]:
    return [f'{{"n": {n}}}'.encode() for n in range(count)]


@asynccontextmanager
async def outbox_of(redis_url: str, entries: int) -> AsyncIterator[tuple[Redis, Outbox]]:
    """A fresh outbox on the real Redis with ``entries`` numbered entries waiting; gone
    afterwards."""
    redis = Redis.from_url(redis_url)
    outbox = Outbox(redis, f"t{uuid.uuid4().hex[:8]}")
    try:
        pipe = redis.pipeline(transaction=True)
        outbox.queue(pipe, [outbox_entry("audit", "north", value)
                            for value in numbered(entries)])
        await pipe.execute()
        yield redis, outbox
    finally:
        await redis.delete(outbox.key, outbox.lock_key)
        await redis.aclose()


@asynccontextmanager
async def relay_stopped_mid_drain(redis_url: str, entries: int, batch: int
                                  ) -> AsyncIterator[tuple[OutboxRelay, SlowBroker, Outbox,
                                                           asyncio.Task[None]]]:
    """``entries`` waiting in a fresh outbox, its relay's loop publishing the first of
    them when ``stop`` is asked; yields once the stop has returned."""
    redis = Redis.from_url(redis_url)
    outbox = Outbox(redis, f"t{uuid.uuid4().hex[:8]}")
    broker = SlowBroker()
    relay = OutboxRelay(outbox, broker.send, {"audit": "audit-topic"}, service="test",
                        batch=batch)
    try:
        pipe = redis.pipeline(transaction=True)
        outbox.queue(pipe, [outbox_entry("audit", "north", value)
                            for value in numbered(entries)])
        await pipe.execute()
        running = asyncio.create_task(relay.run(60.0, ready=lambda: True))
        relay.kick.set()
        await broker.publishing.wait()  # the first entry is on its way to Kafka
        stopping = asyncio.create_task(relay.stop([running], timeout=30.0))
        await relay.kick.wait()  # the stop is asked (it wakes the loop) while the publish waits
        assert not running.done()
        broker.release.set()
        await stopping
        yield relay, broker, outbox, running
    finally:
        broker.release.set()
        await redis.delete(outbox.key, outbox.lock_key)
        await redis.aclose()


async def test_a_stop_during_a_drain_lets_it_finish_so_nothing_goes_out_twice(
    redis_url: str,
) -> None:
    async with relay_stopped_mid_drain(redis_url, 3, batch=200) as (relay, broker, outbox,
                                                                     running):
        assert running.done() and not running.cancelled()  # ended by itself
        assert broker.published == numbered(3)
        assert await outbox.length() == 0  # each one trimmed as published
        assert await relay.tick() == 0  # the next relay has nothing to send again


async def test_a_stop_with_a_backlog_ends_after_the_batch_under_way_and_the_rest_waits(
    redis_url: str,
) -> None:
    # a backlog drained to its end outlasted stop's wait and was cancelled mid-publish:
    # that event went out again with the next drain (seen as one duplicate nurse alert
    # in a few thousand when the notifier stopped with its outbox behind)
    async with relay_stopped_mid_drain(redis_url, 7, batch=2) as (relay, broker, outbox,
                                                                   running):
        assert running.done() and not running.cancelled()
        assert broker.published == numbered(2)  # its batch, and no further
        assert await outbox.length() == 5  # the rest waits in Redis
        await relay.drain_at_shutdown(ready=False)  # Kafka down: kept for the next start
        assert await outbox.length() == 5
        await relay.drain_at_shutdown(ready=True)  # the last drain sends it, each once
        assert broker.published == numbered(7)
        assert await outbox.length() == 0


async def test_a_drainer_whose_lock_lapsed_trims_nothing_so_nothing_is_lost(
    redis_url: str,
) -> None:
    # a batch slower than the lock (15 s): another instance's relay takes the lock and the
    # same head; the late one trimmed as many again, entries nobody had published
    async with outbox_of(redis_url, 4) as (redis, outbox):
        late = await outbox.take(2)
        assert late is not None
        await redis.delete(outbox.lock_key)  # its lock lapsed while it published
        other = await outbox.take(2)
        assert other is not None and other[1] == late[1]
        assert await outbox.done(other[0], 2)
        assert not await outbox.done(late[0], 2)  # lapsed: trims nothing
        assert await outbox.length() == 2  # the two nobody has published yet


async def test_the_last_drain_sends_what_waited_when_it_began_not_what_keeps_coming(
    redis_url: str,
) -> None:
    # at shutdown the consumers still queue: a drain to an empty list could run past the
    # grace period and be cut between a publish and its trim
    async with outbox_of(redis_url, 3) as (redis, outbox):
        published: list[bytes] = []

        async def send(value: bytes, _topic: str, _key: bytes | None) -> Awaitable[None]:
            published.append(value)
            if len(published) <= 5:  # each publish, another entry queued behind
                pipe = redis.pipeline(transaction=True)
                outbox.queue(pipe, [outbox_entry("audit", "north", b'{"later": true}')])
                await pipe.execute()
            return confirmed()

        relay = OutboxRelay(outbox, send, {"audit": "audit-topic"}, service="test", batch=1)
        await relay.drain_at_shutdown(ready=True)
        assert published == numbered(3)
        assert await outbox.length() == 3  # queued meanwhile: the next start sends them


async def test_what_waits_is_shown_also_when_kafka_refuses_a_publish(redis_url: str) -> None:
    # the outbox gauge was set only after a drain that went through: with Kafka down the
    # outbox grew and the gauge kept showing it empty
    from prometheus_client import REGISTRY

    async with outbox_of(redis_url, 3) as (_redis, outbox):
        service = f"test-{uuid.uuid4().hex[:6]}"

        async def refused(_value: bytes, _topic: str, _key: bytes | None) -> Awaitable[None]:
            raise ConnectionError("Kafka is unreachable")

        relay = OutboxRelay(outbox, refused, {"audit": "audit-topic"}, service=service)
        with pytest.raises(ConnectionError):
            await relay.tick()
        assert REGISTRY.get_sample_value("clinicflow_outbox_events", {"service": service}) == 3
        assert await outbox.length() == 3


async def test_a_batch_is_handed_over_whole_and_trimmed_as_far_as_it_is_confirmed(
    redis_url: str,
) -> None:
    # one produce request for a batch, not a round trip to the broker per entry: every
    # entry is handed to the producer before any confirmation is awaited; a failed
    # confirmation keeps it and what follows it (the next drain sends them again)
    async with outbox_of(redis_url, 5) as (redis, outbox):
        handed: list[asyncio.Future[None]] = []
        all_handed = asyncio.Event()

        async def send(_value: bytes, _topic: str, _key: bytes | None) -> Awaitable[None]:
            handed.append(asyncio.get_running_loop().create_future())
            if len(handed) == 5:
                all_handed.set()
            return handed[-1]

        relay = OutboxRelay(outbox, send, {"audit": "audit-topic"}, service="test")
        draining = asyncio.create_task(relay.tick())
        # the whole batch, while no confirmation has come (a relay awaiting each one
        # would wait here for ever: bounded)
        await asyncio.wait_for(all_handed.wait(), 10)
        assert not draining.done()
        handed[0].set_result(None)
        handed[1].set_result(None)
        handed[2].set_exception(ConnectionError("the broker refused it"))
        handed[3].set_result(None)  # went out, but after one that did not: sent again
        handed[4].set_exception(ConnectionError("the broker refused it"))
        with pytest.raises(ConnectionError):
            await draining
        waiting = [orjson.loads(raw)["value"].encode()
                   for raw in await redis.lrange(outbox.key, 0, -1)]
        assert waiting == numbered(5)[2:]  # the two confirmed from the head are dropped
        assert await redis.exists(outbox.lock_key) == 0  # and the lock released


@asynccontextmanager
async def relay_to_kafka(redis_url: str, kafka_bootstrap: str, topic: str, queued: list[bytes],
                         clock: FakeClock | None = None
                         ) -> AsyncIterator[tuple[OutboxRelay, Outbox, Redis]]:
    """The relay as the services run it (ServiceRuntime.send: handed over without waiting,
    confirmed with acks=all) to a real broker, role ``audit`` on ``topic``, with ``queued``
    waiting in a fresh outbox; gone afterwards."""
    runtime = ServiceRuntime(CommonSettings(kafka_bootstrap=kafka_bootstrap,
                                            redis_url=redis_url), "outbox-test")
    outbox = Outbox(runtime.redis, f"t{uuid.uuid4().hex[:8]}")
    try:
        await runtime.broker.start()
        pipe = runtime.redis.pipeline(transaction=True)
        outbox.queue(pipe, queued)
        await pipe.execute()
        yield (OutboxRelay(outbox, runtime.send, {"audit": topic}, service="outbox-test",
                           clock=clock), outbox, runtime.redis)
    finally:
        await runtime.redis.delete(outbox.key, outbox.lock_key, outbox.parked_key)
        await runtime.broker.stop()
        await runtime.redis.aclose()


async def test_a_backlog_goes_out_through_a_real_broker_in_order_each_once(
    redis_url: str, kafka_bootstrap: str, topics: dict[str, str],
) -> None:
    # read back with an independent consumer
    topic = topics["clinicflow.notifications.v1"]
    values = numbered(1_000)
    async with relay_to_kafka(redis_url, kafka_bootstrap, topic, [
            outbox_entry("audit", ("north", "south")[n % 2], value)
            for n, value in enumerate(values)]) as (relay, outbox, _redis):
        assert await relay.tick() == 1_000  # five batches of 200
        assert await outbox.length() == 0
        records = await read_topic(kafka_bootstrap, topic, expect=1_000)
        for key in (b"north", b"south"):  # one partition per key: its order kept
            assert [r.value for r in records if r.key == key] == values[key == b"south"::2]


async def test_after_a_refused_entry_the_head_goes_alone_until_it_is_taken(
    redis_url: str,
) -> None:
    # an entry the broker refuses for a while (its leader moving, say): the batch
    # behind it went out again at every retry, published over and over
    async with outbox_of(redis_url, 5) as (_redis, outbox):
        handed: list[bytes] = []
        refusals = [2]  # the head is refused at its first two tries

        async def send(value: bytes, _topic: str, _key: bytes | None) -> Awaitable[None]:
            handed.append(value)
            outcome: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            if value == numbered(5)[0] and refusals[0]:
                refusals[0] -= 1
                outcome.set_exception(ConnectionError("record too large"))
            else:
                outcome.set_result(None)
            return outcome

        relay = OutboxRelay(outbox, send, {"audit": "audit-topic"}, service="test")
        with pytest.raises(ConnectionError):
            await relay.tick()
        assert handed == numbered(5)  # the batch went out behind the refused head
        with pytest.raises(ConnectionError):
            await relay.tick()
        assert handed == [*numbered(5), numbered(5)[0]]  # the head alone
        assert await relay.tick() == 5  # taken: whole batches again
        assert handed == [*numbered(5), numbered(5)[0], *numbered(5)]
        assert await outbox.length() == 0


@pytest.mark.reliability(
    "an outbox entry Kafka refuses for good (larger than a record may be) or that is not an "
    "entry at all, with entries queued behind it",
    "it is parked whole with the reason and counted; the entries behind it go out in order "
    "through a real broker in the same drain, each once; put back, it is parked again",
)
async def test_an_entry_refused_for_good_is_parked_and_the_entries_behind_it_go_out(
    redis_url: str, kafka_bootstrap: str, topics: dict[str, str],
) -> None:
    topic = topics["clinicflow.audit.v1"]
    at = datetime(2026, 3, 2, 14, 0, tzinfo=UTC)
    large = orjson.dumps({"n": "large", "pad": "x" * 1_100_000})  # over Kafka's 1 MB
    ok = numbered(4)
    queued = [outbox_entry("audit", "north", ok[0]), outbox_entry("audit", "north", large),
              outbox_entry("audit", "north", ok[1]), b"not an entry",
              outbox_entry("audit", "north", ok[2]), outbox_entry("audit", "north", ok[3])]
    parked_before = parked_count("outbox-test")
    async with relay_to_kafka(redis_url, kafka_bootstrap, topic, queued,
                              clock=FakeClock(at)) as (relay, outbox, redis):
        assert await relay.tick() == 4
        assert await outbox.length() == 0
        parked = await outbox.parked()
        assert [p["entry"].encode() for p in parked] == [queued[1], queued[3]]
        assert "TooLarge" in parked[0]["reason"] and "not an outbox entry" in parked[1]["reason"]
        assert {p["parked_at"] for p in parked} == {at.isoformat()}
        assert parked_count("outbox-test") == parked_before + 2
        records = await read_topic(kafka_bootstrap, topic, expect=4)
        assert [r.value for r in records] == ok  # in order, each once, none of the parked
        # docs/operations.md's way back: the oldest parked entry to the end of the outbox;
        # refused again, it is parked again
        assert await redis.eval(PUT_BACK, 2, outbox.parked_key, outbox.key) == (
            parked[0]["reason"].encode())
        assert await redis.lrange(outbox.key, 0, -1) == [queued[1]]
        assert await relay.tick() == 0
        assert [p["entry"].encode() for p in await outbox.parked()] == [queued[3], queued[1]]


# docs/operations.md, ClinicflowOutboxEntryParked, step 3
PUT_BACK = ("local e = cjson.decode(redis.call('LINDEX', KEYS[1], 0)) "
            "redis.call('RPUSH', KEYS[2], e.entry) redis.call('LPOP', KEYS[1]) return e.reason")


# docs/operations.md, ClinicflowOutboxStuck, step 2
PARK_BY_HAND = ("local e = redis.call('LINDEX', KEYS[1], 0) redis.call('RPUSH', KEYS[2], "
                "cjson.encode({entry = e, reason = 'unknown role, parked by hand'})) "
                "redis.call('LPOP', KEYS[1]) return e")


def parked_count(service: str) -> float:
    return REGISTRY.get_sample_value("clinicflow_outbox_parked_total",
                                     {"service": service}) or 0.0


async def test_an_entry_for_a_topic_role_this_version_does_not_know_waits_at_the_head(
    redis_url: str,
) -> None:
    # a newer version queued it during a rolling deploy: its own relay publishes it
    async with outbox_of(redis_url, 0) as (redis, outbox):
        pipe = redis.pipeline(transaction=True)
        outbox.queue(pipe, [outbox_entry("future", "north", b'{"n": 0}')])
        await pipe.execute()
        relay = OutboxRelay(outbox, SlowBroker().send, {"audit": "audit-topic"},
                            service="test")
        with pytest.raises(LookupError, match="'future'"):
            await relay.tick()
        assert await outbox.length() == 1 and await outbox.parked() == []
        # docs/operations.md, ClinicflowOutboxStuck, step 2: parked by hand after a rollback
        await redis.eval(PARK_BY_HAND, 2, outbox.key, outbox.parked_key)
        assert await outbox.length() == 0
        assert [p["reason"] for p in await outbox.parked()] == ["unknown role, parked by hand"]
        await redis.delete(outbox.parked_key)


async def test_an_entry_whose_key_or_role_is_not_text_is_parked_not_retried(
    redis_url: str,
) -> None:
    async with outbox_of(redis_url, 0) as (redis, outbox):
        pipe = redis.pipeline(transaction=True)
        outbox.queue(pipe, [b'{"topic": "audit", "key": 5, "value": "{}"}',
                            b'{"topic": ["audit"], "key": null, "value": "{}"}'])
        await pipe.execute()
        broker = SlowBroker()
        broker.release.set()
        relay = OutboxRelay(outbox, broker.send, {"audit": "audit-topic"}, service="test")
        assert await relay.tick() == 0
        assert await outbox.length() == 0 and len(await outbox.parked()) == 2
        await redis.delete(outbox.parked_key)
