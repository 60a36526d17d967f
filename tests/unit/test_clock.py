"""Periodic jobs: a stop ends the loop between runs, never inside one."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from prometheus_client import REGISTRY

from shared.clock import every
from tests.fakes import FakeClock


async def test_a_stop_asked_during_a_run_lets_it_finish_then_ends_the_loop() -> None:
    clock = FakeClock(datetime(2026, 3, 2, 15, 0, tzinfo=UTC))
    started, release, stopping = asyncio.Event(), asyncio.Event(), asyncio.Event()
    runs: list[datetime] = []

    async def job(now: datetime) -> None:
        started.set()
        await release.wait()  # a publish waiting for the broker's acknowledgement
        runs.append(now)

    loop = asyncio.create_task(every(3600, job, name="relay", service="test", clock=clock,
                                     stopping=stopping))
    await started.wait()
    stopping.set()
    release.set()
    await asyncio.wait_for(loop, timeout=30)  # ends without the hour's wait, uncancelled
    assert not loop.cancelled()
    assert runs == [clock.now()]


async def test_a_failing_run_is_counted_and_the_next_one_comes() -> None:
    stopping = asyncio.Event()
    calls = 0

    async def job(_now: datetime) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("redis went away")
        stopping.set()  # the second run: stop after it

    failures = {"service": "test", "job": "flaky"}
    before = REGISTRY.get_sample_value("clinicflow_periodic_failures_total", failures) or 0
    await asyncio.wait_for(every(0, job, name="flaky", service="test", stopping=stopping),
                           timeout=30)
    assert calls == 2
    assert REGISTRY.get_sample_value("clinicflow_periodic_failures_total", failures) == \
        before + 1
