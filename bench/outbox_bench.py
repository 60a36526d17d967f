"""The outbox relay (``shared.outbox``): how fast a backlog drains to a real broker.

Every service relays what its consumers decided (dead letters, and for the notifier every
notification, nurse alert, audit record and told range) through a Redis outbox. The
relay hands a batch to the producer whole and then awaits the confirmations
(``ServiceRuntime.send``); the baseline, in the same run on the same broker, Redis and
topic, is the same relay with each record's confirmation awaited before the next is
handed over, as every relay did before (one produce round trip per record). Runs
alternate, so a machine busy with other work weighs on both alike.

    BENCH_ONLY=outbox make bench
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Awaitable
from typing import Any

from shared.admin import ensure_topics
from shared.outbox import Outbox, OutboxRelay, Send, outbox_entry
from shared.service import ServiceRuntime
from shared.settings import CommonSettings
from shared.topics import NOTIFICATIONS, topic_name


def one_at_a_time(send: Send) -> Send:
    """The baseline: each record confirmed before the next is handed over."""

    async def awaited(value: bytes, to: str, key: bytes | None) -> Awaitable[Any]:
        confirmation = await send(value, to, key)
        await confirmation
        return confirmation

    return awaited


async def drain_rate(runtime: ServiceRuntime, send: Send, topic: str, entries: int,
                     clinics: int) -> float:
    """Entries per second a relay publishes a backlog of ``entries`` (a notification's
    size, keyed by ``clinics`` clinics) with, from the first take to an empty outbox."""
    outbox = Outbox(runtime.redis, f"bench-outbox-{uuid.uuid4().hex[:8]}")
    value = (b'{"event_type": "notification.sent", "clinic_id": "c000", "data": {"channel": '
             b'"sms", "template": "delay", "visit_id": "' + b"v" * 24 + b'"}}')
    pipe = runtime.redis.pipeline(transaction=True)
    outbox.queue(pipe, [outbox_entry("notifications", f"c{n % clinics:03d}", value)
                        for n in range(entries)])
    await pipe.execute()
    relay = OutboxRelay(outbox, send, {"notifications": topic}, service="bench")
    began = time.perf_counter()
    published = await relay.tick()
    elapsed = time.perf_counter() - began
    assert published == entries and await outbox.length() == 0, "the backlog did not drain"
    return entries / elapsed


async def outbox(bootstrap: str, redis_url: str, *, entries: int = 10_000, clinics: int = 50,
                 runs: int = 3) -> dict[str, Any]:
    prefix = f"o{uuid.uuid4().hex[:6]}."
    await ensure_topics(bootstrap, prefix)
    topic = topic_name(NOTIFICATIONS, prefix)
    runtime = ServiceRuntime(CommonSettings(kafka_bootstrap=bootstrap, redis_url=redis_url),
                             "bench-outbox")
    await runtime.broker.start()
    batched: list[float] = []
    baseline: list[float] = []
    try:
        await drain_rate(runtime, runtime.send, topic, min(entries, 1_000), clinics)  # warm
        for _ in range(runs):
            baseline.append(await drain_rate(runtime, one_at_a_time(runtime.send), topic,
                                             entries, clinics))
            batched.append(await drain_rate(runtime, runtime.send, topic, entries, clinics))
    finally:
        await runtime.broker.stop()
        await runtime.redis.aclose()
    ratios = [round(b / a, 2) for a, b in zip(baseline, batched, strict=True)]
    return {"entries": entries, "clinics": clinics, "runs": runs,
            "batched_per_second": round(statistics.median(batched)),
            "batched_range": [round(min(batched)), round(max(batched))],
            "one_at_a_time_per_second": round(statistics.median(baseline)),
            "one_at_a_time_range": [round(min(baseline)), round(max(baseline))],
            "pair_ratios": ratios, "batched_over_one_at_a_time": statistics.median(ratios)}


def report_rows(o: dict[str, Any] | None) -> list[tuple[str, str]]:
    """The summary table's row for the outbox relay."""
    if not o:
        return []
    return [(f"outbox relay, a backlog of {o['entries']:,} to Kafka (acks=all), median of "
             f"{o['runs']}", f"{o['batched_per_second']:,} entries/s against "
             f"{o['one_at_a_time_per_second']:,} with each confirmed before the next (same "
             f"run): {o['batched_over_one_at_a_time']}x")]

