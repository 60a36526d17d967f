"""Flow tells Kafka what it has checkpointed: after the board refresh (a periodic job, which
also checkpoints) the group's committed offsets reach the end of the floor topic, so
Kafka-side lag monitoring does not show a quiet flow as lagging. Found by the soak
(tests/soak/)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from services.flow.app import create_app
from shared import events as ev
from shared.admin import ensure_topics
from shared.settings import FlowSettings
from shared.topics import FLOOR, topic_name
from tests.fakes import FakeClock
from tests.helpers import eventually, serving
from tests.integration.flow_support import NURSE, floor_event, flow_settings, get_board, publish


async def committed_behind_end(bootstrap: str, group: str, topic: str) -> int:
    """Records of ``topic`` past ``group``'s committed offsets."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await admin.start()
    await consumer.start()
    try:
        committed = await admin.list_consumer_group_offsets(group)
        await consumer._client.force_metadata_update()
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        ends = await consumer.end_offsets(tps)
        return sum(end - (committed[tp].offset if tp in committed else 0)
                   for tp, end in ends.items())
    finally:
        await consumer.stop()
        await admin.close()


@pytest.mark.reliability(
    "a quiet flow whose last events were checkpointed by the board refresh",
    "the group's committed offsets reach the end of the floor topic (Kafka-side lag 0)",
)
async def test_the_board_refresh_commits_what_it_checkpoints(
    kafka_bootstrap: str, redis_url: str, topic_prefix: str,
) -> None:
    await ensure_topics(kafka_bootstrap, topic_prefix)
    # batches do not checkpoint within the hour: only the refresh below does
    settings = {**flow_settings(kafka_bootstrap, redis_url, topic_prefix),
                "flow_checkpoint_seconds": 3600}
    floor = topic_name(FLOOR, topic_prefix)
    clock = FakeClock()
    app = create_app(FlowSettings(**settings), clock=clock)
    async with serving(app) as url, httpx.AsyncClient(base_url=url) as client:
        await publish(kafka_bootstrap, floor, [
            floor_event(ev.RoomReady(room_id="r1"), base=clock.now()),
            floor_event(ev.PatientArrived(visit_id="v1", ticket_code="A-1",
                                          provider_id="dr-lee", visit_type="follow_up"),
                        base=clock.now())])

        async def one_waiting() -> Any:
            board = await get_board(client, "north", NURSE)
            return board if board and len(board["waiting"]) == 1 else None

        await eventually(one_waiting, timeout=30)
        assert await committed_behind_end(kafka_bootstrap, settings["flow_group_id"],
                                          floor) == 2  # applied, not checkpointed yet
        assert await app.state.projection.refresh_boards(clock.advance(minutes=1)) == 1
        assert await committed_behind_end(kafka_bootstrap, settings["flow_group_id"],
                                          floor) == 0
