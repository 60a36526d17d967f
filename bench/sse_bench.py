"""Screens at scale: many live screens (SSE) on flow, floor events at fixed rates, and
the time from an event's publication to the last screen of its clinic showing it.

A clinic network: ``clinics`` clinics, ``per_clinic`` streams each (half waiting-room TVs,
``screen``; half nurse stations, ``nurse``), one flow process. Every event changes its
clinic's board: an arrival of a marked ticket (``Z<n>``), or the cancellation of the
oldest marked ticket there (each clinic keeps a few ordinary waiting patients too, so a
board has a realistic size). A sample is one event: the time from just before the
producer was given it to the moment the last stream of its clinic received a board
where the ticket appeared (an arrival) or disappeared (a cancellation). Every event is
a sample; an event some stream never saw is counted as missed, not as a sample.

The screens are raw-socket asyncio clients (a protocol reading the chunked SSE stream,
orjson for each frame) spread over several processes (``python -m bench.sse_bench
client``), so the clients are not the bottleneck: each process's CPU share is reported
beside the figures. The baseline in the same run is one stream per clinic (the same
events, a tenth of the frames), alternated with the full network.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import orjson
from aiokafka import AIOKafkaProducer

from bench.http_bench import ms, process_cpu_seconds
from shared import events as ev
from shared.admin import ensure_topics
from shared.topics import FLOOR, topic_name
from tests.helpers import ServiceProcess

REPO = Path(__file__).resolve().parents[1]
MARKED = re.compile(r"^Z\d{1,4}$")
FILLERS = 8  # ordinary waiting patients per clinic
ROLES = ("screen", "nurse")


# ------------------------------------------------------------------ the client side


@dataclass
class Seen:
    """What one client process saw, by (sign, clinic, ticket): the latest first sight
    among its streams (monotonic ns) and how many of its streams saw it."""

    latest: dict[tuple[str, str, str], list[int]] = field(default_factory=dict)
    frames: int = 0
    bytes: int = 0

    def saw(self, key: tuple[str, str, str], at: int) -> None:
        kept = self.latest.get(key)
        if kept is None:
            self.latest[key] = [at, 1]
        else:
            kept[0] = max(kept[0], at)
            kept[1] += 1


class Screen(asyncio.Protocol):
    """One live screen: sends the request, reads the chunked stream, and notes when a
    marked ticket appears on or leaves its clinic's board."""

    def __init__(self, clinic: str, request: bytes, seen: Seen) -> None:
        self.clinic = clinic
        self.request = request
        self.seen = seen
        self.buffer = b""
        self.status: int | None = None
        self.previous: frozenset[str] = frozenset()
        self.first_board = asyncio.get_running_loop().create_future()
        self.closed = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        self.seen.bytes += len(data)
        buffer = self.buffer + data if self.buffer else data
        if self.status is None:
            if b"\r\n" not in buffer:
                self.buffer = buffer
                return
            self.status = int(buffer.split(b" ", 2)[1])
            if self.status != 200 and not self.first_board.done():
                self.first_board.set_result(False)
        end = buffer.rfind(b"\n\n")
        if end < 0:
            self.buffer = buffer
            return
        self.buffer = buffer[end + 2:]
        for frame in buffer[:end].split(b"\n\n"):
            start = frame.find(b"data: ")
            if start < 0:
                continue  # retry, keep-alive, headers
            self.seen.frames += 1
            board = orjson.loads(frame[start + 6:])
            current = frozenset(w["ticket_code"] for w in board["waiting"]
                                if MARKED.match(w["ticket_code"]))
            if current != self.previous:
                for ticket in current - self.previous:
                    self.seen.saw(("+", self.clinic, ticket), now)
                for ticket in self.previous - current:
                    self.seen.saw(("-", self.clinic, ticket), now)
                self.previous = current
            if not self.first_board.done():
                self.first_board.set_result(True)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.first_board.done():
            self.first_board.set_result(False)
        if not self.closed.done():
            self.closed.set_result(None)


async def client_main(port: int, clinics: list[str], per_clinic: int, role_offset: int
                      ) -> None:
    """A client process: ``per_clinic`` streams on each clinic; commands on stdin (one a
    line): OPEN, CLOSE, DUMP (print what was seen since the last DUMP, as JSON), EXIT."""
    loop = asyncio.get_running_loop()
    seen = Seen()
    screens: list[Screen] = []

    async def open_all() -> dict[str, int]:
        specs = [(clinic, ROLES[(role_offset + n) % len(ROLES)])
                 for clinic in clinics for n in range(per_clinic)]
        for start in range(0, len(specs), 50):  # a few at a time: no burst of SYNs
            batch = []
            for clinic, role in specs[start:start + 50]:
                request = (f"GET /clinics/{clinic}/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                           f"Authorization: Bearer dev-{role}\r\n"
                           "Accept: text/event-stream\r\n\r\n").encode()
                batch.append(loop.create_connection(partial(Screen, clinic, request, seen),
                                                    "127.0.0.1", port))
            for _transport, screen in await asyncio.gather(*batch):
                screens.append(screen)
        ok = await asyncio.wait_for(asyncio.gather(*(s.first_board for s in screens)), 60)
        return {"open": sum(ok), "refused": len(ok) - sum(ok)}

    async def close_all() -> None:
        for screen in screens:
            if screen.transport is not None:
                screen.transport.close()
        await asyncio.gather(*(s.closed for s in screens))
        screens.clear()

    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := (await reader.readline()).decode().strip():
        if line == "OPEN":
            answer: dict[str, Any] = await open_all()
        elif line == "CLOSE":
            await close_all()
            answer = {"open": 0}
        elif line == "DUMP":
            answer = {"seen": [[*key, at, count] for key, (at, count) in seen.latest.items()],
                      "frames": seen.frames, "bytes": seen.bytes}
            seen.latest.clear()
            seen.frames = seen.bytes = 0
        else:
            break
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()
    await close_all()


# ------------------------------------------------------------- the coordinator side


class ClientProcess:
    """A ``client`` process and its command line."""

    def __init__(self, port: int, clinics: list[str], per_clinic: int, role_offset: int,
                 log: Path) -> None:
        self.streams = len(clinics) * per_clinic
        self.log = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.sse_bench", "client", "--port", str(port),
             "--clinics", ",".join(clinics), "--per-clinic", str(per_clinic),
             "--role-offset", str(role_offset)],
            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log)

    def ask(self, command: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(command.encode() + b"\n")
        self.process.stdin.flush()

    def answer(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"an SSE client process ended ({self.process.poll()})")
        result: dict[str, Any] = json.loads(line)
        return result

    def cpu(self) -> float:
        return process_cpu_seconds(self.process.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                self.ask("EXIT")
                self.process.wait(20)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait(10)
        self.log.close()


def ask_all(clients: Iterable[ClientProcess], command: str) -> list[dict[str, Any]]:
    """Send a command to every client process, then read every answer."""
    clients = list(clients)
    for client in clients:
        client.ask(command)
    return [client.answer() for client in clients]


def _env(bootstrap: str, redis_url: str, prefix: str, streams: int) -> dict[str, str]:
    return {"CLINICFLOW_KAFKA_BOOTSTRAP": bootstrap, "CLINICFLOW_REDIS_URL": redis_url,
            "CLINICFLOW_TOPIC_PREFIX": prefix, "CLINICFLOW_REDIS_PREFIX": prefix.rstrip("."),
            "CLINICFLOW_FLOW_GROUP_ID": f"{prefix}flow",
            "CLINICFLOW_FLOW_TICK_SECONDS": "3600",
            "CLINICFLOW_FLOW_SSE_MAX_TOTAL": str(streams + 100),
            "CLINICFLOW_FLOW_SSE_MAX_PER_CREDENTIAL": str(streams),
            "CLINICFLOW_LOG_LEVEL": "WARNING", "CLINICFLOW_LOG_FORMAT": "json"}


class Floor:
    """Floor events for the clinics, each clinic alternating between a marked arrival and
    the cancellation of its oldest marked ticket; remembers when each was published."""

    def __init__(self, producer: AIOKafkaProducer, topic: str, clinics: list[str]) -> None:
        self.producer = producer
        self.topic = topic
        self.clinics = clinics
        self.sequence = 0
        self.waiting: dict[str, list[tuple[str, str]]] = {c: [] for c in clinics}
        self.turn = 0

    async def send(self, clinic: str, payload: ev.Payload) -> None:
        event = ev.make_event(payload, clinic_id=clinic, source="bench",
                              occurred_at=datetime.now(UTC))
        await self.producer.send(self.topic, ev.encode(event), key=clinic.encode())

    async def next_event(self) -> tuple[str, str, str, int]:
        """Publish the next event; (sign, clinic, ticket, published at in ns)."""
        clinic = self.clinics[self.turn % len(self.clinics)]
        self.turn += 1
        queue = self.waiting[clinic]
        if len(queue) >= 3:
            visit, ticket = queue.pop(0)
            at = time.monotonic_ns()
            await self.send(clinic, ev.ArrivalCancelled(visit_id=visit))
            return "-", clinic, ticket, at
        self.sequence += 1
        visit, ticket = f"s-{self.sequence}", f"Z{self.sequence % 10000}"
        queue.append((visit, ticket))
        at = time.monotonic_ns()
        await self.send(clinic, ev.PatientArrived(visit_id=visit, ticket_code=ticket,
                                                  provider_id="dr-s", visit_type="follow_up"))
        return "+", clinic, ticket, at


def _cpu(pids: list[int]) -> float:
    return sum(process_cpu_seconds(pid) for pid in pids)


async def _measure(floor: Floor, clients: list[ClientProcess], flow_pids: list[int], rate: int,
                   seconds: float, per_clinic: int) -> dict[str, Any]:
    """Events at ``rate`` for ``seconds``; every stream of every clinic open. Flow's CPU is
    that of all its processes (``flow_pids``)."""
    ask_all(clients, "DUMP")  # forget what came before
    cpu_flow, cpu_clients = _cpu(flow_pids), [c.cpu() for c in clients]
    published: dict[tuple[str, str, str], int] = {}
    total = max(1, int(rate * seconds))
    started = time.perf_counter()
    for n in range(total):
        delay = started + n / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        sign, clinic, ticket, at = await floor.next_event()
        published[(sign, clinic, ticket)] = at
    await floor.producer.flush()
    achieved = total / (time.perf_counter() - started)
    await asyncio.sleep(2.0)  # the last events reach every screen
    wall = time.perf_counter() - started
    answers = ask_all(clients, "DUMP")
    flow_cpu = _cpu(flow_pids) - cpu_flow
    client_shares = [round((c.cpu() - before) / wall, 2)
                     for c, before in zip(clients, cpu_clients, strict=True)]
    latest: dict[tuple[str, str, str], list[int]] = {}
    for answer in answers:
        for sign, clinic, ticket, at, count in answer["seen"]:
            kept = latest.setdefault((sign, clinic, ticket), [0, 0])
            kept[0] = max(kept[0], at)
            kept[1] += count
    latencies = sorted((latest[key][0] - at) / 1e6 for key, at in published.items()
                       if key in latest and latest[key][1] >= per_clinic)
    frames = sum(a["frames"] for a in answers)
    return {
        "achieved_events_per_second": round(achieved),
        "samples": len(latencies), "missed": len(published) - len(latencies),
        "p50_ms": ms(statistics.median(latencies)) if latencies else None,
        "p99_ms": ms(latencies[int(0.99 * (len(latencies) - 1))]) if latencies else None,
        "max_ms": ms(latencies[-1]) if latencies else None,
        "frames": frames, "frames_per_second": round(frames / wall),
        "megabytes_per_second": round(sum(a["bytes"] for a in answers) / wall / 1e6, 1),
        "flow_cpu_share": round(flow_cpu / wall, 2),
        "flow_cpu_us_per_frame": round(flow_cpu / max(1, frames) * 1e6, 1),
        "flow_cpu_us_per_event": round(flow_cpu / total * 1e6),
        "client_cpu_shares": client_shares,
    }


def _median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"runs": runs}
    for key in ("p50_ms", "p99_ms", "max_ms", "flow_cpu_share", "flow_cpu_us_per_frame",
                "flow_cpu_us_per_event", "frames_per_second", "achieved_events_per_second"):
        values = [r[key] for r in runs if r[key] is not None]
        if values:
            median = statistics.median(values)
            out[key] = ms(median) if key.endswith("_ms") else round(median, 2)
            out[f"{key}_range"] = [min(values), max(values)]
    out["samples_per_run"] = [r["samples"] for r in runs]
    out["missed_per_run"] = [r["missed"] for r in runs]
    out["client_cpu_share_max"] = max(max(r["client_cpu_shares"]) for r in runs)
    return out


async def screens(bootstrap: str, redis_url: str, workdir: Path, scale: float = 1.0,
                  clinics: int = 100, per_clinic: int = 10,
                  rates: tuple[int, ...] = (100, 500, 1000), runs: int = 3,
                  processes: int = 4, instances: int = 1) -> dict[str, Any]:
    """``clinics`` x ``per_clinic`` live screens on flow; event to last screen at each
    rate, ``runs`` times, alternated with the baseline (one screen per clinic, 500/s).
    ``instances`` flow processes share the floor's partitions (one consumer group) and the
    screens (the client processes take their ports in turn; the baseline's are on the
    first): each renders every board of its screens' clinics once, whoever drew it."""
    started_at = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4 * clinics * per_clinic:  # flow and the clients each hold every stream
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 16384), hard))
    prefix = f"s{uuid.uuid4().hex[:6]}."
    await ensure_topics(bootstrap, prefix)
    topic = topic_name(FLOOR, prefix)
    names = [f"net{n:03d}" for n in range(clinics)]
    streams = clinics * per_clinic
    flows = [ServiceProcess("flow", _env(bootstrap, redis_url, prefix, streams),
                            workdir / f"screens-flow-{n}.log") for n in range(instances)]
    flow = flows[0]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0,
                                enable_idempotence=True)
    clients: list[ClientProcess] = []
    for each in flows:
        each.start()
    flow_pids = [each.process.pid for each in flows if each.process is not None]
    await producer.start()
    try:
        for each in flows:
            await each.wait_ready(120)
        floor = Floor(producer, topic, names)
        for clinic in names:  # rooms and ordinary waiting patients: a board of a real size
            for room in range(1, 4):
                await floor.send(clinic, ev.RoomReady(room_id=f"exam-{room}"))
            for n in range(1, FILLERS + 1):
                await floor.send(clinic, ev.PatientArrived(
                    visit_id=f"{clinic}-f{n}", ticket_code=f"A-{n}", provider_id="dr-s",
                    visit_type="follow_up"))
        await producer.flush()
        async with httpx.AsyncClient(base_url=flow.url, timeout=10,
                                     headers={"Authorization": "Bearer dev-nurse"}) as http:
            for _ in range(600):
                last = await http.get(f"/clinics/{names[-1]}/board")
                if last.status_code == 200 and len(last.json()["waiting"]) == FILLERS:
                    break
                await asyncio.sleep(0.1)
            else:
                raise RuntimeError("flow never showed the seeded boards")
            board_bytes = {role: len((await http.get(
                f"/clinics/{names[0]}/board",
                headers={"Authorization": f"Bearer dev-{role}"})).content) for role in ROLES}
        # the baseline's streams (one per clinic) in one process; the rest spread over more
        base = ClientProcess(flow.port, names, 1, 0, workdir / "screens-client-0.log")
        clients.append(base)
        rest: list[ClientProcess] = []
        if per_clinic > 1:
            # as many client processes per flow process (at least), in turn
            count = -(-max(1, processes - 1) // instances) * instances
            share = max(1, -(-clinics // count))
            for n, start in enumerate(range(0, clinics, share), start=1):
                rest.append(ClientProcess(flows[(n - 1) % instances].port,
                                          names[start:start + share], per_clinic - 1, 1,
                                          workdir / f"screens-client-{n}.log"))
        clients += rest
        opened = ask_all([base], "OPEN")[0]
        if opened["refused"]:
            raise RuntimeError(f"streams refused: {opened}")
        target = max(200, int(3000 * scale))  # events per measurement: 2,000+ samples
        results: dict[str, list[dict[str, Any]]] = {str(r): [] for r in rates}
        baseline: list[dict[str, Any]] = []
        load_start = round(os.getloadavg()[0], 2)
        for run in range(runs):
            baseline.append(await _measure(floor, [base], flow_pids, 500, target / 500, 1))
            for answer in ask_all(rest, "OPEN"):
                if answer["refused"]:
                    raise RuntimeError(f"streams refused: {answer}")
            order = rates[run % len(rates):] + rates[:run % len(rates)]
            for rate in order:
                results[str(rate)].append(await _measure(floor, clients, flow_pids, rate,
                                                         target / rate, per_clinic))
            ask_all(rest, "CLOSE")
        load_end = round(os.getloadavg()[0], 2)
    finally:
        for client in clients:
            client.stop()
        await producer.stop()
        for each in flows:
            each.stop()
    rated = {rate: _median_of(items) for rate, items in results.items()}
    return {
        "measured_at": started_at,
        "clinics": clinics, "streams": streams, "per_clinic": per_clinic,
        "flow_instances": instances,
        "client_processes": len(clients), "board_bytes": board_bytes,
        "client_cpu_share_max": max(v["client_cpu_share_max"] for v in rated.values()),
        "rates": rated,
        "baseline_one_stream_per_clinic_500": _median_of(baseline),
        "load_average": {"start": load_start, "end": load_end},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="an SSE client process of the bench")
    parser.add_argument("role", choices=["client"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--clinics", required=True)
    parser.add_argument("--per-clinic", type=int, required=True)
    parser.add_argument("--role-offset", type=int, default=0)
    args = parser.parse_args()
    asyncio.run(client_main(args.port, args.clinics.split(","), args.per_clinic,
                            args.role_offset))


if __name__ == "__main__":
    main()


# ------------------------------------------------------------------------ the report


def _spread(item: dict[str, Any], key: str) -> str:
    low, high = item[f"{key}_range"]
    return f"{low:,}–{high:,}"


def marginal_cpu_per_frame(s: dict[str, Any]) -> float | None:
    """Flow's CPU for each frame the full network adds over the baseline at 500/s: what
    one more screen costs per board, the fan-out alone."""
    full, base = s["rates"].get("500"), s["baseline_one_stream_per_clinic_500"]
    if not full:
        return None
    extra_frames = full["frames_per_second"] - base["frames_per_second"]
    extra_cpu = full["flow_cpu_share"] - base["flow_cpu_share"]
    if extra_frames <= 0 or extra_cpu <= 0:  # lost in what the machine's other work took
        return None
    return round(extra_cpu / extra_frames * 1e6, 1)


def report_rows(s: dict[str, Any] | None) -> list[tuple[str, str]]:
    """The summary table's rows for the screens."""
    if not s:
        return []
    rows = []
    for rate, item in s["rates"].items():
        rows.append((f"event to the last of {s['streams']:,} screens at {rate} events/s",
                     f"p50 {item['p50_ms']:,} ms, p99 {item['p99_ms']:,} ms "
                     f"({_spread(item, 'p99_ms')} over {len(item['runs'])} runs of "
                     f"{min(item['samples_per_run']):,}+ samples)"))
    base = s["baseline_one_stream_per_clinic_500"]
    rows.append((f"the same, one screen per clinic ({s['clinics']}), 500 events/s",
                 f"p50 {base['p50_ms']:,} ms, p99 {base['p99_ms']:,} ms "
                 f"({_spread(base, 'p99_ms')})"))
    return rows


def two_flows_rows(one: dict[str, Any] | None, two: dict[str, Any] | None
                   ) -> list[tuple[str, str]]:
    """The summary row of the screens on two flow processes, beside one."""
    if not one or not two or "500" not in one["rates"]:
        return []
    a, b = one["rates"]["500"], two["rates"]["500"]
    return [(f"the {two['streams']:,} screens at 500 events/s on two flow processes",
             f"p99 {b['p99_ms']:,} ms ({_spread(b, 'p99_ms')}) against {a['p99_ms']:,} ms on "
             f"one; flow CPU per event {round(b['flow_cpu_us_per_event']):,} µs against "
             f"{round(a['flow_cpu_us_per_event']):,} µs")]


def _two_flows_text(one: dict[str, Any], two: dict[str, Any] | None) -> str:
    if not two or "500" not in one["rates"]:
        return ""
    a, b = one["rates"]["500"], two["rates"]["500"]
    ratio = round(b["flow_cpu_us_per_event"] / a["flow_cpu_us_per_event"], 2)
    lowered = ("below" if b["p99_ms"] < 0.9 * a["p99_ms"] else
               "above" if b["p99_ms"] > 1.1 * a["p99_ms"] else "about the same as")
    return f"""

The same network on two flow processes (`screens_two_flows`, measured next in the same run:
one consumer group sharing the floor's partitions, the screens' client processes on the two
in turn, so each process renders every board of its screens' clinics once, whoever drew it):
500 events/s p50 {b['p50_ms']:,} ms, p99 **{b['p99_ms']:,} ms** (runs {_spread(b, 'p99_ms')})
against {a['p99_ms']:,} ms on one process (runs {_spread(a, 'p99_ms')}); the two used
{b['flow_cpu_share']} of a core together at {round(b['flow_cpu_us_per_event']):,} µs of CPU per
event, {ratio}x one process's (each pays for its own batches, fetches and renderings). On 2
cores shared with Kafka, Redis and the screens, the p99 on two processes was {lowered}
one's."""


def report_section(s: dict[str, Any] | None, two: dict[str, Any] | None = None) -> str:
    """The screens section of docs/performance.md (``two``: the same on two flow
    processes, ``screens_two_flows``)."""
    if not s:
        return ""
    lines = ["| events/s | screens | samples per run | p50 | p99 (range) | max | frames/s | "
             "flow CPU | flow CPU per event |", "|---|---|---|---|---|---|---|---|---|"]
    base = s["baseline_one_stream_per_clinic_500"]
    for label, screens_, item in [*((r, s["streams"], v) for r, v in s["rates"].items()),
                                  ("500 (baseline)", s["clinics"], base)]:
        lines.append(
            f"| {label} | {screens_:,} | {', '.join(f'{n:,}' for n in item['samples_per_run'])}"
            f" | {item['p50_ms']:,} ms | {item['p99_ms']:,} ms ({_spread(item, 'p99_ms')}) | "
            f"{item['max_ms']:,} ms | {round(item['frames_per_second']):,} | "
            f"{item['flow_cpu_share']} core | {round(item['flow_cpu_us_per_event']):,} µs |")
    full = s["rates"].get("500")
    verdict = ""
    if full:
        met = full["p99_ms"] < 100
        verdict = (f"The target, p99 under 100 ms at 500 events/s with {s['streams']:,} "
                   f"screens, is {'**met**' if met else '**not met**'} in this run "
                   f"(median p99 {full['p99_ms']:,} ms, runs {_spread(full, 'p99_ms')}).")
    missed = sum(sum(v["missed_per_run"]) for v in [*s["rates"].values(), base])
    short = [rate for rate, v in s["rates"].items() if min(v["samples_per_run"]) < 2000]
    if short:
        verdict_short = (f" At {', '.join(short)} events/s a run kept fewer than 2,000 samples: "
                         "flow fell behind, its batches grew and held a clinic's arrival with "
                         "its cancellation, so that board never showed the ticket.")
    else:
        verdict_short = ""
    per_frame = marginal_cpu_per_frame(s)
    per_frame_text = (f"{per_frame} µs" if per_frame is not None else
                      "not told apart from the machine's other work in this run")
    need = ""
    if full and per_frame:
        # every event of 500/s drawn as in the baseline, and a frame to each of its screens
        cores = (base["flow_cpu_us_per_event"] * 500 + per_frame * 500 * s["per_clinic"]) / 1e6
        need = (f" On these figures, 500 events/s to {s['streams']:,} screens with no board "
                f"skipped asks about {cores:.2f} of a core of flow; the process was given "
                f"{full['flow_cpu_share']} of a core (median), and the rest of the machine "
                "(Kafka, Redis, the clients, other work) the rest.")
    load = s["load_average"]
    return f"""## Screens at scale

Measured on {s.get('measured_at', '?')}. {s['streams']:,} live streams (SSE) on one flow
process: {s['clinics']} clinics with {s['per_clinic']} screens each (half waiting-room TVs,
the `screen` view of {s['board_bytes']['screen']:,} bytes, half nurse stations, the `nurse`
view of {s['board_bytes']['nurse']:,} bytes). Floor events at fixed rates, each changing its
clinic's board (a marked arrival, or the cancellation of the clinic's oldest marked ticket;
{FILLERS} ordinary patients wait at each clinic). A sample is one event: from just before it
was handed to the Kafka producer to the moment the last screen of its clinic received a
board where the ticket appeared or left, so it holds Kafka (`acks=all`), flow's batch, the
board written and published through Redis, and the fan-out. Every event is a sample;
{missed} events some screen never saw were counted apart (a board can skip an event when a
batch holds two of a clinic's). {len(base['runs'])} runs per rate, each run of every rate
alternated with the baseline (one screen per clinic, 500 events/s, a tenth of the frames):
medians of the runs, range in brackets. Load average {load['start']} at the start of this
part, {load['end']} at its end, on 2 cores.

{chr(10).join(lines)}

{verdict} Flow's CPU per frame sent, counted as what the full network costs over the
baseline at 500 events/s divided by the frames it adds: {per_frame_text}.{need}{verdict_short}

The screens are {s['client_processes']} client processes of raw asyncio sockets (a
protocol reading the chunked stream, orjson for each frame, no HTTP library), the
baseline's streams in one of them: none used more than {s['client_cpu_share_max']} of a
core, so they were waiting for frames, not behind them.{_two_flows_text(s, two)}

{SCREENS_NOTES}
"""


# what the profiles said (py-spy on flow during the run, taken by hand on 2026-12-07)
SCREENS_NOTES = """\
Where flow's CPU goes at 500 events/s (py-spy on the process with one screen per clinic,
2026-12-07, uvloop in place): flow then spends 1.4-1.7 ms of CPU per event, thirty times
what an event costs it in a backlog (the throughput above), because at that pace a 20 ms
batch holds about ten events of ten clinics and each batch draws and sends the board of
every clinic it touched: a board per event. Drawing the
boards is a quarter (the estimates, the day's operations report and its undo window, the
Prometheus gauges of each board), rendering each role's view on the clinic's clock an
eighth, handing frames to the streams an eighth, publishing the changed estimates (and the
TV's told ranges) with the Kafka producer about a fifth, asyncio's own work a sixth; no one
part is large enough that removing it would bring the p99 at 500 events/s under 100 ms (two
of them, the gauges' label lookups and the clock's conversions, were tried and made no
difference beyond the noise of four alternating runs). At 1,000 screens flow needs more of
a core than it gets beside Kafka, Redis and the screens' processes on 2 cores, and the
queue that forms is the p99. What earlier changes fixed: a board was parsed, cut to the
role's view and serialised again for each screen watching it, now once per role; redis-py's
pub/sub handler built a debug line of every board whether or not it was logged; a screen
held up to four boards and a busy flow sent the stale ones too, now it holds the newest;
and a network of screens reconnecting together read one snapshot per stream past the Redis
pool's 100 connections, now each clinic's snapshot is read once, 32 clinics at a time."""
