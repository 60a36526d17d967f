"""Helpers the integration and end-to-end tests share: running a service for real
(uvicorn on a free loopback port, in-process or as a child process) and reading topics."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@contextlib.asynccontextmanager
async def serving(app: Any) -> AsyncIterator[str]:
    """Run an ASGI app with uvicorn in this event loop; yields its base URL."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None,
                            access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        for _ in range(200):
            if server.started:
                break
            if task.done():
                task.result()
            await asyncio.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(task), 30)
        except TimeoutError:
            stuck = io.StringIO()
            for other in asyncio.all_tasks():
                print(f"task {other.get_name()}:", file=stuck)
                other.print_stack(limit=8, file=stuck)
            task.cancel()
            raise AssertionError(f"the server did not stop within 30 s; tasks:\n"
                                 f"{stuck.getvalue()}") from None


class ServiceProcess:
    """A service run as a real child process (``clinicflow run NAME``), killable with -9."""

    def __init__(self, service: str, env: dict[str, str], log_path: Path, *,
                 tree: Path = REPO) -> None:
        """``tree``: the checkout it runs from (another one: bench/feed_ab.py)."""
        self.service = service
        self.tree = tree
        self.port = free_port()
        self.env = {**os.environ, **env, f"CLINICFLOW_{service.upper()}_PORT": str(self.port)}
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tools.cli", "run", self.service],
            cwd=self.tree, env=self.env, stdout=log, stderr=subprocess.STDOUT,
        )

    async def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient() as client:
            while time.monotonic() < deadline:
                assert self.process is not None and self.process.poll() is None, (
                    f"{self.service} exited: {self.log_path.read_text()[-3000:]}")
                with contextlib.suppress(httpx.HTTPError):
                    response = await client.get(f"{self.url}/readyz", timeout=2)
                    if response.status_code == 200:
                        return
                await asyncio.sleep(0.2)
        raise TimeoutError(f"{self.service} not ready: {self.log_path.read_text()[-3000:]}")

    def kill(self) -> None:
        """kill -9: no shutdown hook runs, nothing is flushed."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


async def read_topic(bootstrap: str, topic: str, *, timeout: float = 10.0,
                     expect: int | None = None) -> list[Any]:
    """Every record on ``topic`` from the beginning (aiokafka ConsumerRecords)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()  # learn every topic, not only ours
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        records: list[Any] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            positions = [await consumer.position(tp) for tp in tps]
            done = all(pos >= end[tp] for pos, tp in zip(positions, tps, strict=True))
            if done and (expect is None or len(records) >= expect):
                break
            if done and expect is not None:
                end = await consumer.end_offsets(tps)
            batch = await consumer.getmany(timeout_ms=200)
            for items in batch.values():
                records.extend(items)
        return records
    finally:
        await consumer.stop()


@contextlib.asynccontextmanager
async def producer(bootstrap: str) -> AsyncIterator[AIOKafkaProducer]:
    """A plain aiokafka producer, as any client outside clinicflow would use."""
    client = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                              enable_idempotence=True)
    await client.start()
    try:
        yield client
    finally:
        await client.stop()


async def all_relayed(relay: Any) -> None:
    """Until everything a service's outbox (``shared.outbox.OutboxRelay``) holds is on
    Kafka. A ``tick`` alone is not enough: the service's own relay loop, woken by the
    transaction that queued the entries, may hold the drain, and the tick then returns
    at once while that loop's publish is still under way. An entry leaves the outbox only
    once Kafka has acknowledged it, so an empty outbox means published."""
    await relay.tick()

    async def empty() -> bool:
        return bool(await relay.outbox.length() == 0)

    await eventually(empty)


async def eventually(check: Callable[[], Any], timeout: float = 15.0,
                     interval: float = 0.1) -> Any:
    """Poll an async or sync ``check`` until it returns a truthy value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last: {last!r})")
