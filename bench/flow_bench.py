"""Flow benchmarks: throughput against a bare consumer, event-to-screen latency,
recovery after a Redis flush, memory as history grows. Results are data: nothing
here asserts a time."""

from __future__ import annotations

import asyncio
import gc
import os
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from redis.asyncio import Redis

from bench.common import consumer_records, floor_records, preload, stored_offsets
from services.flow.processor import FloorProcessor, floor_reader
from shared import events as ev
from shared.admin import ensure_topics
from shared.runner import GC_THRESHOLDS
from tests.helpers import ServiceProcess

FLOOR = "clinicflow.floor.v1"


def _env(bootstrap: str, redis_url: str, prefix: str, **extra: Any) -> dict[str, str]:
    env = {
        "CLINICFLOW_KAFKA_BOOTSTRAP": bootstrap,
        "CLINICFLOW_REDIS_URL": redis_url,
        "CLINICFLOW_TOPIC_PREFIX": prefix,
        "CLINICFLOW_REDIS_PREFIX": prefix.rstrip("."),
        "CLINICFLOW_FLOW_GROUP_ID": f"{prefix}flow",
        "CLINICFLOW_FLOW_TICK_SECONDS": "3600",
        # checkpoints at the service's own pace (1 s; once a backlog is read, at once)
        "CLINICFLOW_LOG_LEVEL": "WARNING",
        "CLINICFLOW_LOG_FORMAT": "json",
    }
    env.update({f"CLINICFLOW_{k.upper()}": str(v) for k, v in extra.items()})
    return env


async def _checkpointed(redis: Redis, prefix: str) -> int:
    """Events flow has applied and checkpointed, read from its Redis checkpoint."""
    return await stored_offsets(redis, f"{prefix.rstrip('.')}:flow:offset:*")


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def bare_consumer(bootstrap: str, topic: str, expected: int) -> float:
    """Events/s of a plain aiokafka consumer that only reads and decodes JSON. It joins a
    consumer group as flow does (so it pays the same join, and the broker's group
    coordinator is up before flow is timed)."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap,
                                group_id=f"{topic}.bare-consumer",
                                auto_offset_reset="earliest", enable_auto_commit=False,
                                max_partition_fetch_bytes=4 * 1024 * 1024)
    await consumer.start()
    seen = 0
    started = time.perf_counter()
    try:
        while seen < expected:
            batch = await consumer.getmany(timeout_ms=500, max_records=5000)
            for records in batch.values():
                for record in records:
                    orjson.loads(record.value)
                    seen += 1
    finally:
        elapsed = time.perf_counter() - started
        await consumer.stop()
    return seen / elapsed


def clinic_days(clinics: int, events: int, seed: int = 1) -> list[tuple[bytes, bytes]]:
    """Successive simulated days of the same ``clinics`` clinics, cut at ``events`` records
    (a cut day leaves its visits open, as a topic read mid-day does)."""
    records: list[tuple[bytes, bytes]] = []
    day = 0
    while len(records) < events:
        one_day = floor_records(clinics, seed=seed + day)
        records.extend(_shift_days(one_day, day) if day else one_day)
        day += 1
    return records[:events]


async def flow_throughput(bootstrap: str, redis_url: str, workdir: Path,
                          clinics: int = 500, events: int = 500_000,
                          runs: int = 3) -> dict[str, Any]:
    """Preload ``events`` floor events of ``clinics`` clinics (successive days); time flow
    from process start to all applied, and a bare consumer on the same topic, ``runs``
    times each, alternating (a shared machine's noise shows as the range; the median is
    the figure)."""
    prefix = f"b{uuid.uuid4().hex[:6]}."
    await ensure_topics(bootstrap, prefix)
    topic = prefix + FLOOR
    records = clinic_days(clinics, events)
    await preload(bootstrap, topic, records)
    bares: list[float] = []
    rates: list[float] = []
    runs_seen: list[dict[str, Any]] = []
    for run in range(runs):
        bares.append(await bare_consumer(bootstrap, topic, len(records)))
        # a fresh group and Redis space each run: every run rebuilds from the beginning
        space = f"{prefix}run{run}."
        service = ServiceProcess("flow", _env(bootstrap, redis_url, prefix,
                                              flow_publish_estimates="false",
                                              redis_prefix=space.rstrip("."),
                                              flow_group_id=f"{space}flow"),
                                 workdir / f"flow-throughput-{run}.log")
        started = time.perf_counter()
        redis = Redis.from_url(redis_url)
        service.start()
        try:
            await service.wait_ready(120)
            ready = time.perf_counter() - started
            while await _checkpointed(redis, space) < len(records):
                await asyncio.sleep(0.1)
            elapsed = time.perf_counter() - started
            assert service.process is not None
            rss = _rss_mib(service.process.pid)
        finally:
            service.stop()
            await redis.aclose()
        rates.append(len(records) / elapsed)
        runs_seen.append({"flow_events_per_second": round(rates[-1]),
                          "flow_seconds": round(elapsed, 2),
                          "flow_seconds_to_ready": round(ready, 2),
                          "flow_rss_mib_after": round(rss, 1),
                          "bare_consumer_events_per_second": round(bares[-1])})
    rate, bare = statistics.median(rates), statistics.median(bares)
    return {
        "events": len(records),
        "clinics": clinics,
        "runs": runs,
        "flow_events_per_second": round(rate),
        "flow_events_per_second_range": [round(min(rates)), round(max(rates))],
        "flow_seconds": round(len(records) / rate, 2),
        "flow_seconds_to_ready": statistics.median(r["flow_seconds_to_ready"]
                                                   for r in runs_seen),
        "bare_consumer_events_per_second": round(bare),
        "bare_over_flow_ratio": round(bare / rate, 2),
        "flow_rss_mib_after": max(r["flow_rss_mib_after"] for r in runs_seen),
        "each_run": runs_seen,
    }


async def recovery(bootstrap: str, redis_url: str, workdir: Path,
                   clinics: int = 600) -> dict[str, Any]:
    """Rebuild time after Redis is flushed, and kill -9 to correct boards again."""
    prefix = f"r{uuid.uuid4().hex[:6]}."
    await ensure_topics(bootstrap, prefix)
    topic = prefix + FLOOR
    records = floor_records(clinics)
    await preload(bootstrap, topic, records)
    env = _env(bootstrap, redis_url, prefix, flow_publish_estimates="false")
    service = ServiceProcess("flow", env, workdir / "flow-recovery.log")
    redis = Redis.from_url(redis_url)
    result: dict[str, Any] = {"events": len(records), "clinics": clinics}
    try:
        service.start()
        await service.wait_ready(120)
        while await _checkpointed(redis, prefix) < len(records):
            await asyncio.sleep(0.1)
        probe = records[-1][0].decode()
        async with httpx.AsyncClient() as client:
            want = (await client.get(f"{service.url}/clinics/{probe}/board",
                                     headers={"Authorization": "Bearer dev-manager"})).json()
        service.stop()
        keys = [k async for k in redis.scan_iter(f"{prefix.rstrip('.')}:*")]
        if keys:
            await redis.delete(*keys)
        started = time.perf_counter()
        service.start()
        while await _checkpointed(redis, prefix) < len(records):
            await asyncio.sleep(0.05)
        result["rebuild_seconds"] = round(time.perf_counter() - started, 2)
        # kill -9 and time until the board is served right again
        service.kill()
        started = time.perf_counter()
        service.start()
        async with httpx.AsyncClient() as client:
            while True:
                try:
                    got = await client.get(f"{service.url}/clinics/{probe}/board",
                                           headers={"Authorization": "Bearer dev-manager"},
                                           timeout=2)
                    if got.status_code == 200 and got.json()["waiting"] == want["waiting"]:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.05)
        result["kill9_to_correct_board_seconds"] = round(time.perf_counter() - started, 2)
    finally:
        service.stop()
        await redis.aclose()
    return result


async def memory_growth(bootstrap: str, redis_url: str, workdir: Path,
                        steps: tuple[int, ...] = (100_000, 1_000_000, 3_000_000),
                        clinics: int = 250) -> dict[str, Any]:
    """Resident memory of flow after successive days of history on the same clinics."""
    prefix = f"m{uuid.uuid4().hex[:6]}."
    await ensure_topics(bootstrap, prefix)
    topic = prefix + FLOOR
    service = ServiceProcess("flow", _env(bootstrap, redis_url, prefix,
                                          flow_publish_estimates="false"),
                             workdir / "flow-memory.log")
    redis = Redis.from_url(redis_url)
    service.start()
    samples: list[dict[str, Any]] = []
    produced = 0
    day = 0
    try:
        await service.wait_ready(120)
        assert service.process is not None
        for target in steps:
            while produced < target:
                records = floor_records(clinics, seed=100 + day)
                day += 1
                shifted = _shift_days(records, day)
                await preload(bootstrap, topic, shifted)
                produced += len(shifted)
            while await _checkpointed(redis, prefix) < produced:
                await asyncio.sleep(0.2)
            samples.append({"events": produced,
                            "rss_mib": round(_rss_mib(service.process.pid), 1)})
    finally:
        service.stop()
        await redis.aclose()
    return {"clinics": clinics, "samples": samples}


def _shift_days(records: list[tuple[bytes, bytes]], days: int) -> list[tuple[bytes, bytes]]:
    """The same clinics on a later day: visit ids made unique, times moved on."""
    shifted = []
    for key, value in records:
        document = orjson.loads(value)
        document["event_id"] = uuid.uuid4().hex
        occurred = datetime.fromisoformat(document["occurred_at"]) + timedelta(days=days)
        document["occurred_at"] = occurred.isoformat()
        data = document["data"]
        for field in ("visit_id",):
            if field in data:
                data[field] = f"{data[field]}-d{days}"
        if data.get("scheduled_at"):
            scheduled = datetime.fromisoformat(data["scheduled_at"]) + timedelta(days=days)
            data["scheduled_at"] = scheduled.isoformat()
        shifted.append((key, orjson.dumps(document)))
    return shifted


async def event_to_screen(bootstrap: str, redis_url: str, workdir: Path,
                          rates: tuple[int, ...] = (100, 500, 2000),
                          seconds: float = 10.0, clinics: int = 50) -> dict[str, Any]:
    """Produce floor events at fixed rates; time from producing an arrival to an SSE
    client receiving the board that shows it."""
    prefix = f"l{uuid.uuid4().hex[:6]}."
    await ensure_topics(bootstrap, prefix)
    topic = prefix + FLOOR
    service = ServiceProcess("flow", _env(bootstrap, redis_url, prefix,
                                          flow_publish_estimates="true"),
                             workdir / "flow-latency.log")
    service.start()
    results: dict[str, Any] = {}
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0,
                                enable_idempotence=True)
    await producer.start()
    try:
        await service.wait_ready(120)
        for rate in rates:
            watched = f"watch{rate}"
            sent_at: dict[str, float] = {}
            latencies: list[float] = []
            stop = asyncio.Event()

            async def listen(watched: str = watched, sent_at: dict[str, float] = sent_at,
                             latencies: list[float] = latencies,
                             stop: asyncio.Event = stop) -> None:
                seen: set[str] = set()
                async with httpx.AsyncClient(timeout=None) as client, client.stream(
                        "GET", f"{service.url}/clinics/{watched}/stream",
                        headers={"Authorization": "Bearer dev-screen"}) as stream:
                    async for line in stream.aiter_lines():
                        if stop.is_set():
                            return
                        if not line.startswith("data: "):
                            continue
                        now = time.perf_counter()
                        for waiting in orjson.loads(line[6:])["waiting"]:
                            ticket = waiting["ticket_code"]
                            if ticket in sent_at and ticket not in seen:
                                seen.add(ticket)
                                latencies.append((now - sent_at[ticket]) * 1000)

            # the watched clinic must exist before the stream opens
            await _send(producer, topic, watched, ev.RoomReady(room_id="r1"))
            await asyncio.sleep(1.0)
            listener = asyncio.create_task(listen())
            await asyncio.sleep(0.5)
            interval = 1.0 / rate
            total = int(rate * seconds)
            load = floor_records(clinics, seed=rate)  # a realistic mix: rooms, checkouts...
            started = time.perf_counter()
            ticket_number = 0
            previous: str | None = None
            for n in range(total):
                due = started + n * interval
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                if n % max(1, rate // 20) == 0:  # 20 watched arrivals a second
                    ticket_number = (ticket_number + 1) % 9999
                    ticket = f"W-{ticket_number}"
                    visit = f"w{rate}-{n}"
                    sent_at[ticket] = time.perf_counter()
                    await _send(producer, topic, watched, ev.PatientArrived(
                        visit_id=visit, ticket_code=ticket, provider_id="dr-w",
                        visit_type="follow_up"), wait=False)
                    if previous is not None:  # keep the watched queue short
                        await _send(producer, topic, watched,
                                    ev.ArrivalCancelled(visit_id=previous), wait=False)
                    previous = visit
                else:
                    key, value = load[n % len(load)]
                    await producer.send(topic, value, key=key)
            achieved = total / (time.perf_counter() - started)
            await asyncio.sleep(2.0)
            stop.set()
            listener.cancel()
            ordered = sorted(latencies)
            results[str(rate)] = {
                "achieved_events_per_second": round(achieved),
                "samples": len(ordered),
                "p50_ms": round(statistics.median(ordered), 1) if ordered else None,
                "p99_ms": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 1)
                if ordered else None,
                "max_ms": round(ordered[-1], 1) if ordered else None,
            }
    finally:
        await producer.stop()
        service.stop()
    return results


async def _send(producer: AIOKafkaProducer, topic: str, clinic: str, payload: ev.Payload,
                wait: bool = True) -> None:
    event = ev.make_event(payload, clinic_id=clinic, source="bench",
                          occurred_at=datetime.now(UTC))
    future = await producer.send(topic, ev.encode(event), key=clinic.encode())
    if wait:
        await future


def cpu_count() -> int:
    return os.cpu_count() or 1


def cost_by_clinics(sizes: tuple[int, ...] = (10, 100, 1000)) -> dict[str, Any]:
    """CPU microseconds per event in flow's floor processor (decode, apply, learn) for a
    day of ``n`` clinics, with the garbage collector set as the service sets it: flat
    means an event does not cost more as clinics grow. In process, no Kafka or Redis, so
    the figure is the processing alone; the ratio is against the smallest size."""
    results: dict[str, Any] = {}
    thresholds = gc.get_threshold()
    gc.set_threshold(*GC_THRESHOLDS)  # as the service runs (shared/runner.py)
    try:
        for clinics in sizes:
            records = consumer_records(FLOOR, floor_records(clinics, seed=7))
            reader = floor_reader(FLOOR)  # reading is part of the cost, as in the service
            processor = FloorProcessor()
            started = time.process_time()
            for start in range(0, len(records), 2000):  # each record read as it is applied
                processor.process_stream(reader.stream(records[start:start + 2000], {}))
            seconds = time.process_time() - started
            results[str(clinics)] = {"events": len(records),
                                     "us_per_event": round(seconds / len(records) * 1e6, 1)}
    finally:
        gc.set_threshold(*thresholds)
    base = results[str(sizes[0])]["us_per_event"]
    for item in results.values():
        item["ratio_to_smallest"] = round(item["us_per_event"] / base, 2)
    return results
