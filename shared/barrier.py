"""A command's barrier: decide only once a projection holds the clinic's partition of its
topic up to the end it had when the command came.

A front desk checks a patient in and records their contact a moment later; billing is
asked to take a payment for a visit that was just checked out. Each command must see
what was published before it, so it first waits until the service's consumer has stored
(``shared.projection.Offsets``) every record of the clinic's partition up to that end.

``ProjectionBarrier.caught_up(clinic_id)`` asks the runner's Kafka consumer for the
partition's end (the partition is the clinic key's under the default partitioner) and
polls the stored offset until they meet. The polling is production waiting for another
task's progress; ``timeout`` bounds it, after which the command is refused as
``Unavailable`` (503: try again shortly). While the consumer is still starting (no
metadata yet, or its first ``end_offsets`` refused) it keeps asking until the timeout,
so a command right after start waits instead of failing at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from aiokafka import TopicPartition

from shared.errors import Unavailable
from shared.projection import Partition, partition_for


class StoredOffsets(Protocol):
    """What the projection stored per partition (``shared.projection.Offsets``)."""

    async def read(self, partitions: Sequence[Partition]) -> dict[Partition, int | None]: ...


class ProjectionBarrier:
    """``caught_up(clinic_id)`` on a runner's consumer (``consumer`` returns it; None until
    the service has started) and the projection's stored ``offsets``. ``what`` names the
    projection and ``topic_role`` its topic in the 503's words; ``observe`` is given each
    wait's seconds. It waits ``poll_seconds`` between looks, at most ``timeout`` seconds of
    ``monotonic`` in all (tests give their own ``monotonic``)."""

    def __init__(self, consumer: Callable[[], Any], offsets: StoredOffsets, topic: str, *,
                 what: str, topic_role: str = "floor", timeout: float = 5.0,
                 poll_seconds: float = 0.01,
                 observe: Callable[[float], None] | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.consumer = consumer
        self.offsets = offsets
        self.topic = topic
        self.what = what
        self.topic_role = topic_role
        self.timeout = timeout
        self.poll_seconds = poll_seconds
        self.observe = observe
        self.monotonic = monotonic

    async def caught_up(self, clinic_id: str) -> None:
        """Return once the projection holds everything on the clinic's partition as of
        now; ``Unavailable`` when it does not within ``timeout`` seconds."""
        started = self.monotonic()
        end, tp = None, None
        problem = f"the {self.topic_role} topic {self.topic} is not known yet"
        while end is None:
            kafka = self.consumer()
            partitions = kafka.partitions_for_topic(self.topic) if kafka else None
            if partitions:
                tp = TopicPartition(self.topic, partition_for(clinic_id.encode(),
                                                              len(partitions)))
                try:
                    end = (await kafka.end_offsets([tp]))[tp]
                    break
                except Exception as exc:  # still starting, a rebalance, a broker away
                    problem = f"the {self.topic_role} topic's end is not known: {exc!r}"
            if self.monotonic() - started > self.timeout:
                raise Unavailable(f"{self.what} is starting ({problem}): try again shortly",
                                  "unavailable")
            await asyncio.sleep(self.poll_seconds)
        assert tp is not None
        partition = (tp.topic, tp.partition)
        while end > 0:
            stored = (await self.offsets.read([partition]))[partition]
            if stored is not None and stored >= end - 1:
                break
            if self.monotonic() - started > self.timeout:
                raise Unavailable(f"{self.what} is behind the {self.topic_role} topic "
                                  "(catching up after a restart or a burst): try again "
                                  "shortly", "unavailable")
            await asyncio.sleep(self.poll_seconds)
        if self.observe is not None:
            self.observe(self.monotonic() - started)
