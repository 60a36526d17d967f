"""A storm of Server-Sent-Events clients that connect and vanish, on a real Kafka broker and
a real Redis server: flow's live stream gives back every connection, task, socket and byte
it took, keeps refusing a credential over its limit, and keeps serving a client that stays.

The service runs in this process (uvicorn on loopback) so that its asyncio tasks, its
sockets (``/proc/self/fd`` against ``/proc/net/tcp``) and its memory (tracemalloc) can be
counted before and after the storm."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import socket
import struct
import tracemalloc
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import pytest

from services.flow.app import create_app
from shared import events as ev
from shared.admin import ensure_topics
from shared.settings import FlowSettings
from shared.topics import FLOOR, topic_name
from tests.helpers import eventually, producer, serving
from tests.integration.flow_support import flow_settings

PER_CREDENTIAL = 12
STORM_TOKENS = [f"storm-screen-{i}-token-0000000" for i in range(8)]  # 8 clients each
BURST_TOKEN = "burst-screen-token-000000000"
STEADY_TOKEN = "steady-nurse-token-000000000"
WAVES = 4  # after a warm-up wave: 5 x 84 = 420 clients
WAVE_SIZE = 64  # vanishing clients per wave, spread over the storm credentials
BURST = PER_CREDENTIAL + 8  # one credential asks for more than its limit in every wave
MODES = ("before-response", "after-headers", "after-first-event", "after-first-event-rst")


@pytest.fixture
async def flow(kafka_bootstrap: str, redis_url: str, topic_prefix: str,
               ) -> AsyncIterator[tuple[Any, str]]:
    await ensure_topics(kafka_bootstrap, topic_prefix)
    credentials = [{"name": f"storm screen {i}", "role": "screen", "clinics": ["north"],
                    "token": token} for i, token in enumerate(STORM_TOKENS)]
    credentials += [{"name": "burst screen", "role": "screen", "clinics": ["north"],
                     "token": BURST_TOKEN},
                    {"name": "steady nurse", "role": "nurse", "clinics": ["north"],
                     "token": STEADY_TOKEN}]
    settings = FlowSettings(**flow_settings(kafka_bootstrap, redis_url, topic_prefix),
                            credentials=json.dumps(credentials),
                            flow_sse_max_per_credential=PER_CREDENTIAL,
                            flow_sse_max_total=500)
    app = create_app(settings)
    async with serving(app) as url:
        yield app, url


# ------------------------------------------------------------------ measuring


def _socket_inodes() -> set[str]:
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    return inodes


def server_connections(port: int) -> list[str]:
    """The TCP states of this process's sockets whose local port is the server's port,
    listening socket excepted: the server's side of its client connections."""
    ours = _socket_inodes()
    states = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as rows:
            next(rows)
            for row in rows:
                fields = row.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                if local_port == port and fields[3] != "0A" and fields[9] in ours:
                    states.append(fields[3])
    return states


async def open_streams(client: httpx.AsyncClient) -> float:
    """The hub's open connections, as /metrics reports them."""
    text = (await client.get("/metrics")).text
    line = next(x for x in text.splitlines() if x.startswith("clinicflow_sse_clients "))
    return float(line.split()[1])


async def settled(client: httpx.AsyncClient, wave: int) -> None:
    """Wait until the steady screen is the only open stream left."""
    try:
        await eventually(lambda: _only_one(client), timeout=60)
    except AssertionError:
        left = await open_streams(client)
        raise AssertionError(f"after wave {wave}, {left:.0f} streams still open (1 expected: "
                             "the steady screen)") from None


async def _only_one(client: httpx.AsyncClient) -> bool:
    return await open_streams(client) == 1


def traced_bytes() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


# ------------------------------------------------------------------ clients


async def vanishing_client(port: int, token: str, mode: str) -> int | None:
    """Open the live stream over a raw socket and drop it abruptly at the point ``mode``
    names; the status line's code, when the client waited for it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /clinics/north/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 f"Authorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n".encode())
    status = None
    try:
        await writer.drain()
        if mode != "before-response":
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
            status = int(head.split(b" ", 2)[1])
            if status == 200 and mode.startswith("after-first-event"):
                await asyncio.wait_for(reader.readuntil(b"event: board"), 60)
    finally:
        if mode.endswith("-rst"):  # a reset rather than a close: no goodbye at all
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()
    return status


async def held_client(port: int, token: str, opened: asyncio.Event) -> int:
    """Open the stream, report the status, hold the connection until ``opened`` is set by
    the test (every client of the burst has its answer), then vanish."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET /clinics/north/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     f"Authorization: Bearer {token}\r\n\r\n".encode())
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
        status = int(head.split(b" ", 2)[1])
        if status == 200:
            await opened.wait()
        return status
    finally:
        writer.transport.abort()


async def storm_wave(port: int, wave: int) -> list[int]:
    """One wave: clients vanishing at every stage, and a burst over one credential's
    limit held open until all its answers are in. The burst's status codes."""
    vanishing = [vanishing_client(port, STORM_TOKENS[i % len(STORM_TOKENS)],
                                  MODES[(i + wave) % len(MODES)]) for i in range(WAVE_SIZE)]
    opened = asyncio.Event()
    burst = [asyncio.create_task(held_client(port, BURST_TOKEN, opened)) for _ in range(BURST)]
    vanish = asyncio.gather(*vanishing)

    async def all_answered() -> bool:
        return sum(t.done() for t in burst) == BURST - PER_CREDENTIAL

    try:
        await eventually(all_answered, timeout=60)
    finally:
        opened.set()
    statuses = await asyncio.gather(*burst)
    refused = [s for s in await vanish if s not in (None, 200)]
    assert not refused, f"storm clients under their limit were refused: {refused}"
    return statuses


# ------------------------------------------------------------------ the story


@pytest.mark.reliability(
    "a storm of SSE clients connecting and vanishing (RST, close before/after the first "
    "event), one credential over its limit, events flowing",
    "over the limit gets 429; open streams, asyncio tasks and server sockets back to "
    "baseline; traced memory < 10 MiB up; a steady client still gets updates",
)
async def test_a_storm_of_vanishing_live_screens_leaves_nothing_behind(
    flow: tuple[Any, str], kafka_bootstrap: str, topic_prefix: str,
) -> None:
    _app, url = flow
    port = urlsplit(url).port
    assert port is not None
    floor = topic_name(FLOOR, topic_prefix)
    steady_boards: list[dict[str, Any]] = []

    # no keep-alive for the test's own requests: the steady screen is the one connection
    # the server should hold once the storm has passed
    async with producer(kafka_bootstrap) as kafka, \
            httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(
                max_keepalive_connections=0)) as client:

        async def announce(minutes: int) -> None:
            event = ev.make_event(ev.DelayAnnounced(provider_id=None, minutes=minutes,
                                                    reason="storm"),
                                  clinic_id="north", source="test")
            await kafka.send_and_wait(floor, ev.encode(event), key=b"north")

        async def steady_screen() -> None:
            async with client.stream("GET", "/clinics/north/stream", headers={
                    "Authorization": f"Bearer {STEADY_TOKEN}"}) as stream:
                assert stream.status_code == 200
                async for line in stream.aiter_lines():
                    if line.startswith("data: "):
                        steady_boards.append(orjson.loads(line[6:]))

        async def events_flowing(stop: asyncio.Event) -> None:
            minutes = 1
            while not stop.is_set():
                await announce(minutes)
                minutes = minutes % 300 + 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.05)

        def clinic_delay_is(minutes: int) -> Callable[[], bool]:
            def seen() -> bool:
                return any((b.get("clinic_delay") or {}).get("minutes") == minutes
                           for b in steady_boards)
            return seen

        await announce(1)  # the clinic has a board before anyone watches
        steady = asyncio.create_task(steady_screen())
        stop = asyncio.Event()
        flowing = asyncio.create_task(events_flowing(stop))
        try:
            await eventually(lambda: steady_boards, timeout=30)

            # a first wave warms every code path up; then the baselines are taken
            await storm_wave(port, 0)
            await settled(client, 0)
            tracemalloc.start()
            try:
                tasks_before = len(asyncio.all_tasks())
                memory_before = traced_bytes()

                for wave in range(1, WAVES + 1):
                    statuses = await storm_wave(port, wave)
                    assert sorted(statuses) == [200] * PER_CREDENTIAL + [429] * (
                        BURST - PER_CREDENTIAL), f"wave {wave}: {statuses}"
                    await settled(client, wave)

                await eventually(lambda: len(asyncio.all_tasks()) <= tasks_before,
                                 timeout=60)
                # one established connection (the steady screen's); none left half-closed
                await eventually(lambda: server_connections(port) == ["01"], timeout=60)
                grown = traced_bytes() - memory_before
            finally:
                tracemalloc.stop()
            assert grown < 10 * 1024 * 1024, f"{grown / 2**20:.1f} MiB still held"

            # the screen that stayed through the storm still follows the floor
            stop.set()
            await flowing
            await announce(555)
            await eventually(clinic_delay_is(555), timeout=30)
            assert not steady.done()
        finally:
            stop.set()
            flowing.cancel()
            steady.cancel()
            await asyncio.gather(flowing, steady, return_exceptions=True)
