"""The request-body limit against a client that announces no size: a body streamed in
chunks (``Transfer-Encoding: chunked``, no ``Content-Length``) past the limit is refused
with the same 413 as a declared one, on flow's real service (real Kafka, real Redis), and
nothing reaches the floor topic."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from services.flow.app import create_app
from shared.admin import ensure_topics
from shared.settings import FlowSettings
from shared.topics import FLOOR, topic_name
from tests.helpers import eventually, read_topic, serving
from tests.integration.flow_support import NURSE, flow_settings

LIMIT = 4096


async def chunked(pieces: int, piece: int) -> AsyncIterator[bytes]:
    """A delay announcement whose reason is ``pieces`` x ``piece`` bytes, sent in pieces
    with no length up front."""
    yield b'{"provider_id": "dr-lee", "minutes": 10, "reason": "'
    for _ in range(pieces):
        yield b"x" * piece
    yield b'"}'


@pytest.mark.reliability(
    "a body past the limit streamed in chunks, with no Content-Length",
    "413 naming the limit, as for a declared size; nothing published",
)
async def test_a_chunked_body_past_the_limit_is_refused_like_a_declared_one(
    kafka_bootstrap: str, redis_url: str, topic_prefix: str,
) -> None:
    await ensure_topics(kafka_bootstrap, topic_prefix)
    settings = FlowSettings(**flow_settings(kafka_bootstrap, redis_url, topic_prefix),
                            max_body_bytes=LIMIT)
    async with serving(create_app(settings)) as url, \
            httpx.AsyncClient(base_url=url, timeout=30) as client:
        headers = {**NURSE, "Content-Type": "application/json"}

        async def ready() -> bool:
            return (await client.get("/readyz")).status_code == 200

        await eventually(ready, timeout=60)  # the small command below is published
        streamed = await client.post("/clinics/north/delays", content=chunked(16, 1024),
                                     headers=headers)
        declared = await client.post("/clinics/north/delays",
                                     content=b"".join([c async for c in chunked(16, 1024)]),
                                     headers=headers)
        # under the limit, the same chunked request is an ordinary command
        small = await client.post("/clinics/north/delays", content=chunked(4, 40),
                                  headers=headers)
    for refused in (streamed, declared):
        assert refused.status_code == 413, refused.text
        assert refused.json()["detail"] == f"request body larger than {LIMIT} bytes"
    assert small.status_code == 202, small.text
    floor = await read_topic(kafka_bootstrap, topic_name(FLOOR, topic_prefix), expect=1)
    assert [r.value for r in floor].count(None) == 0 and len(floor) == 1
