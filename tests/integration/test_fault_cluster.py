"""Flow on a three-broker KRaft cluster (replication factor 3, ``min.insync.replicas=2``)
while the broker leading the day's partitions is killed with -9 under a steady stream of
floor events, then started again."""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from typing import Any

import httpx
import pytest

from services.flow.app import create_app
from shared import events as ev
from shared.settings import FlowSettings
from shared.topics import FLOOR, topic_name
from tests.conftest import _RUNS
from tests.helpers import eventually, producer, read_topic, serving
from tests.integration.flow_support import (
    a_day,
    boards_match_a_rebuild,
    flow_settings,
)
from tests.integration.kafka_cluster import REPLICATION_FACTOR, KafkaCluster, running_cluster
from tools.stack import create_topics

CLINICS = tuple(f"clinic-{n}" for n in range(8))  # spread over the floor's partitions
VISITS = 30
EVENTS_PER_SECOND = 150  # a busy morning across the clinics, and a few seconds long


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    """The module's three-node cluster (its logs stay in pytest's temp directory)."""
    with running_cluster(tmp_path_factory.mktemp("cluster"), _RUNS) as started:
        yield started


class SteadyProducer:
    """Sends events at a steady rate (idempotent, ``acks=all``) and keeps what the cluster
    acknowledged: each event's (partition, offset), or the error its send ended with."""

    def __init__(self, bootstrap: str, topic: str, events: list[ev.Event]) -> None:
        self.bootstrap, self.topic, self.events = bootstrap, topic, events
        self.acked: dict[str, tuple[int, int]] = {}
        self.failed: dict[str, str] = {}

    async def run(self) -> None:
        pending: list[asyncio.Future[Any]] = []
        async with producer(self.bootstrap) as client:
            for n, event in enumerate(self.events):
                sent = await client.send(self.topic, ev.encode(event),
                                         key=event.clinic_id.encode())
                sent.add_done_callback(lambda done, event_id=event.envelope.event_id:
                                       self._settled(event_id, done))
                pending.append(sent)
                if n % 10 == 9:
                    await asyncio.sleep(10 / EVENTS_PER_SECOND)
            await asyncio.gather(*pending, return_exceptions=True)

    def _settled(self, event_id: str, done: asyncio.Future[Any]) -> None:
        if done.exception() is not None:
            self.failed[event_id] = repr(done.exception())
        else:
            metadata = done.result()
            self.acked[event_id] = (metadata.partition, metadata.offset)


async def leader_of_the_most(cluster: KafkaCluster, topic: str, partitions: set[int]) -> int:
    """The node leading the most of ``partitions`` (the ones the day's events go to)."""
    leaders = Counter(p["leader"] for p in await cluster.partitions(topic)
                      if p["partition"] in partitions)
    return int(leaders.most_common(1)[0][0])


@pytest.mark.reliability(
    "a three-broker KRaft cluster (replication factor 3, min.insync.replicas=2): the broker "
    "leading most of the day's partitions killed with -9 under a steady stream (idempotent "
    "producer, acks=all), then started again",
    "every event acknowledged, and each once in the topic, where it was acknowledged, in its "
    "clinic's order; every board equals a board rebuilt from the topic (none applied "
    "twice); the restarted broker rejoins every partition's in-sync replicas",
)
async def test_a_broker_killed_under_load_loses_no_acknowledged_event_and_applies_none_twice(
    cluster: KafkaCluster, redis_url: str, topic_prefix: str,
) -> None:
    await create_topics(cluster.bootstrap, topic_prefix, replication_factor=REPLICATION_FACTOR)
    floor = topic_name(FLOOR, topic_prefix)
    settings = FlowSettings(**flow_settings(cluster.bootstrap, redis_url, topic_prefix))
    # the clinics' mornings interleaved, as they happen (each clinic's own order kept)
    day = sorted(a_day(CLINICS, visits=VISITS), key=lambda event: event.occurred_at)
    stream = SteadyProducer(cluster.bootstrap, floor, day)
    killed: int | None = None
    async with serving(create_app(settings)) as url, httpx.AsyncClient(base_url=url) as client:
        try:
            producing = asyncio.create_task(stream.run())
            # a third of the day is in before the kill: the rest streams through the failover
            await eventually(lambda: len(stream.acked) >= len(day) // 3, timeout=60)
            partitions = {partition for partition, _ in stream.acked.values()}
            killed = await leader_of_the_most(cluster, floor, partitions)
            led = {p["partition"] for p in await cluster.partitions(floor)
                   if p["leader"] == killed}
            before_kill = set(stream.acked)
            await asyncio.to_thread(cluster.kill, killed)
            await asyncio.wait_for(producing, 120)

            assert stream.failed == {}, f"sends that failed: {stream.failed}"
            assert len(stream.acked) == len(day)
            assert len(before_kill) < len(day), "the kill came after the stream, not under it"
            assert any(partition in led for event_id, (partition, _) in stream.acked.items()
                       if event_id not in before_kill), \
                "no write reached the killed broker's partitions after their leader moved"
            records = await read_topic(cluster.bootstrap, floor, expect=len(day), timeout=30)
            assert len(records) == len(day), "an event was written twice, or lost"
            where = {ev.decode(r.value).envelope.event_id: (r.partition, r.offset)
                     for r in records}
            assert where == stream.acked, "an acknowledged event is missing or moved"
            by_offset = sorted(records, key=lambda r: (r.partition, r.offset))
            assert in_clinic_order(ev.decode(r.value) for r in by_offset) \
                == in_clinic_order(day), \
                "a clinic's events are out of order in the topic"

            await boards_match_a_rebuild(client, cluster.bootstrap, floor, CLINICS, VISITS)

            await asyncio.to_thread(cluster.start_node, killed, False)
            restarted, killed = killed, None
            await cluster.wait_in_sync(floor, restarted)
        finally:
            if killed is not None:  # whatever failed, the next test gets three brokers
                await asyncio.to_thread(cluster.start_node, killed)


def in_clinic_order(events: Iterable[ev.Event]) -> dict[str, list[str]]:
    """Each clinic's event ids, in the order given."""
    ordered: dict[str, list[str]] = defaultdict(list)
    for event in events:
        ordered[event.clinic_id].append(event.envelope.event_id)
    return ordered
