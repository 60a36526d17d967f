"""The real local stack: topics as declared, a Kafka round trip, Redis with AOF, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from redis.asyncio import Redis

from shared.stack import REPO, free_port
from shared.topics import ALL_TOPICS
from tests.helpers import producer, read_topic


async def test_topics_are_created_with_their_declared_partitions_and_retention(
    kafka_bootstrap: str, topics: dict[str, str],
) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics(list(topics.values()))
        partitions = {d["topic"]: len(d["partitions"]) for d in described}
        configs = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topics[s.name]) for s in ALL_TOPICS])
    finally:
        await admin.close()
    for spec in ALL_TOPICS:
        assert partitions[topics[spec.name]] == spec.partitions
    retention = {}
    for response in configs:
        for resource in response.resources:
            name = resource[3]
            for entry in resource[4]:
                if entry[0] == "retention.ms":
                    retention[name] = int(entry[1])
    for spec in ALL_TOPICS:
        assert retention[topics[spec.name]] == spec.retention_ms


async def test_a_record_goes_through_the_broker(kafka_bootstrap: str,
                                                topics: dict[str, str]) -> None:
    topic = topics["clinicflow.audit.v1"]
    async with producer(kafka_bootstrap) as client:
        await client.send_and_wait(topic, b'{"hello": "clinic"}', key=b"north")
    records = await read_topic(kafka_bootstrap, topic, expect=1)
    assert [r.value for r in records] == [b'{"hello": "clinic"}']


async def test_redis_keeps_an_append_only_file(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    try:
        assert (await redis.config_get("appendonly"))["appendonly"] == "yes"
        assert (await redis.config_get("bind"))["bind"].startswith("127.0.0.1")
    finally:
        await redis.aclose()


def test_stack_up_detached_status_and_down_leave_no_process_behind(tmp_path: Path) -> None:
    env = {**os.environ, "CLINICFLOW_STATE_DIR": str(tmp_path),
           "CLINICFLOW_KAFKA_PORT": str(free_port()), "CLINICFLOW_REDIS_PORT": str(free_port())}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "shared.cli", "stack", *args], cwd=REPO,
                              env=env, capture_output=True, text=True, timeout=180)

    up = cli("up", "--detach")
    assert up.returncode == 0, up.stderr
    assert "Kafka 4.4.0" in up.stdout
    status = cli("status")
    assert status.returncode == 0 and status.stdout.count("running") == 2
    import json

    recorded = json.loads((tmp_path / "stack.json").read_text())
    pids = [recorded["kafka"]["pid"], recorded["redis"]["pid"]]
    down = cli("down")
    assert down.returncode == 0 and "stopped kafka" in down.stdout
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or \
            "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    assert cli("status").returncode == 1
