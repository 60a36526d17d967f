"""The real local stack: topics as declared, a Kafka round trip, Redis with an append-only
file, restarts that keep the data, and the `clinicflow stack` command."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from redis.asyncio import Redis

from shared.topics import ALL_TOPICS, AUDIT, topic_name
from tools.stack import REPO, LocalStack, create_topics, free_ports, is_our_process


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
