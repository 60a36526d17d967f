"""A three-node Apache Kafka cluster (KRaft) on loopback, for fault tests: every node is
broker and controller, the three vote in one static quorum, topics are replicated three
times and a write needs two in-sync replicas (``min.insync.replicas=2``).

Built on ``tools.stack``: each node is one ``start_kafka`` with its own properties and the
cluster's shared id, and a ``Managed`` process that a test can kill (``kill -9``) and start
again on the same ports and data. Each node is recorded like the session stack's servers,
so a test run that was itself killed has them stopped by the next run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient

from tools.stack import (
    Managed,
    StackError,
    _run_sync,
    free_ports,
    kafka_properties,
    new_cluster_id,
    process_start_time,
    start_kafka,
    sweep_orphans,
    wait_kafka,
)

NODES = 3
REPLICATION_FACTOR = 3
MIN_INSYNC_REPLICAS = 2

# what a replicated cluster changes in the one-node properties of tools.stack (which keeps
# its quick broker session timeouts: a killed node is fenced and its partitions move in ~3 s)
REPLICATED = {
    "default.replication.factor": str(REPLICATION_FACTOR),
    "min.insync.replicas": str(MIN_INSYNC_REPLICAS),
    "offsets.topic.replication.factor": str(REPLICATION_FACTOR),
    "transaction.state.log.replication.factor": str(REPLICATION_FACTOR),
    "transaction.state.log.min.isr": str(MIN_INSYNC_REPLICAS),
    "share.coordinator.state.topic.replication.factor": str(REPLICATION_FACTOR),
    "share.coordinator.state.topic.min.isr": str(MIN_INSYNC_REPLICAS),
    "unclean.leader.election.enable": "false",
}


def node_properties(data: Path, node_id: int, port: int, controller_port: int,
                    voters: str) -> str:
    """server.properties of one cluster node: the one-node loopback properties of
    ``tools.stack.kafka_properties`` with this node's id, the three voters and the
    replication settings above."""
    lines = kafka_properties(data, port, controller_port).splitlines()
    settings = dict(line.split("=", 1) for line in lines if "=" in line)
    settings.update(REPLICATED)
    settings["node.id"] = str(node_id)
    settings["controller.quorum.voters"] = voters
    return "\n".join(f"{key}={value}" for key, value in settings.items()) + "\n"


@dataclass
class KafkaNode:
    """One node: its id, ports and data; ``process`` while it runs."""

    node_id: int
    port: int
    controller_port: int
    data: Path
    properties: str
    process: Managed | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"


@dataclass
class KafkaCluster:
    """Three KRaft nodes on 127.0.0.1; ``start()`` returns once all three are registered
    brokers. ``kill(node_id)`` is a crash (SIGKILL to that node's PID), ``start_node``
    brings it back on the same ports and data, ``stop()`` ends every node it started."""

    data: Path
    records: Path  # where each node is recorded for ``sweep_orphans``
    cluster_id: str = field(default_factory=new_cluster_id)
    nodes: dict[int, KafkaNode] = field(default_factory=dict)

    @property
    def bootstrap(self) -> str:
        """Every node, as clients are given it (any one that answers is enough)."""
        return ",".join(node.bootstrap for node in self.nodes.values())

    def start(self, timeout: float = 90.0) -> KafkaCluster:
        self.records.mkdir(parents=True, exist_ok=True)
        sweep_orphans(self.records)
        ports = free_ports(2 * NODES)
        voters = ",".join(f"{n + 1}@127.0.0.1:{ports[NODES + n]}" for n in range(NODES))
        for n in range(NODES):
            node_id, data = n + 1, self.data / f"node{n + 1}"
            self.nodes[node_id] = KafkaNode(
                node_id, ports[n], ports[NODES + n], data,
                node_properties(data, node_id, ports[n], ports[NODES + n], voters))
        try:
            for node_id in self.nodes:
                self.start_node(node_id, wait=False)
            _run_sync(lambda: self.wait_brokers(set(self.nodes), timeout))
        except BaseException:
            self.stop()
            raise
        return self

    def start_node(self, node_id: int, wait: bool = True, timeout: float = 90.0) -> None:
        """Start (or restart) one node on its ports and data; with ``wait``, until it
        answers. Blocking: from async code, call it through ``asyncio.to_thread``."""
        node = self.nodes[node_id]
        if node.process is not None and node.process.alive():
            raise StackError(f"Kafka node {node_id} is already running")
        node.process = start_kafka(node.data, node.port, node.controller_port,
                                   properties=node.properties, cluster_id=self.cluster_id)
        self._record(node)
        if wait:
            process = node.process
            _run_sync(lambda: wait_kafka(node.bootstrap, process, timeout))

    def kill(self, node_id: int) -> None:
        """kill -9 one node (by its PID): nothing flushed, no controlled shutdown."""
        node = self.nodes[node_id]
        if node.process is not None:
            node.process.stop(kill=True)
            node.process = None
        (self.records / f"{self.cluster_id}-{node_id}.json").unlink(missing_ok=True)

    def stop(self) -> None:
        """SIGTERM every running node together, SIGKILL whichever outlasts the grace."""
        running = [node for node in self.nodes.values() if node.process is not None]
        for node in running:
            assert node.process is not None
            node.process.signal(signal.SIGTERM)
        for node in running:
            assert node.process is not None
            node.process.stop(grace=30, signalled=True)
            node.process = None
            (self.records / f"{self.cluster_id}-{node.node_id}.json").unlink(missing_ok=True)

    def tails(self) -> str:
        """Each running node's log tail, for a failure message."""
        return "\n".join(f"--- node {node.node_id} ---\n{node.process.tail(10)}"
                         for node in self.nodes.values() if node.process is not None)

    async def wait_brokers(self, node_ids: set[int], timeout: float = 90.0) -> None:
        """Until each node answers and the cluster's metadata lists exactly ``node_ids``
        as brokers (a killed node drops out once its session expires)."""
        for node_id in node_ids:
            node = self.nodes[node_id]
            await wait_kafka(node.bootstrap, node.process, timeout)
        deadline = time.monotonic() + timeout
        seen: set[int] = set()
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                seen = await self.brokers()
                if seen == node_ids:
                    return
            await asyncio.sleep(0.2)
        raise StackError(f"the cluster lists brokers {sorted(seen)}, not {sorted(node_ids)}, "
                         f"after {timeout:.0f}s:\n{self.tails()}")

    async def wait_in_sync(self, topic: str, node_id: int, timeout: float = 90.0) -> None:
        """Until ``node_id`` is back among the in-sync replicas of every partition of
        ``topic``; StackError with the nodes' logs when it exits or does not get there."""
        deadline = time.monotonic() + timeout
        partitions: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            process = self.nodes[node_id].process
            if process is None or not process.alive():
                raise StackError(f"Kafka node {node_id} is not running:\n{self.tails()}")
            with contextlib.suppress(Exception):
                partitions = await self.partitions(topic)
                if partitions and all(node_id in p["isr"] for p in partitions):
                    return
            await asyncio.sleep(0.5)
        lagging = [p["partition"] for p in partitions if node_id not in p["isr"]]
        raise StackError(f"node {node_id} is not in sync on partitions {lagging} of {topic} "
                         f"after {timeout:.0f}s:\n{self.tails()}")

    async def brokers(self) -> set[int]:
        """The node ids the cluster's metadata lists as brokers now."""
        async with self.admin() as admin:
            described = await admin.describe_cluster()
        return {int(broker["node_id"]) for broker in described["brokers"]}

    async def partitions(self, topic: str) -> list[dict[str, Any]]:
        """``topic``'s partitions as the cluster describes them (``partition``,
        ``leader``, ``replicas``, ``isr``)."""
        async with self.admin() as admin:
            described = await admin.describe_topics([topic])
        partitions: list[dict[str, Any]] = described[0]["partitions"]
        return sorted(partitions, key=lambda p: int(p["partition"]))

    @contextlib.asynccontextmanager
    async def admin(self) -> Any:
        live = ",".join(node.bootstrap for node in self.nodes.values()
                        if node.process is not None)
        client = AIOKafkaAdminClient(bootstrap_servers=live, request_timeout_ms=10_000)
        await client.start()
        try:
            yield client
        finally:
            await client.close()

    def _record(self, node: KafkaNode) -> None:
        """The state-file shape ``tools.stack.read_state`` and ``sweep_orphans`` read."""
        assert node.process is not None
        state = {"owner": {"pid": os.getpid(), "started": process_start_time(os.getpid())},
                 "data": str(node.data), "kafka_bootstrap": node.bootstrap,
                 "redis_url": None, "kafka": node.process.record(), "redis": None}
        path = self.records / f"{self.cluster_id}-{node.node_id}.json"
        temporary = path.with_name(f".{uuid.uuid4().hex}.tmp")
        temporary.write_text(json.dumps(state, indent=2))
        os.replace(temporary, path)


@contextlib.contextmanager
def running_cluster(data: Path, records: Path) -> Iterator[KafkaCluster]:
    """A started three-node cluster, stopped (every node) when the block ends."""
    for attempt in range(3):
        try:
            cluster = KafkaCluster(data / f"try{attempt}", records).start()
            break
        except StackError as exc:
            # another test run on this machine may take a free port before a node binds it
            if "Address already in use" not in str(exc) or attempt == 2:
                raise
    try:
        yield cluster
    finally:
        cluster.stop()
