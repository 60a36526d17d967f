"""A service whose Kafka producer is out of step with the broker for good, on a real
broker: aiokafka's idempotent producer, once the broker refused a batch for good (a record
larger than its topic takes), fails every later record to that partition until the
process restarts (aiokafka issue 1017). The service says so where an orchestrator looks:
``/healthz`` fails (liveness: the pod is restarted) and ``/readyz`` names it."""

from __future__ import annotations

import httpx
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import MessageSizeTooLargeError, OutOfOrderSequenceNumber

from shared.service import ServiceRuntime, make_http_app
from shared.settings import CommonSettings


@pytest.mark.reliability(
    "the broker refuses a record for good (larger than its topic's max.message.bytes), and "
    "the idempotent producer fails every later record to that partition",
    "/healthz answers 503 naming the producer (the orchestrator restarts the process); "
    "/readyz's kafka check names it; it answered 200 before",
)
@pytest.mark.parametrize("awaited", [True, False], ids=["awaited", "handed-over"])
async def test_a_producer_out_of_step_with_the_broker_fails_liveness_so_it_is_restarted(
    kafka_bootstrap: str, redis_url: str, topic_prefix: str, awaited: bool,
) -> None:
    # awaited: a command's publish (it raises); handed over: an outbox relay's (its
    # confirmation fails later)
    topic = f"{topic_prefix}small"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:  # a topic that takes records of up to 2 kB
        await admin.create_topics([NewTopic(topic, 1, 1,
                                            topic_configs={"max.message.bytes": "2048"})])
    finally:
        await admin.close()
    runtime = ServiceRuntime(CommonSettings(kafka_bootstrap=kafka_bootstrap,
                                            redis_url=redis_url), "producer-test")
    app = make_http_app(runtime, title="producer test", description="")
    await runtime.broker.start()
    runtime.kafka_started = True
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://service") as client:
            await runtime.broker.publish(b'{"n": 0}', topic, key=b"north")
            assert (await client.get("/healthz")).status_code == 200
            confirmation = await runtime.send(b"x" * 5_000, topic, b"north")
            with pytest.raises(MessageSizeTooLargeError):
                await confirmation
            with pytest.raises(OutOfOrderSequenceNumber):  # a small record, after it
                if awaited:
                    await runtime.broker.publish(b'{"n": 1}', topic, key=b"north")
                else:
                    await (await runtime.send(b'{"n": 1}', topic, b"north"))
            health = await client.get("/healthz")
            assert health.status_code == 503, health.text
            assert health.json()["status"] == "restart"
            assert "OutOfOrderSequenceNumber" in health.json()["reason"]
            ready = await client.get("/readyz")
            assert ready.status_code == 503
            assert "out of step" in ready.json()["checks"]["kafka"]
    finally:
        await runtime.broker.stop()
        await runtime.redis.aclose()
