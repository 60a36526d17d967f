"""Scale-out: one, two and three flow processes in one consumer group on the same floor
topic, events/s of each, and whether the boards they leave are the boards one process
leaves. Numbers, never assertions.

Each run starts its processes together on a fresh group and Redis space (so every run
rebuilds the whole topic), times from the start to every event applied, and then reads
a sample of boards; runs alternate 1, 2, 3, 1, 2, 3... so that a shared machine's noise
falls on every size alike. The partitions a process takes move as the others join: the
figure includes those rebalances, as a real scale-out does.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
from aiokafka.admin import AIOKafkaAdminClient
from redis.asyncio import Redis

from bench.common import preload
from bench.flow_bench import FLOOR, _checkpointed, _env, clinic_days
from bench.http_bench import process_cpu_seconds
from shared.admin import ensure_topics
from shared.topics import FLOOR as FLOOR_TOPIC
from tests.helpers import ServiceProcess

MANAGER = {"Authorization": "Bearer dev-manager"}
VOLATILE = ("as_of", "waited_minutes", "expected_wait_minutes", "range_minutes")


def _stable(board: dict[str, Any]) -> bytes:
    """A board without what depends on when it is read (the time of the answer)."""
    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in VOLATILE}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value
    return orjson.dumps(strip(board), option=orjson.OPT_SORT_KEYS)


async def _boards(url: str, clinics: list[str]) -> dict[str, bytes]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        return {clinic: _stable((await client.get(f"/clinics/{clinic}/board",
                                                  headers=MANAGER)).json())
                for clinic in clinics}


def _machine_busy() -> tuple[float, float]:
    """(busy, all) CPU time of the whole machine so far, from /proc/stat (jiffies)."""
    with open("/proc/stat") as stat:
        fields = [int(f) for f in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return float(sum(fields) - idle), float(sum(fields))


async def _one_run(bootstrap: str, redis_url: str, workdir: Path, prefix: str,
                   instances: int, run: int, expected: int,
                   sample: list[str]) -> tuple[float, dict[str, bytes], float, float]:
    space = f"{prefix}s{instances}r{run}."
    env = _env(bootstrap, redis_url, prefix, flow_publish_estimates="false",
               redis_prefix=space.rstrip("."), flow_group_id=f"{space}flow")
    services = [ServiceProcess("flow", env, workdir / f"scaleout-{instances}-{run}-{n}.log")
                for n in range(instances)]
    redis = Redis.from_url(redis_url)
    began = time.perf_counter()
    busy_before, all_before = _machine_busy()
    for service in services:
        service.start()
    flow_cpu = 0.0
    try:
        await asyncio.gather(*(service.wait_ready(120) for service in services))
        while await _checkpointed(redis, space) < expected:
            await asyncio.sleep(0.05)
        finished = time.perf_counter()
        busy_after, all_after = _machine_busy()
        for service in services:
            assert service.process is not None
            flow_cpu += process_cpu_seconds(service.process.pid)
        # every process answers for every clinic (the boards are in Redis): read them
        # from the last one started, which took its partitions from the others
        boards = await _boards(services[-1].url, sample)
    finally:
        for service in services:
            service.stop()
        await redis.aclose()
    # from the processes' start to every event checkpointed: their start-up (about a
    # second, alike for every size), the group's joins and the partitions moving as the
    # others join are in it, as in a real scale-out. Neither the pace between 10% and 90%
    # checkpointed (while catching up a process checkpoints ten times less often and at
    # once when it is through: with two or three the count jumps from under 10% to all)
    # nor the time from all ready (the first ready has done most of the topic by then)
    # says what the group does: both read hundreds of thousands a second
    wall = max(1e-3, finished - began)
    # the flow processes' CPU in cores, and the whole machine's busy share (all cores)
    return (expected / wall, boards, flow_cpu / wall,
            (busy_after - busy_before) / max(1.0, all_after - all_before))


async def _group_settled(bootstrap: str, group: str, members: int,
                         timeout: float = 120.0) -> None:
    """Until the consumer group is Stable with ``members`` members (its partitions
    handed out, no rebalance under way)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for response in await admin.describe_consumer_groups([group]):
                # each: (error, id, state, protocol type, protocol, members, ...)
                for found in response.groups:
                    if found[2] == "Stable" and len(found[5]) == members:
                        return
            await asyncio.sleep(0.2)
        raise RuntimeError(f"group {group} never settled with {members} members")
    finally:
        await admin.close()


async def _settled_run(bootstrap: str, redis_url: str, workdir: Path, prefix: str,
                       instances: int, run: int,
                       records: list[tuple[bytes, bytes]]) -> tuple[float, float, float]:
    """The group settled first, then the events: ``instances`` processes on a fresh,
    empty floor topic, started and left until their group is Stable, then every record
    produced (by this process, as fast as the broker takes them) and timed from the first
    produced to every event checkpointed. No rebalance and no start-up in the figure."""
    space = f"{prefix}q{instances}r{run}."
    await ensure_topics(bootstrap, space)
    env = _env(bootstrap, redis_url, space, flow_publish_estimates="false",
               redis_prefix=space.rstrip("."), flow_group_id=f"{space}flow")
    services = [ServiceProcess("flow", env, workdir / f"settled-{instances}-{run}-{n}.log")
                for n in range(instances)]
    redis = Redis.from_url(redis_url)
    for service in services:
        service.start()
    flow_cpu = 0.0
    try:
        await asyncio.gather(*(service.wait_ready(120) for service in services))
        await _group_settled(bootstrap, f"{space}flow", instances)
        cpu_before = {service: process_cpu_seconds(service.process.pid)
                      for service in services if service.process is not None}
        busy_before, all_before = _machine_busy()
        began = time.perf_counter()
        await preload(bootstrap, space + FLOOR, records)
        while await _checkpointed(redis, space) < len(records):
            await asyncio.sleep(0.05)
        finished = time.perf_counter()
        busy_after, all_after = _machine_busy()
        for service, cpu in cpu_before.items():
            assert service.process is not None
            flow_cpu += process_cpu_seconds(service.process.pid) - cpu
    finally:
        for service in services:
            service.stop()
        await redis.aclose()
    wall = max(1e-3, finished - began)
    return (len(records) / wall, flow_cpu / wall,
            (busy_after - busy_before) / max(1.0, all_after - all_before))


async def scale_out(bootstrap: str, redis_url: str, workdir: Path, clinics: int = 500,
                    events: int = 200_000, sizes: tuple[int, ...] = (1, 2, 3),
                    runs: int = 2) -> dict[str, Any]:
    """Events/s of ``sizes`` flow processes in one group, ``runs`` alternating rounds:
    the whole topic over the time from the processes' start to every event checkpointed."""
    prefix = f"x{uuid.uuid4().hex[:6]}."
    await ensure_topics(bootstrap, prefix)
    records = clinic_days(clinics, events)
    await preload(bootstrap, prefix + FLOOR, records)
    sample = sorted({key.decode() for key, _value in records})[::max(1, clinics // 50)]
    rates: dict[int, list[float]] = {n: [] for n in sizes}
    cores: dict[int, list[float]] = {n: [] for n in sizes}
    busy: dict[int, list[float]] = {n: [] for n in sizes}
    reference: dict[str, bytes] | None = None
    differing: dict[int, int] = dict.fromkeys(sizes, 0)
    for run in range(runs):
        for instances in sizes:
            rate, boards, flow_cores, machine = await _one_run(
                bootstrap, redis_url, workdir, prefix, instances, run, len(records), sample)
            rates[instances].append(rate)
            cores[instances].append(flow_cores)
            busy[instances].append(machine)
            reference = reference or boards
            differing[instances] += sum(boards[c] != reference[c] for c in sample)
    settled: dict[int, list[tuple[float, float, float]]] = {n: [] for n in sizes}
    for run in range(runs):
        for instances in sizes:
            settled[instances].append(await _settled_run(
                bootstrap, redis_url, workdir, prefix, instances, run, records))
    one = statistics.median(rates[sizes[0]])
    settled_one = statistics.median(r[0] for r in settled[sizes[0]])
    return {
        "events": len(records),
        "clinics": clinics,
        "runs": runs,
        "partitions": FLOOR_TOPIC.partitions,
        "boards_compared_per_run": len(sample),
        "by_instances": {
            str(n): {"events_per_second": round(statistics.median(rates[n])),
                     "range": [round(min(rates[n])), round(max(rates[n]))],
                     "speedup": round(statistics.median(rates[n]) / one, 2),
                     "boards_differing_from_one_process": differing[n],
                     "flow_cores": round(statistics.median(cores[n]), 2),
                     "machine_busy": round(statistics.median(busy[n]), 2)}
            for n in sizes},
        # the group settled before the events came (``_settled_run``)
        "settled_by_instances": {
            str(n): {"events_per_second": round(statistics.median(r[0] for r in settled[n])),
                     "range": [round(min(r[0] for r in settled[n])),
                               round(max(r[0] for r in settled[n]))],
                     "speedup": round(statistics.median(r[0] for r in settled[n])
                                      / settled_one, 2),
                     "flow_cores": round(statistics.median(r[1] for r in settled[n]), 2),
                     "machine_busy": round(statistics.median(r[2] for r in settled[n]), 2)}
            for n in sizes},
    }
