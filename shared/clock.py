"""Time, injected: the clock services read and the one helper that runs periodic jobs.

Domain code never reads the clock; it takes ``now``. Adapters read ``clock.now()``
from the ``Clock`` their service was built with (``SystemClock`` in production, a
settable fake in tests), and every periodic job (the no-show sweep, flow's board
refresh and idle checkpoint, the notifier's ticker, outbox relays) is a
``tick(now)`` coroutine that ``every`` calls on a schedule. Tests call ``tick(now)``
themselves, with the time they choose, and never wait for a loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
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
