"""Session-wide real infrastructure: one Apache Kafka broker and one Redis server on free
loopback ports (never the 9092/6379 of a running `make up`), started only when a test
asks for them, stopped at the end. Each test gets its own topic and key prefix."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.stack import LocalStack, free_port


@pytest.fixture(scope="session")
def stack() -> Iterator[LocalStack | None]:
    if os.environ.get("CLINICFLOW_TEST_KAFKA") and os.environ.get("CLINICFLOW_TEST_REDIS"):
        yield None  # a developer's own servers (never used by CI)
        return
    data = Path(tempfile.mkdtemp(prefix="clinicflow-test-"))
    local = LocalStack(data, kafka_port=free_port(), redis_port=free_port())
    local.start(topics_prefix=None)
    try:
        yield local
    finally:
        local.stop()
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture(scope="session")
def kafka_bootstrap(stack: LocalStack | None) -> str:
    return os.environ["CLINICFLOW_TEST_KAFKA"] if stack is None else stack.kafka_bootstrap


@pytest.fixture(scope="session")
def redis_url(stack: LocalStack | None) -> str:
    return os.environ["CLINICFLOW_TEST_REDIS"] if stack is None else stack.redis_url


@pytest.fixture
def topic_prefix() -> str:
    """A fresh prefix per test: its own topics, consumer groups and Redis keys."""
    return f"t{uuid.uuid4().hex[:10]}."


@pytest.fixture
def redis_prefix(topic_prefix: str) -> str:
    return topic_prefix.rstrip(".")


@pytest.fixture
async def topics(kafka_bootstrap: str, topic_prefix: str) -> dict[str, str]:
    """Every declared topic created under this test's prefix: declared name -> real name."""
    from shared.admin import ensure_topics
    from shared.topics import ALL_TOPICS

    await ensure_topics(kafka_bootstrap, topic_prefix)
    return {spec.name: f"{topic_prefix}{spec.name}" for spec in ALL_TOPICS}


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Where tests leave screenshots and logs for people to look at."""
    path = Path(__file__).resolve().parents[1] / "test-artifacts"
    path.mkdir(exist_ok=True)
    return path
