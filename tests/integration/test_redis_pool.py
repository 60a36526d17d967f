"""A service's Redis pool under a burst of more requests than connections (real Redis)."""

from __future__ import annotations

import asyncio
import uuid

from shared.service import REDIS_CONNECTIONS, ServiceRuntime
from shared.settings import CommonSettings


async def test_a_burst_beyond_the_pool_waits_its_turn_instead_of_failing(
    redis_url: str,
) -> None:
    """Half again as many concurrent commands as the pool has connections, each holding
    its connection for a moment (a BLPOP that times out): every one is answered. A plain
    pool refused those past its size at once (MaxConnectionsError), which services
    answered as "Redis is unreachable"."""
    runtime = ServiceRuntime(CommonSettings(redis_url=redis_url), "pool-test")
    key = f"pool-test:{uuid.uuid4().hex}"
    try:
        answers = await asyncio.gather(
            *(runtime.redis.blpop([key], timeout=0.3) for _ in range(REDIS_CONNECTIONS * 3 // 2)),
            return_exceptions=True)
        failures = [repr(a) for a in answers if isinstance(a, BaseException)]
        assert failures == []
        assert answers == [None] * (REDIS_CONNECTIONS * 3 // 2)  # nothing was there to pop
    finally:
        await runtime.redis.aclose()
