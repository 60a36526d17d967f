"""Scale-out: one, two and three flow processes in one consumer group on the same floor
topic, events/s of each, and whether the boards they leave are the boards one process
leaves; the same for the other services' floor consumers (check-in's projection,
billing's floor consumer, the notifier), one and two processes. Numbers, never
assertions.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
from aiokafka.admin import AIOKafkaAdminClient
from redis.asyncio import Redis

from bench.common import preload, stored_offsets
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


class Span:
    """The timed span of a run: from ``Span(services)`` (or ``restart``) to ``end``, the
    wall time, the CPU the ``services``' processes used in cores, and the whole machine's
    busy share (all cores)."""

    def __init__(self, services: list[ServiceProcess]) -> None:
        self.services = services
        self.restart()

    def _cpu(self) -> float:
        return sum(process_cpu_seconds(s.process.pid) for s in self.services
                   if s.process is not None)

    def restart(self) -> None:
        self.began, self.busy = time.perf_counter(), _machine_busy()
        self.cpu = self._cpu()

    def end(self) -> tuple[float, float, float]:
        """(wall seconds, cores, machine busy) since the start."""
        wall = max(1e-3, time.perf_counter() - self.began)
        busy = _machine_busy()
        return (wall, (self._cpu() - self.cpu) / wall,
                (busy[0] - self.busy[0]) / max(1.0, busy[1] - self.busy[1]))


@dataclass
class Run:
    """One run: events/s, the sampled boards it left, the flow processes' CPU in cores
    and the whole machine's busy share (all cores), over the timed span."""

    events_per_second: float
    boards: dict[str, bytes]
    cores: float  # the processes measured (flow, or another consumer)
    machine_busy: float


async def _one_run(bootstrap: str, redis_url: str, workdir: Path, prefix: str,
                   instances: int, run: int, records: list[tuple[bytes, bytes]],
                   sample: list[str], *, settled: bool) -> Run:
    """``instances`` flow processes in a fresh group and Redis space, timed to every event
    checkpointed. Not ``settled``: on the preloaded topic (``prefix``), from the processes'
    start, so their start-up, the group's joins and the partitions moving as the others
    join are in it, as when instances are added to a backlog. (Neither the pace between 10%
    and 90% checkpointed, which jumps, since a process catching up checkpoints ten times
    less often and at once when through, nor the time from all ready, by when the first
    ready has done most of the topic, says what the group does: both read hundreds of
    thousands a second.) ``settled``: on a fresh, empty topic, the processes started and
    left until their group is Stable, then every record produced (by this process, as fast
    as the broker takes them) and timed from the first produced: no start-up and no
    rebalance in it."""
    space = f"{prefix}{'q' if settled else 's'}{instances}r{run}."
    topics = space if settled else prefix
    if settled:
        await ensure_topics(bootstrap, space)
    env = _env(bootstrap, redis_url, topics, flow_publish_estimates="false",
               redis_prefix=space.rstrip("."), flow_group_id=f"{space}flow")
    services = [ServiceProcess("flow", env, workdir / f"scaleout-{space}{n}.log")
                for n in range(instances)]
    redis = Redis.from_url(redis_url)
    span = Span(services)
    for service in services:
        service.start()
    try:
        await asyncio.gather(*(service.wait_ready(120) for service in services))
        if settled:
            await _group_settled(bootstrap, f"{space}flow", instances)
            span.restart()
            await preload(bootstrap, space + FLOOR, records)
        while await _checkpointed(redis, space) < len(records):
            await asyncio.sleep(0.05)
        wall, cores, busy = span.end()
        # every process answers for every clinic (the boards are in Redis): read them
        # from the last one started, which took its partitions from the others
        boards = await _boards(services[-1].url, sample)
    finally:
        for service in services:
            service.stop()
        await redis.aclose()
    return Run(len(records) / wall, boards, cores, busy)


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


async def scale_out(bootstrap: str, redis_url: str, workdir: Path, clinics: int = 500,
                    events: int = 200_000, sizes: tuple[int, ...] = (1, 2, 3),
                    runs: int = 2) -> dict[str, Any]:
    """Events/s of ``sizes`` flow processes in one group, ``runs`` alternating rounds,
    from the processes' start and with the group settled first (``_one_run``)."""
    prefix = f"x{uuid.uuid4().hex[:6]}."
    await ensure_topics(bootstrap, prefix)
    records = clinic_days(clinics, events)
    await preload(bootstrap, prefix + FLOOR, records)
    sample = sorted({key.decode() for key, _value in records})[::max(1, clinics // 50)]
    runs_of: dict[bool, dict[int, list[Run]]] = {
        mode: {n: [] for n in sizes} for mode in (False, True)}
    for settled in (False, True):
        for run in range(runs):
            for instances in sizes:
                runs_of[settled][instances].append(await _one_run(
                    bootstrap, redis_url, workdir, prefix, instances, run, records, sample,
                    settled=settled))
    # every run's boards against the first one-process run's
    reference = runs_of[False][sizes[0]][0].boards

    def summary(by_size: dict[int, list[Run]]) -> dict[str, Any]:
        one = statistics.median(r.events_per_second for r in by_size[sizes[0]])
        out: dict[str, Any] = {}
        for n, done in by_size.items():
            rates = [r.events_per_second for r in done]
            out[str(n)] = {
                "events_per_second": round(statistics.median(rates)),
                "range": [round(min(rates)), round(max(rates))],
                "speedup": round(statistics.median(rates) / one, 2),
                "boards_differing_from_one_process": sum(
                    r.boards[c] != reference[c] for r in done for c in sample),
                "flow_cores": round(statistics.median(r.cores for r in done), 2),
                "machine_busy": round(statistics.median(r.machine_busy for r in done), 2)}
        return out

    return {
        "events": len(records),
        "clinics": clinics,
        "runs": runs,
        "partitions": FLOOR_TOPIC.partitions,
        "boards_compared_per_run": len(sample),
        "by_instances": summary(runs_of[False]),
        # the group settled before the events came (``_one_run(settled=True)``)
        "settled_by_instances": summary(runs_of[True]),
    }


# ------------------------------------------------------------ the other consumers


@dataclass(frozen=True)
class Consumer:
    """A service's floor consumer as the scale-out runs start it: ``service`` (what
    ``clinicflow run`` starts), ``consumer`` (the projection whose stored offsets,
    ``P:applied:<consumer>:<topic>:<partition>``, say what it has applied), ``group``
    (the setting naming its consumer group) and what else its processes are given."""

    service: str
    consumer: str
    group: str
    env: dict[str, str] = field(default_factory=dict)


CONSUMERS = (
    Consumer("checkin", "checkin", "checkin_group_id",
             {"checkin_no_show_check_seconds": "0"}),
    Consumer("billing", "billing.floor", "billing_group_id"),
    Consumer("notifications", "notifications", "notifications_group_id"),
)


async def _all_applied(redis: Redis, redis_prefix: str, topic: str, records: int,
                       timeout: float = 120.0) -> None:
    """Until every consumer of the service that reads ``topic`` (its other projections
    too: the notifier's accuracy and satisfaction, ...) has applied all ``records``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        consumers = {key.decode()[len(redis_prefix) + 9:].split(":", 1)[0] async for key
                     in redis.scan_iter(f"{redis_prefix}:applied:*:{topic}:*")}
        done = [await stored_offsets(redis, f"{redis_prefix}:applied:{c}:{topic}:*") >= records
                for c in consumers]
        if done and all(done):
            return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"the consumers of {topic} never applied all {records} records")


async def _keys(redis: Redis, redis_prefix: str, space: str) -> frozenset[str]:
    """The state a run left in its Redis space, as the names of its keys without the
    space's name: one process and two should leave the same (nothing lost, nothing made
    twice). Stored offsets (``applied:``, where each partition stands) and each process's
    own registration (``:instance:``) are not state."""
    names = [key.decode()[len(redis_prefix) + 1:].replace(space, "")
             async for key in redis.scan_iter(f"{redis_prefix}:*", count=1000)]
    return frozenset(n for n in names if not n.startswith("applied:") and ":instance:" not in n)


async def _consumer_run(bootstrap: str, redis_url: str, workdir: Path, prefix: str,
                        spec: Consumer, instances: int, run: int,
                        records: list[tuple[bytes, bytes]]) -> tuple[Run, frozenset[str]]:
    """``instances`` processes of ``spec.service`` on a fresh, empty topic and Redis
    space, left until their group is Stable, then every record produced and timed from
    the first produced to every record applied (as ``_one_run(settled=True)``). Returns
    the run (no boards) and the keys it left in Redis once all its consumers were done."""
    space = f"{prefix}{spec.service[:3]}{instances}r{run}."
    redis_prefix = space.rstrip(".")
    await ensure_topics(bootstrap, space)
    group = f"{space}{spec.service}"
    env = _env(bootstrap, redis_url, space, redis_prefix=redis_prefix,
               **{spec.group: group}, **spec.env)
    services = [ServiceProcess(spec.service, env, workdir / f"scaleout-{space}{n}.log")
                for n in range(instances)]
    redis = Redis.from_url(redis_url)
    for service in services:
        service.start()
    try:
        await asyncio.gather(*(service.wait_ready(120) for service in services))
        await _group_settled(bootstrap, group, instances)
        span = Span(services)
        await preload(bootstrap, space + FLOOR, records)
        while await stored_offsets(
                redis, f"{redis_prefix}:applied:{spec.consumer}:{space}{FLOOR}:*") < len(records):
            await asyncio.sleep(0.05)
        wall, cores, busy = span.end()
        await _all_applied(redis, redis_prefix, space + FLOOR, len(records))
        keys = await _keys(redis, redis_prefix, space)
    finally:
        for service in services:
            service.stop()
        await redis.aclose()
    return Run(len(records) / wall, {}, cores, busy), keys


async def consumers_scale_out(bootstrap: str, redis_url: str, workdir: Path,
                              clinics: int = 200, events: int = 60_000,
                              sizes: tuple[int, ...] = (1, 2), runs: int = 2,
                              consumers: tuple[Consumer, ...] = CONSUMERS) -> dict[str, Any]:
    """Events/s of ``sizes`` processes of each of ``consumers`` in one group, the group
    settled first, ``runs`` alternating rounds per consumer; the keys each run left in
    Redis against the first one-process run's."""
    prefix = f"y{uuid.uuid4().hex[:6]}."
    records = clinic_days(clinics, events)
    out: dict[str, Any] = {"events": len(records), "clinics": clinics, "runs": runs,
                           "partitions": FLOOR_TOPIC.partitions}
    for spec in consumers:
        done: dict[int, list[tuple[Run, frozenset[str]]]] = {n: [] for n in sizes}
        for run in range(runs):
            for instances in sizes:
                done[instances].append(await _consumer_run(
                    bootstrap, redis_url, workdir, prefix, spec, instances, run, records))
        one = statistics.median(r.events_per_second for r, _ in done[sizes[0]])
        reference = done[sizes[0]][0][1]
        out[spec.service] = {str(n): {
            "events_per_second": round(statistics.median(r.events_per_second for r, _ in got)),
            "range": [round(min(r.events_per_second for r, _ in got)),
                      round(max(r.events_per_second for r, _ in got))],
            "speedup": round(statistics.median(r.events_per_second for r, _ in got) / one, 2),
            "cores": round(statistics.median(r.cores for r, _ in got), 2),
            "machine_busy": round(statistics.median(r.machine_busy for r, _ in got), 2),
            "redis_keys": [len(keys) for _, keys in got],
            # keys one run has and the first one-process run has not, or the other way
            "keys_differing_from_one_process": [len(keys ^ reference) for _, keys in got],
        } for n, got in done.items()}
        print(f"  {spec.service}: {out[spec.service]}", flush=True)
    return out
