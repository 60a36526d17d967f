"""The EHR feed's benchmark (``BENCH_ONLY=ehr_feed make bench``): HL7 v2 over MLLP into
check-in, as an interface engine sends it, against baselines measured in the same run.

The engine is ``tools/ehr_sender.py``: SIU^S12 bookings and ADT^A04 arrivals of
``clinics`` clinics, every connection carrying every clinic's messages, each message
sent after the previous one's ACK on its connection (original mode). A patient's
arrival follows their booking ``LAG`` messages later on the same connection. Measured:

- saturation over 1 and 8 connections: messages per second and ACK latency (p50, p99)
  from the message written to its ACK read, by message type;
- fixed rates over 8 connections (open loop: latency from the moment the engine meant
  to send, so a feed that falls behind shows its queue);
- baselines in the same run: a bare MLLP echo (the same client and framing answered
  at once by a process that does nothing else: the ceiling of this set-up) and bare
  Kafka produces (one awaited ``acks=all`` send per message, 1 and 8 senders: what the
  one write an AA waits for costs at least).

Every ACK must be AA and every booking and arrival on Kafka once: the counts are in the
result (``not_aa``, ``events_on_kafka``), not assumed.

``python -m bench.feed_bench`` runs it alone on a fresh local stack.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis

from shared.admin import ensure_topics
from shared.topics import FLOOR, topic_name
from tests.helpers import ServiceProcess, read_topic
from tools.ehr_sender import Booking, MllpConnection, Patient, ack_code, adt, siu
from tools.stack import REPO, free_port

LAG = 10  # messages between a patient's booking and arrival on one connection
PROVIDERS = 4
VISIT_TYPES = ("FOLLOWUP", "ROUTINE", "CHECKUP", "WALKIN")


@dataclass(frozen=True, slots=True)
class Message:
    kind: str  # "SIU^S12" or "ADT^A04"
    payload: bytes


def midday_zone(now: datetime) -> ZoneInfo:
    """A zone where it is about noon now, so every appointment of the run is today there."""
    offset = 12 - now.hour
    return ZoneInfo("Etc/GMT" if offset == 0 else f"Etc/GMT{-offset:+d}")


def facility(run: str, clinic: int) -> str:
    return f"{run}F{clinic}"


def workload(run: str, *, patients: int, clinics: int, connections: int, zone: ZoneInfo,
             now: datetime, seed: int = 1) -> list[list[Message]]:
    """Each connection's messages in order: bookings, and each booking's arrival
    ``LAG`` messages later. Patients go to clinics and connections round robin."""
    rng = random.Random(seed)
    per_connection: list[list[tuple[str, Booking]]] = [[] for _ in range(connections)]
    for n in range(patients):
        # from the next quarter hour on: none is overdue (no no-show) while the run lasts
        start = now.replace(minute=0, second=0, microsecond=0) + timedelta(
            minutes=15 * rng.randrange(5, 17))
        provider = f"P{n % PROVIDERS}"
        patient = Patient(f"{run}M{n}", f"FAM{n % 97}", f"GIV{n % 89}",
                          date(1950 + n % 50, 1 + n % 12, 1 + n % 28))
        booking = Booking(f"{run}A{n}", patient, provider, (f"DOC{provider}", "SIM"),
                          VISIT_TYPES[n % len(VISIT_TYPES)], start, 15)
        per_connection[n % connections].append((facility(run, n % clinics), booking))
    plans: list[list[Message]] = []
    for items in per_connection:
        plan: list[Message] = []
        for i in range(len(items) + LAG):
            if i < len(items):
                where, booking = items[i]
                plan.append(Message("SIU^S12", siu("S12", booking, facility=where, zone=zone,
                                                   sent_at=now)))
            if i >= LAG:
                where, booking = items[i - LAG]
                plan.append(Message("ADT^A04", adt(
                    "A04", booking.patient, facility=where, zone=zone, sent_at=now,
                    visit_number=f"V{booking.appointment_id}", attending=booking.provider)))
        plans.append(plan)
    return plans


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (``/proc/PID/stat``)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _stats(latencies_ms: Sequence[float]) -> dict[str, float]:
    ordered = sorted(latencies_ms)
    if not ordered:
        return {"p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}
    return {"p50_ms": round(statistics.median(ordered), 1),
            "p99_ms": round(ordered[int(0.99 * (len(ordered) - 1))], 1),
            "max_ms": round(ordered[-1], 1)}


async def redis_calls(redis_url: str) -> int:
    """Commands the Redis server has run so far (``INFO commandstats``)."""
    client = Redis.from_url(redis_url)
    try:
        stats = await client.info("commandstats")
    finally:
        await client.aclose()
    return sum(int(entry["calls"]) for entry in stats.values())


async def drive(port: int, plans: list[list[Message]], rate: float | None = None,
                pid: int | None = None, redis_url: str | None = None) -> dict[str, Any]:
    """Send each plan on its own connection; ``rate`` (messages/s over all connections):
    open loop, latency from when the message was due; None: as fast as ACKs come.
    ``pid``: the listener's process, whose CPU time per message is reported (steadier
    than wall time on a shared machine)."""
    cpu_before = cpu_seconds(pid) if pid is not None else 0.0
    calls_before = await redis_calls(redis_url) if redis_url is not None else 0
    connections = [await MllpConnection.connect("127.0.0.1", port) for _ in plans]
    latencies: dict[str, list[float]] = {}
    not_aa: dict[str, int] = {}
    width = len(plans)

    async def engine(index: int, connection: MllpConnection, plan: list[Message],
                     began: float) -> None:
        for n, message in enumerate(plan):
            due = time.perf_counter()
            if rate is not None:
                due = began + (n * width + index) / rate
                wait = due - time.perf_counter()
                if wait > 0:
                    await asyncio.sleep(wait)
            ack = await connection.send(message.payload, timeout=60)
            latencies.setdefault(message.kind, []).append((time.perf_counter() - due) * 1000)
            if ack_code(ack) != "AA":
                not_aa[message.kind] = not_aa.get(message.kind, 0) + 1

    began = time.perf_counter()
    try:
        await asyncio.gather(*(engine(i, c, p, began)
                               for i, (c, p) in enumerate(zip(connections, plans, strict=True))))
    finally:
        for connection in connections:
            await connection.close()
    elapsed = time.perf_counter() - began
    count = sum(len(p) for p in plans)
    cpu = {"cpu_ms_per_message": round((cpu_seconds(pid) - cpu_before) * 1000 / count, 2)} \
        if pid is not None else {}
    if redis_url is not None:  # the service's and its consumer's, over the run
        cpu["redis_commands_per_message"] = round(
            (await redis_calls(redis_url) - calls_before) / count, 1)
    every = [x for values in latencies.values() for x in values]
    return {"connections": width, "messages": count, "seconds": round(elapsed, 2),
            "messages_per_second": round(count / elapsed),
            **({"target_per_second": rate} if rate is not None else {}), **cpu,
            **_stats(every),
            "by_type": {kind: {"messages": len(values), **_stats(values)}
                        for kind, values in sorted(latencies.items())},
            "not_aa": sum(not_aa.values())}


async def kafka_produce_baseline(bootstrap: str, topic: str, messages: int,
                                 senders: int) -> dict[str, Any]:
    """One awaited ``acks=all`` produce per message (an event the size of a booking's),
    ``senders`` at once: the one Kafka write behind each AA, alone."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                enable_idempotence=True, linger_ms=0)
    await producer.start()
    value = json.dumps({"event_type": "appointment.scheduled", "padding": "x" * 420}).encode()
    latencies: list[float] = []
    try:
        for partition in sorted(await producer.partitions_for(topic)):  # leaders known
            await producer.send_and_wait(topic, value, partition=partition)

        async def sender(index: int) -> None:
            for n in range(index, messages, senders):
                started = time.perf_counter()
                await producer.send_and_wait(topic, value, key=f"k{n % 8}".encode())
                latencies.append((time.perf_counter() - started) * 1000)

        began = time.perf_counter()
        await asyncio.gather(*(sender(i) for i in range(senders)))
        elapsed = time.perf_counter() - began
    finally:
        await producer.stop()
    return {"senders": senders, "messages": messages,
            "messages_per_second": round(messages / elapsed), **_stats(latencies)}


class EchoListener:
    """A bare MLLP listener in its own process answering every frame AA at once."""

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.feed_bench", "echo", str(self.port)], cwd=REPO,
            stdout=log, stderr=subprocess.STDOUT)

    async def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                _r, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(0.1)
                continue
            writer.close()
            return
        raise TimeoutError("the echo listener did not start")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


async def serve_echo(port: int) -> None:
    """``python -m bench.feed_bench echo PORT``: the bare listener (check-in's framing)."""
    from services.checkin.hl7.mllp import Frame, MllpServer

    answer = (b"MSH|^~\\&|ECHO|ECHO|EHRSIM|F|20260101000000||ACK^S12^ACK|1|P|2.5.1\r"
              b"MSA|AA|1\r")

    async def echo(_frame: Frame) -> bytes:
        return answer

    server = MllpServer(echo, "127.0.0.1", port, 1 << 20)
    await server.start()
    await asyncio.Event().wait()


async def floor_counts(bootstrap: str, topic: str) -> dict[str, int]:
    """What the floor topic holds: events by type, and appointments booked or checked in
    more than once (each should be once)."""
    records = await read_topic(bootstrap, topic, timeout=10.0)
    by_type: dict[str, int] = {}
    seen: dict[tuple[str, str], int] = {}
    for record in records:
        event = json.loads(record.value)
        kind = event["event_type"]
        by_type[kind] = by_type.get(kind, 0) + 1
        appointment = event["data"].get("appointment_id")
        if appointment:
            seen[(kind, appointment)] = seen.get((kind, appointment), 0) + 1
    return {"events": len(records), **{k.replace(".", "_"): v for k, v in by_type.items()},
            "twice": sum(1 for count in seen.values() if count > 1)}


async def ehr_feed(bootstrap: str, redis_url: str, workdir: Path, *, patients: int = 1500,
                   clinics: int = 8, rates: Sequence[int] = (100, 250, 500)) -> dict[str, Any]:
    """The feed at saturation over 1 and 8 connections and at fixed rates over 8, beside
    the bare MLLP echo and bare Kafka produces of the same run."""
    prefix = f"h{uuid.uuid4().hex[:6]}."
    await ensure_topics(bootstrap, prefix)
    floor = topic_name(FLOOR, prefix)
    now = datetime.now(UTC)
    zone = midday_zone(now)
    runs = {"one": (1, max(50, patients // 4)), "eight": (8, patients),
            **{f"rate{r}": (8, max(100, int(r * 2))) for r in rates}}
    feeds = {facility(run, c): {"clinic": f"{run}c{c}", "source_of_truth": "hl7"}
             for run in runs for c in range(clinics)}
    env = {"CLINICFLOW_KAFKA_BOOTSTRAP": bootstrap, "CLINICFLOW_REDIS_URL": redis_url,
           "CLINICFLOW_TOPIC_PREFIX": prefix, "CLINICFLOW_REDIS_PREFIX": prefix.rstrip("."),
           "CLINICFLOW_LOG_LEVEL": "WARNING", "CLINICFLOW_LOG_FORMAT": "json",
           "CLINICFLOW_CHECKIN_HL7_PORT": str(free_port()),
           "CLINICFLOW_CHECKIN_TIMEZONE": zone.key,
           "CLINICFLOW_CHECKIN_NO_SHOW_CHECK_SECONDS": "0",
           "CLINICFLOW_CHECKIN_FEEDS": json.dumps(feeds)}
    port = int(env["CLINICFLOW_CHECKIN_HL7_PORT"])
    result: dict[str, Any] = {"clinics": clinics, "lag": LAG,
                              "load_average": round(os.getloadavg()[0], 2)}

    echo = EchoListener(workdir / "echo.log")
    echo.start()
    try:
        await echo.wait_ready()
        for name, width in (("one", 1), ("eight", 8)):
            plans = workload(f"E{name}", patients=runs[name][1], clinics=clinics,
                             connections=width, zone=zone, now=now)
            result[f"echo_{name}"] = await drive(echo.port, plans, pid=echo.pid)
    finally:
        echo.stop()
    baseline_prefix = f"k{uuid.uuid4().hex[:6]}."  # a floor topic of its own, same settings
    await ensure_topics(bootstrap, baseline_prefix)
    for senders in (1, 8):
        result[f"kafka_produce_{senders}"] = await kafka_produce_baseline(
            bootstrap, topic_name(FLOOR, baseline_prefix), max(400, patients), senders)

    service = ServiceProcess("checkin", env, workdir / "checkin-feed-bench.log")
    service.start()
    expected = 0
    try:
        await service.wait_ready(60)
        for name, (width, count) in runs.items():
            plans = workload(name, patients=count, clinics=clinics, connections=width,
                             zone=zone, now=now)
            rate = float(name[4:]) if name.startswith("rate") else None
            assert service.process is not None
            result[name] = await drive(port, plans, rate, pid=service.process.pid,
                                       redis_url=redis_url)
            expected += 2 * count
            print(f"  {name}: {json.dumps(result[name])}", flush=True)
    finally:
        service.stop()
    result["floor"] = await floor_counts(bootstrap, floor)
    result["floor"]["expected"] = expected
    # the machine is shared: its load at the end too (a run under load measures a share
    # of a core; CPU and Redis commands per message are steadier than msg/s then)
    result["load_average_end"] = round(os.getloadavg()[0], 2)
    return result


async def main() -> int:
    from tools.stack import LocalStack

    workdir = Path(tempfile.mkdtemp(prefix="clinicflow-feed-bench-"))
    stack = LocalStack(workdir / "stack", kafka_port=free_port(), redis_port=free_port())
    await asyncio.to_thread(stack.start, None)
    try:
        scale = float(os.environ.get("BENCH_SCALE", "1"))
        result = await ehr_feed(stack.kafka_bootstrap, stack.redis_url, workdir,
                                patients=max(200, int(1500 * scale)))
    finally:
        await asyncio.to_thread(stack.stop)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "echo":
        asyncio.run(serve_echo(int(sys.argv[2])))
    else:
        sys.exit(asyncio.run(main()))


def report_rows(feed: dict[str, Any] | None) -> list[tuple[str, str]]:
    """The feed's lines of docs/performance.md's table."""
    if not feed:
        return []

    def line(run: dict[str, Any]) -> str:
        cpu = f", {run['cpu_ms_per_message']} ms CPU/message" \
            if "cpu_ms_per_message" in run else ""
        return (f"{run['messages_per_second']:,} msg/s, ACK p50 {run['p50_ms']} ms, "
                f"p99 {run['p99_ms']} ms{cpu}")

    rows = [(f"EHR feed (HL7 v2 over MLLP, AA after acks=all), {feed[name]['connections']} "
             f"connection{'s' if feed[name]['connections'] > 1 else ''}, saturation",
             line(feed[name])) for name in ("one", "eight") if name in feed]
    rows += [(f"EHR feed at {feed[name]['target_per_second']:.0f} msg/s over 8 connections",
              f"achieved {feed[name]['messages_per_second']:,} msg/s, ACK p50 "
              f"{feed[name]['p50_ms']} ms, p99 {feed[name]['p99_ms']} ms")
             for name in sorted((n for n in feed if n.startswith("rate")),
                                key=lambda n: int(n[4:]))]
    rows += [(f"bare MLLP echo, same client, {feed[name]['connections']} connection(s)",
              line(feed[name])) for name in ("echo_one", "echo_eight") if name in feed]
    rows += [(f"bare Kafka produce (acks=all, awaited), {feed[name]['senders']} sender(s)",
              f"{feed[name]['messages_per_second']:,} msg/s, p50 {feed[name]['p50_ms']} ms, "
              f"p99 {feed[name]['p99_ms']} ms")
             for name in ("kafka_produce_1", "kafka_produce_8") if name in feed]
    return rows


def report_section(feed: dict[str, Any] | None) -> str:
    """docs/performance.md's section on the feed."""
    if not feed or "eight" not in feed:
        return ""
    eight, floor = feed["eight"], feed.get("floor", {})
    met = eight["messages_per_second"] >= 500 and eight["p99_ms"] < 50
    return f"""
## EHR feed (HL7 v2 over MLLP)

`bench/feed_bench.py`: an interface engine (`tools/ehr_sender.py`) sends SIU^S12 bookings
and ADT^A04 arrivals of {feed['clinics']} clinics, every connection carrying every clinic's
messages, each after the previous one's ACK (original mode); an arrival follows its booking
{feed['lag']} messages later. Every ACK counted was {'AA' if eight['not_aa'] == 0 else
'not always AA'}; the floor topic held {floor.get('events', '?')} events for
{floor.get('expected', '?')} bookings and arrivals ({floor.get('twice', '?')} twice). Over 8
connections: {eight['messages_per_second']} msg/s, ACK p99 {eight['p99_ms']} ms (booking
p99 {eight['by_type'].get('SIU^S12', {}).get('p99_ms', '?')} ms, arrival p99
{eight['by_type'].get('ADT^A04', {}).get('p99_ms', '?')} ms), {eight.get('cpu_ms_per_message',
'?')} ms of check-in's CPU and {eight.get('redis_commands_per_message', '?')} Redis commands
per message: the target (500 msg/s, p99 under 50 ms) is {'met' if met else 'not met'} in
this run (load average {feed.get('load_average', '?')} when it began,
{feed.get('load_average_end', '?')} when it ended). The bare MLLP echo
is the ceiling of this client and framing; the bare Kafka produce what the one awaited
`acks=all` write behind each AA costs alone.
"""
