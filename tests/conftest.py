"""Session-wide real infrastructure: one Apache Kafka broker and one Redis server on free
loopback ports (never the 9092/6379 of a running `make up`), started only when a test asks
for them and stopped at the end. Each test gets its own topic names and Redis key prefix.

With ``CLINICFLOW_TEST_KAFKA`` (a bootstrap, e.g. ``127.0.0.1:9092``) and
``CLINICFLOW_TEST_REDIS`` (a URL) both set, the tests use those servers instead; tests that
stop or restart servers fail then, saying why. CI never sets them.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shared.topics import ALL_TOPICS, topic_name
from tools.stack import LocalStack, StackError, create_topics, free_ports, sweep_orphans

pytest_plugins = ["tests.reliability_report"]

# each session records its servers here, so a run that was killed has them stopped by the next
_RUNS = Path(tempfile.gettempdir()) / f"clinicflow-test-stacks-{os.getuid()}"


def _developer_servers() -> tuple[str, str] | None:
    kafka, redis = os.environ.get("CLINICFLOW_TEST_KAFKA"), os.environ.get("CLINICFLOW_TEST_REDIS")
    return (kafka, redis) if kafka and redis else None


def _start_private_stack(data: Path) -> LocalStack:
    _RUNS.mkdir(exist_ok=True)
    sweep_orphans(_RUNS)
    for attempt in range(3):
        kafka_port, redis_port = free_ports(2)
        local = LocalStack(data / f"try{attempt}", kafka_port=kafka_port, redis_port=redis_port,
                           state_file=_RUNS / f"{uuid.uuid4().hex}.json")
        try:
            return local.start(topics_prefix=None)
        except StackError as exc:
            # another test run on this machine may take a free port before our server binds it
            if "Address already in use" not in str(exc) or attempt == 2:
                raise
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack | None]:
    """The session's Kafka + Redis (None when a developer's own servers are used).
    Broker and Redis logs stay in pytest's temp directory for a look after a failure."""
    if _developer_servers():
        yield None
        return
    local = _start_private_stack(tmp_path_factory.mktemp("stack"))
    try:
        yield local
    finally:
        local.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(stack: LocalStack | None) -> str:
    """``host:port`` of the broker."""
    return stack.kafka_bootstrap if stack is not None else os.environ["CLINICFLOW_TEST_KAFKA"]


@pytest.fixture(scope="session")
def redis_url(stack: LocalStack | None) -> str:
    """``redis://`` URL of the Redis server."""
    return stack.redis_url if stack is not None else os.environ["CLINICFLOW_TEST_REDIS"]


@pytest.fixture
def own_stack(stack: LocalStack | None) -> LocalStack:
    """The session stack for a test that stops or restarts a server. With a developer's
    own servers (CLINICFLOW_TEST_*) such a test fails with this reason rather than
    restart servers it does not own, or pass unseen by skipping."""
    if stack is None:
        pytest.fail("this test restarts Kafka or Redis: run it on the session's own stack "
                    "(unset CLINICFLOW_TEST_KAFKA and CLINICFLOW_TEST_REDIS)")
    return stack


@pytest.fixture
def make_stack(tmp_path: Path) -> Iterator[Callable[[], LocalStack]]:
    """A factory of extra, private stacks (own ports and data), stopped after the test."""
    started: list[LocalStack] = []

    def make() -> LocalStack:
        local = _start_private_stack(tmp_path / f"stack{len(started)}")
        started.append(local)
        return local

    yield make
    for local in started:
        local.stop()


@pytest.fixture
def topic_prefix(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh prefix per test: its own topics, consumer groups and Redis keys. On the
    session's own broker the test's topics are deleted after it: a broker holding every
    topic of every test grows to thousands of partitions, and each topic made, each
    metadata answer and each restart slows down with them."""
    prefix = f"t{uuid.uuid4().hex[:10]}."
    yield prefix
    if "kafka_bootstrap" in request.fixturenames:
        stack: LocalStack | None = request.getfixturevalue("stack")
        if stack is not None and stack.kafka is not None and stack.kafka.alive():
            _delete_topics(stack.kafka_bootstrap, prefix)


def _delete_topics(bootstrap: str, prefix: str) -> None:
    """Delete the topics named with ``prefix`` (housekeeping: a failure is only noted)."""
    async def delete() -> None:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
        await admin.start()
        try:
            mine = [t for t in await admin.list_topics() if t.startswith(prefix)]
            if mine:
                await admin.delete_topics(mine, timeout_ms=10_000)
        finally:
            await admin.close()

    outcome: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(asyncio.wait_for(delete(), 20))
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run)  # outside any test's event loop
    thread.start()
    thread.join()
    if outcome:
        print(f"topics {prefix}* not deleted: {outcome[0]!r}")


@pytest.fixture
def redis_prefix(topic_prefix: str) -> str:
    """This test's Redis key prefix (the topic prefix without its dot)."""
    return topic_prefix.rstrip(".")


@pytest.fixture
async def topics(kafka_bootstrap: str, topic_prefix: str) -> dict[str, str]:
    """Every declared topic created under this test's prefix: declared name -> real name."""
    await create_topics(kafka_bootstrap, topic_prefix)
    return {spec.name: topic_name(spec, topic_prefix) for spec in ALL_TOPICS}


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Where tests leave screenshots and logs for people to look at."""
    path = Path(__file__).resolve().parents[1] / "test-artifacts"
    path.mkdir(exist_ok=True)
    return path
