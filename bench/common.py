"""What the benchmarks share: preloading topics with simulated days, machine facts."""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.structs import ConsumerRecord
from redis.asyncio import Redis

from shared import events as ev
from tools.replay import to_fact
from tools.simulate import simulate_clinics


def floor_records(clinics: int, seed: int = 1, days: int = 1) -> list[tuple[bytes, bytes]]:
    """(key, value) floor events for ``clinics`` clinics' simulated days, in time order."""
    records: list[tuple[bytes, bytes]] = []
    for day in range(days):
        simulated = simulate_clinics("all", seed + day, clinics)
        tickets: dict[str, int] = {}

        def ticket_for(clinic: str, _visit: str, tickets: dict[str, int] = tickets) -> str:
            tickets[clinic] = tickets.get(clinic, 0) + 1
            return f"A-{tickets[clinic] % 10000}"

        for record in simulated.events:
            clinic_id = f"{record['clinic_id']}d{day}" if days > 1 else record["clinic_id"]
            fact = to_fact(record, ticket_for)
            event = ev.make_event(fact, clinic_id=clinic_id, source="bench",
                                  occurred_at=datetime.fromisoformat(record["ts"]))
            records.append((clinic_id.encode(), ev.encode(event)))
    return records


def consumer_records(topic: str, records: list[tuple[bytes, bytes]]
                     ) -> list[ConsumerRecord[bytes, bytes]]:
    """(key, value) records as aiokafka's consumer gives them, on partition 0 of ``topic``."""
    return [ConsumerRecord(topic, 0, offset, 0, 0, key, value, None, len(key), len(value), ())
            for offset, (key, value) in enumerate(records)]


async def stored_offsets(redis: Redis, pattern: str) -> int:
    """Records a consumer has applied, from the last offsets it stored under the keys
    matching ``pattern`` (one per partition): what a benchmark polls instead of the
    service (polling it would slow down what is measured)."""
    total = 0
    async for key in redis.scan_iter(pattern):
        value = await redis.get(key)
        if value is not None:
            total += int(value) + 1
    return total


async def preload(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    """Produce every record (acks=all), as fast as the broker takes them."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20,
                                max_batch_size=512 * 1024, enable_idempotence=True,
                                compression_type=None)
    await producer.start()
    try:
        for key, value in records:
            await producer.send(topic, value, key=key)
        await producer.flush()
    finally:
        await producer.stop()


def machine() -> dict[str, Any]:
    """Cores, memory, Python and Java versions, for the report."""
    with open("/proc/meminfo") as meminfo:
        total_kb = int(meminfo.readline().split()[1])
    try:
        java = subprocess.run(["java", "-version"], capture_output=True, text=True,
                              check=False).stderr.splitlines()[0]
    except OSError:
        java = "not found"
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(total_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "java": java,
    }
