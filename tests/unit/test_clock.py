"""Periodic jobs: a stop ends the loop between runs, never inside one. The warped clock
of a played day (``clinicflow up --day``)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from prometheus_client import REGISTRY
from pydantic import ValidationError

from shared.clock import SystemClock, WarpClock, clock_from_setting, every
from shared.service import ServiceRuntime
from shared.settings import CommonSettings, InsecureConfiguration
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


# ------------------------------------------------------------- the warped clock


def test_the_warped_clock_runs_speed_times_the_wall_from_its_origin() -> None:
    wall = [1_000.0]
    origin = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
    clock = WarpClock(origin, 1_000.0, 40.0, wall=lambda: wall[0])
    assert clock.now() == origin
    wall[0] += 90  # a minute and a half of wall time: an hour of the played day
    assert clock.now() == origin + timedelta(hours=1)
    assert clock.wall_seconds(timedelta(hours=1)) == 90
    wall[0] = 955.0  # before its origin it reads before it, at the same pace
    assert clock.now() == origin - timedelta(minutes=30)


def test_every_process_given_the_same_setting_reads_the_same_time() -> None:
    origin = datetime(2026, 3, 2, 7, 15, tzinfo=ZoneInfo("America/New_York"))
    clock = WarpClock(origin, 1_767_000_000.25, 36.0)
    again = WarpClock.parse(clock.setting())
    assert again == clock
    assert again.sim_origin == origin and again.now().tzinfo == UTC
    assert isinstance(clock_from_setting(clock.setting()), WarpClock)
    assert isinstance(clock_from_setting(None), SystemClock)


@pytest.mark.parametrize("text", [
    "2026-03-02T12:00:00+00:00", "2026-03-02T12:00:00+00:00@12x", "noon@12x40",
    "2026-03-02T12:00:00@12x40", "2026-03-02T12:00:00+00:00@12x0",
    "2026-03-02T12:00:00+00:00@twelvex40", "2026-03-02T12:00:00+00:00@12xinf",
    "2026-03-02T12:00:00+00:00@nanx40",
])
def test_a_malformed_warp_is_refused_saying_what_it_should_be(text: str) -> None:
    with pytest.raises(ValueError):
        WarpClock.parse(text)
    with pytest.raises(ValidationError, match="CLINICFLOW_CLOCK_WARP"):
        CommonSettings(clock_warp=text)


def test_a_service_reads_the_warped_clock_when_the_setting_is_given() -> None:
    warp = "2026-03-02T12:00:00+00:00@1000.0x40"
    settings = CommonSettings(clock_warp=warp)
    runtime = ServiceRuntime(settings, "test")
    assert runtime.clock == WarpClock.parse(warp)
    assert isinstance(ServiceRuntime(CommonSettings(), "test").clock, SystemClock)


def test_production_refuses_a_warped_clock() -> None:
    with pytest.raises(InsecureConfiguration, match="CLINICFLOW_CLOCK_WARP"):
        CommonSettings(env="production", clock_warp="2026-03-02T12:00:00+00:00@1000.0x40")
