"""The real local stack: topics as declared, a Kafka round trip, Redis with an append-only
file, restarts that keep the data, the `clinicflow stack` command, and `make up` run again
and again (after Ctrl-C, after a kill) without a dead letter."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from redis.asyncio import Redis

from shared.topics import ALL_TOPICS, AUDIT, DEAD_LETTER, ESTIMATES, FLOOR, topic_name
from tests.helpers import eventually, read_topic
from tools.stack import (
    REPO,
    LocalStack,
    create_topics,
    free_ports,
    is_our_process,
    stop_recorded,
)


async def _partitions_and_retention(bootstrap: str,
                                    names: list[str]) -> tuple[dict[str, int], dict[str, int]]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics(names)
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name, {"retention.ms": None})
             for name in names])
    finally:
        await admin.close()
    partitions = {d["topic"]: len(d["partitions"]) for d in described}
    retention = {}
    for response in responses:
        for resource in response.to_object()["resources"]:
            for entry in resource["config_entries"]:
                if entry["config_names"] == "retention.ms":
                    retention[resource["resource_name"]] = int(entry["config_value"])
    return partitions, retention


async def test_topics_are_created_with_their_declared_partitions_and_retention(
    kafka_bootstrap: str, topics: dict[str, str],
) -> None:
    partitions, retention = await _partitions_and_retention(kafka_bootstrap,
                                                            list(topics.values()))
    for spec in ALL_TOPICS:
        assert partitions[topics[spec.name]] == spec.partitions, spec.name
        assert retention[topics[spec.name]] == spec.retention_ms, spec.name


async def test_creating_the_topics_again_changes_nothing(
    kafka_bootstrap: str, topics: dict[str, str], topic_prefix: str,
) -> None:
    assert await create_topics(kafka_bootstrap, topic_prefix) == []


async def _produce_and_read_back(bootstrap: str, topic: str, value: bytes) -> list[bytes]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                enable_idempotence=True)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=b"north-clinic")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"{topic}.reader",
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    try:
        batches = await consumer.getmany(timeout_ms=10_000, max_records=10)
        return [record.value or b"" for records in batches.values() for record in records]
    finally:
        await consumer.stop()


async def test_a_record_goes_through_the_broker_and_back(
    kafka_bootstrap: str, topics: dict[str, str],
) -> None:
    topic = topics[AUDIT.name]
    assert await _produce_and_read_back(kafka_bootstrap, topic, b'{"seen": "room 4"}') == [
        b'{"seen": "room 4"}']


async def test_redis_keeps_an_append_only_file_and_listens_on_loopback(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    try:
        assert (await redis.config_get("appendonly"))["appendonly"] == "yes"
        assert (await redis.config_get("bind"))["bind"] == "127.0.0.1"
    finally:
        await redis.aclose()


async def test_a_crashed_broker_and_redis_come_back_on_their_port_with_their_data(
    make_stack: Callable[[], LocalStack],
) -> None:
    # a private stack: the session broker holds every test's topics, and loading them all
    # again after a crash takes far longer than this small one does
    local = await asyncio.to_thread(make_stack)
    await create_topics(local.kafka_bootstrap)
    redis = Redis.from_url(local.redis_url)
    try:
        await redis.set("room:4", "ready")
    finally:
        await redis.aclose()
    topic = topic_name(AUDIT)
    first = await _produce_and_read_back(local.kafka_bootstrap, topic, b"before")

    await asyncio.to_thread(local.restart_redis, kill=True)
    await asyncio.to_thread(local.restart_kafka, kill=True)

    redis = Redis.from_url(local.redis_url)
    try:
        assert await redis.get("room:4") == b"ready"  # replayed from the append-only file
    finally:
        await redis.aclose()
    after = await _produce_and_read_back(local.kafka_bootstrap, topic, b"after")
    assert first == [b"before"] and after == [b"before", b"after"]


def test_stack_up_detached_status_and_down_leave_no_process_behind(tmp_path: Path) -> None:
    kafka_port, redis_port = free_ports(2)
    env = {**os.environ, "CLINICFLOW_STATE_DIR": str(tmp_path),
           "CLINICFLOW_KAFKA_PORT": str(kafka_port), "CLINICFLOW_REDIS_PORT": str(redis_port),
           "CLINICFLOW_TOPIC_PREFIX": "cli."}

    def clinicflow(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "tools.cli", "stack", *args], cwd=REPO,
                              env=env, capture_output=True, text=True, timeout=180)

    processes: list[tuple[int, str, int]] = []
    try:
        up = clinicflow("up", "--detach")
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"127.0.0.1:{kafka_port}" in up.stdout
        recorded = json.loads((tmp_path / "stack.json").read_text())
        processes += [(recorded[n]["pid"], recorded[n]["hint"], recorded[n]["started"])
                      for n in ("kafka", "redis")]
        assert all(is_our_process(*process) for process in processes)

        status = clinicflow("status")
        assert status.returncode == 0, status.stdout
        assert status.stdout.count("running, answering") == 2

        again = clinicflow("up", "--detach")
        assert again.returncode == 0 and "already up" in again.stdout
        _, retention = asyncio.run(_partitions_and_retention(
            f"127.0.0.1:{kafka_port}", [topic_name(spec, "cli.") for spec in ALL_TOPICS]))
        assert len(retention) == len(ALL_TOPICS)
    finally:
        down = clinicflow("down")
    assert down.returncode == 0
    assert "stopped kafka" in down.stdout and "stopped redis" in down.stdout
    assert not any(is_our_process(*process) for process in processes)
    assert not (tmp_path / "stack.json").exists()
    assert clinicflow("status").returncode == 1


# ------------------------------------------------------------------------- make up

UP_SERVICES = ("checkin", "flow", "notifications", "billing")
FLOOR_GROUPS = {"flow", "notifications", "billing"}  # the services' default consumer groups


class MakeUp:
    """`clinicflow up` run as a person runs it, on ports of its own and a state directory
    of its own, so a developer's `make up` on 9092/8001-8004 is left alone."""

    def __init__(self, state: Path) -> None:
        kafka, redis, *services = free_ports(2 + len(UP_SERVICES))
        self.ports = dict(zip(UP_SERVICES, services, strict=True))
        self.bootstrap = f"127.0.0.1:{kafka}"
        self.state = state
        keep = {"CLINICFLOW_CACHE_DIR"}  # Kafka's jars; nothing else of the caller's
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith("CLINICFLOW_") or k in keep}
        self.env.update({"CLINICFLOW_STATE_DIR": str(state),
                         "CLINICFLOW_KAFKA_PORT": str(kafka),
                         "CLINICFLOW_REDIS_PORT": str(redis),
                         **{f"CLINICFLOW_{name.upper()}_PORT": str(port)
                            for name, port in self.ports.items()}})
        self.runs = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.output = state / "up.out"

    def start(self, speed: float = 10.0) -> None:
        self.runs += 1
        self.output = self.state.parent / f"run{self.runs}.out"
        with open(self.output, "wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tools.cli", "up", "--speed", str(speed)], cwd=REPO,
                env=self.env, stdout=out, stderr=subprocess.STDOUT)

    def said(self) -> str:
        return self.output.read_text(errors="replace")

    async def day_so_far_published(self) -> int:
        """How many events of the day so far the demo published at once."""
        def published() -> int | None:
            assert self.process is not None
            found = re.search(r"the day so far is published \((\d+) events\)", self.said())
            if found is None and self.process.poll() is not None:
                raise AssertionError(f"`clinicflow up` exited:\n{self.said()}")
            return int(found.group(1)) if found else None

        count: int = await eventually(published, timeout=180, interval=0.2)
        return count

    def stop(self) -> int:
        """Ctrl-C, as in the terminal; its exit code."""
        assert self.process is not None
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(90)

    def kill(self) -> None:
        """kill -9 of `clinicflow up` alone: its services, Kafka and Redis live on."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    def clean_up(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        stop_recorded(self.state / "stack.json")


async def _end_offsets(bootstrap: str) -> dict[TopicPartition, int]:
    """The end of every partition of the floor and estimate topics, now."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        partitions = [TopicPartition(topic_name(spec), p) for spec in (FLOOR, ESTIMATES)
                      for p in sorted(consumer.partitions_for_topic(topic_name(spec)) or ())]
        ends: dict[TopicPartition, int] = await consumer.end_offsets(partitions)
        return ends
    finally:
        await consumer.stop()


async def _caught_up(bootstrap: str, ends: dict[TopicPartition, int]) -> bool:
    """Every consumer group has applied what was on its topics at ``ends`` (the services
    commit to Kafka what they have applied; the floor groups must all be there)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        groups = [group for group, _protocol in await admin.list_consumer_groups()]
        on_floor = set()
        for group in groups:
            committed = await admin.list_consumer_group_offsets(group)
            for tp, end in ends.items():
                if tp.topic not in {t.topic for t in committed}:
                    continue  # a topic this group does not read
                if tp.topic == topic_name(FLOOR):
                    on_floor.add(group)
                done = committed.get(tp)
                if end > 0 and (done is None or done.offset < end):
                    return False
        return on_floor >= FLOOR_GROUPS
    finally:
        await admin.close()


async def _dead_letters(up: MakeUp) -> int:
    """Dead letters counted by the services (when they applied the event) and on the topic."""
    counted = 0
    async with httpx.AsyncClient() as client:
        for port in up.ports.values():
            text = (await client.get(f"http://127.0.0.1:{port}/metrics", timeout=5)).text
            counted += sum(int(float(line.rsplit(" ", 1)[1])) for line in text.splitlines()
                           if line.startswith("clinicflow_dead_letters_total{"))
    on_topic = await read_topic(up.bootstrap, topic_name(DEAD_LETTER), timeout=10)
    return counted + len(on_topic)


async def _cluster_id(bootstrap: str) -> str:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        cluster = await admin.describe_cluster()
        return str(cluster["cluster_id"])
    finally:
        await admin.close()


async def _a_fresh_day_with_no_dead_letter(up: MakeUp) -> str:
    """Waits for the day so far, checks the screens have it and no event was refused;
    returns the Kafka cluster's id (a new one is a fresh day)."""
    published = await up.day_so_far_published()
    assert published > 300, up.said()
    ends = await _end_offsets(up.bootstrap)
    floor = sum(end for tp, end in ends.items() if tp.topic == topic_name(FLOOR))
    assert published <= floor < 2 * published  # this day only, nothing of an earlier run
    await eventually(lambda: _caught_up(up.bootstrap, ends), timeout=60, interval=0.2)
    assert await _dead_letters(up) == 0
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{up.ports['flow']}") as flow:
        for clinic in ("north", "south", "east"):
            board = (await flow.get(f"/clinics/{clinic}/board",
                                    headers={"Authorization": "Bearer dev-manager"})).json()
            assert board["waiting"] and board["in_rooms"], (clinic, board)
    return await _cluster_id(up.bootstrap)


async def test_make_up_plays_a_fresh_day_every_run_after_ctrl_c_and_after_a_kill(
    tmp_path: Path,
) -> None:
    up = MakeUp(tmp_path / "state")
    try:
        up.start()
        first = await _a_fresh_day_with_no_dead_letter(up)
        assert await asyncio.to_thread(up.stop) == 0

        up.start()  # the same day's visit ids again: onto a fresh floor
        second = await _a_fresh_day_with_no_dead_letter(up)
        await asyncio.to_thread(up.kill)  # its services, Kafka and Redis keep running

        up.start()
        third = await _a_fresh_day_with_no_dead_letter(up)
        assert "a previous `make up` was killed" in up.said()
        assert len({first, second, third}) == 3
        assert (up.state / "up.previous" / ".clinicflow-up").is_file()
        assert await asyncio.to_thread(up.stop) == 0
        assert not (up.state / "stack.json").exists()  # nothing left running
    finally:
        up.clean_up()
