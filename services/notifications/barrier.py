"""The contact desk's barrier: a contact command decides on a visit only once the notifier
holds the clinic's floor partition up to its end as of now. The front desk checks a
patient in (checkin publishes the arrival) and records their contact a moment later: the
arrival is known before the answer, and a visit that is still unknown then really is not
on the clinic's floor (404); a patient who left a moment ago has left (409).

It asks the projection runner's Kafka consumer for the partition's end and reads the
offset the projection stored (``P:applied:notifications:...``), polling Redis until they
meet. The polling is production waiting for another task's progress; how long it may
last is ``CLINICFLOW_NOTIFICATIONS_BARRIER_TIMEOUT_SECONDS``, after which the command is
refused as ``Unavailable`` (503: try again shortly). (checkin and billing keep the same
barrier for their own consumers.)
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


class FloorBarrier:
    """``caught_up(clinic_id)`` on the runner's consumer (``consumer`` returns it; None
    until the service has started) and the projection's stored ``offsets``. It waits
    ``poll_seconds`` between looks, at most ``timeout`` seconds of ``monotonic`` in all."""

    def __init__(self, consumer: Callable[[], Any], offsets: StoredOffsets, floor_topic: str, *,
                 timeout: float = 5.0, poll_seconds: float = 0.01,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.consumer = consumer
        self.offsets = offsets
        self.floor_topic = floor_topic
        self.timeout = timeout
        self.poll_seconds = poll_seconds
        self.monotonic = monotonic

    async def caught_up(self, clinic_id: str) -> None:
        """Return once the notifier holds everything on the clinic's floor partition as of
        now; ``Unavailable`` when it does not within ``timeout`` seconds."""
        started = self.monotonic()
        end, tp, problem = None, None, "Kafka not connected"
        while end is None:
            kafka = self.consumer()
            partitions = kafka.partitions_for_topic(self.floor_topic) if kafka else None
            if partitions:
                tp = TopicPartition(self.floor_topic,
                                    partition_for(clinic_id.encode(), len(partitions)))
                try:
                    end = (await kafka.end_offsets([tp]))[tp]
                    break
                except Exception as exc:  # still starting, a rebalance, a broker away
                    problem = f"the floor's end is not known: {exc!r}"
            if self.monotonic() - started > self.timeout:
                raise Unavailable(f"notifications is not reading the floor yet ({problem}): "
                                  "try again shortly", "unavailable")
            await asyncio.sleep(self.poll_seconds)
        assert tp is not None
        partition = (tp.topic, tp.partition)
        while end > 0:
            stored = (await self.offsets.read([partition]))[partition]
            if stored is not None and stored >= end - 1:
                return
            if self.monotonic() - started > self.timeout:
                raise Unavailable("notifications is behind the floor (catching up after a "
                                  "restart or a burst): try again shortly", "unavailable")
            await asyncio.sleep(self.poll_seconds)
