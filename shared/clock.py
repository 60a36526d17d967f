"""Time, injected: the clock services read and the one helper that runs periodic jobs.

Domain code never reads the clock; it takes ``now``. Adapters read ``clock.now()``
from the ``Clock`` their service was built with (``SystemClock`` in production, a
settable fake in tests, a ``WarpClock`` when ``CLINICFLOW_CLOCK_WARP`` is set: a
simulated day played faster, ``clinicflow up --day``), and every periodic job (the
no-show sweep, flow's board refresh and idle checkpoint, the notifier's ticker, outbox
relays) is a
``tick(now)`` coroutine that ``every`` calls on a schedule. Tests call ``tick(now)``
themselves, with the time they choose, and never wait for a loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from shared.logging import get_logger
from shared.metrics import PERIODIC_FAILURES

log = get_logger("clinicflow.clock")

Job = Callable[[datetime], Awaitable[Any]]


class Clock(Protocol):
    """Where adapters read the time: an aware UTC instant."""

    def now(self) -> datetime: ...


class SystemClock:
    """The wall clock (production)."""

    def now(self) -> datetime:
        return datetime.now(UTC)


@dataclass(frozen=True)
class WarpClock:
    """A simulated clock running ``speed`` times faster than the wall clock: at the wall
    instant ``wall_origin`` (seconds since the epoch) it reads ``sim_origin``, and
    ``now = sim_origin + (wall now - wall_origin) * speed``. Every process given the same
    three numbers reads the same time (``clinicflow up --day``: the services and the
    simulated staff agree). Periodic jobs (``every``) still run on wall seconds."""

    sim_origin: datetime
    wall_origin: float
    speed: float
    wall: Callable[[], float] = field(default=time.time, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.sim_origin.tzinfo is None:
            raise ValueError("the warped clock's origin needs a UTC offset")
        if not (math.isfinite(self.speed) and self.speed > 0):
            raise ValueError(f"the warped clock's speed must be positive, not {self.speed}")
        if not math.isfinite(self.wall_origin):
            raise ValueError(f"the warped clock's wall origin must be a time, not "
                             f"{self.wall_origin}")

    def now(self) -> datetime:
        return (self.sim_origin + timedelta(seconds=(self.wall() - self.wall_origin)
                                            * self.speed)).astimezone(UTC)

    def wall_seconds(self, span: timedelta) -> float:
        """How many wall seconds a span of this clock's time takes."""
        return span.total_seconds() / self.speed

    def setting(self) -> str:
        """This clock as ``CLINICFLOW_CLOCK_WARP`` says it (``parse`` reads it back)."""
        return (f"{self.sim_origin.astimezone(UTC).isoformat()}@{self.wall_origin!r}"
                f"x{self.speed!r}")

    @classmethod
    def parse(cls, text: str) -> WarpClock:
        """``<sim origin, ISO 8601 with offset>@<wall origin, epoch seconds>x<speed>``,
        e.g. ``2026-03-02T12:00:00+00:00@1767000000.0x40``; ValueError saying what is
        wrong otherwise."""
        origin, at, rest = text.strip().partition("@")
        wall, x, speed = rest.partition("x")
        if not (at and x):
            raise ValueError(f"{text!r} is not <sim origin ISO>@<wall origin epoch>x<speed>")
        try:
            sim = datetime.fromisoformat(origin)
            return cls(sim, float(wall), float(speed))
        except ValueError as exc:
            raise ValueError(f"{text!r}: {exc}") from None


def clock_from_setting(warp: str | None) -> Clock:
    """The clock a service reads: the wall clock, or the warped one ``warp`` describes
    (``CLINICFLOW_CLOCK_WARP``)."""
    return WarpClock.parse(warp) if warp else SystemClock()


async def every(seconds: float, job: Job, *, name: str, service: str,
                clock: Clock | None = None,
                ready: Callable[[], bool] = lambda: True,
                stopping: asyncio.Event | None = None) -> None:
    """Run ``job(clock.now())`` every ``seconds`` until ``stopping`` is set (or the task
    is cancelled).

    A failing run is logged (with the job's name and the error) and counted in
    ``clinicflow_periodic_failures_total``; the next run comes on schedule. A run is
    skipped while ``ready()`` is false (Kafka not connected yet, say). The interval is
    measured from the start of one run to the start of the next, so a slow run does not
    push the schedule back by its own length. ``stopping`` ends the loop between runs,
    never inside one: a relay stopped that way is never cut between a publish and the
    record that it went out."""
    wall = clock or SystemClock()
    stopping = stopping or asyncio.Event()
    while not stopping.is_set():
        started = time.monotonic()
        if ready():
            try:
                await job(wall.now())
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                PERIODIC_FAILURES.labels(service, name).inc()
                log.warning("periodic job failed; the next run retries", job=name,
                            error=repr(exc))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(),
                                   max(0.0, seconds - (time.monotonic() - started)))
