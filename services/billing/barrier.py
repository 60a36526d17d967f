"""The desk's barrier: a money command decides only once the ledger projection holds the
clinic's ledger partition up to its end as of now (after a restart it catches up first;
behind another instance's writes it waits for them), so it decides on the whole account.

It asks the ledger runner's Kafka consumer for the partition's end and reads the offset
the projection stored (``P:applied:billing.ledger:...``), polling Redis until they meet.
The polling is production waiting for another task's progress; how long it may last is
``CLINICFLOW_BILLING_BARRIER_TIMEOUT_SECONDS``, after which the command is refused as
``Unavailable`` (503: try again shortly).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from aiokafka import TopicPartition

from services.billing import metrics as m
from shared.errors import Unavailable
from shared.projection import Offsets, partition_for


class LedgerBarrier:
    """``caught_up(clinic_id)`` for the desk, on the ledger runner's consumer (``consumer``
    returns it; None until the service has started) and its stored ``offsets``. It waits
    ``poll_seconds`` between looks, at most ``timeout`` seconds of ``monotonic`` in all."""

    def __init__(self, consumer: Callable[[], Any], offsets: Offsets, ledger_topic: str, *,
                 timeout: float = 30.0, poll_seconds: float = 0.01,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.consumer = consumer
        self.offsets = offsets
        self.ledger_topic = ledger_topic
        self.timeout = timeout
        self.poll_seconds = poll_seconds
        self.monotonic = monotonic  # seconds, for the timeout (tests give their own)

    async def caught_up(self, clinic_id: str) -> None:
        """Return once the projection holds everything on the clinic's ledger partition as
        of now; ``Unavailable`` when it does not within ``timeout`` seconds."""
        started = self.monotonic()
        kafka = self.consumer()
        while kafka is None or not kafka.partitions_for_topic(self.ledger_topic):
            if self.monotonic() - started > self.timeout:
                raise Unavailable("the ledger projection is starting (ledger topic "
                                  f"{self.ledger_topic} not known yet): try again shortly")
            await asyncio.sleep(self.poll_seconds)
            kafka = self.consumer()
        partitions = len(kafka.partitions_for_topic(self.ledger_topic))
        tp = TopicPartition(self.ledger_topic, partition_for(clinic_id.encode(), partitions))
        try:
            end = (await kafka.end_offsets([tp]))[tp]
        except Exception as exc:  # a rebalance or a broker away: the caller may retry
            raise Unavailable(f"the ledger's end is not known right now ({exc!r}): try again "
                              "shortly") from None
        partition = (tp.topic, tp.partition)
        while end > 0:
            stored = (await self.offsets.read([partition]))[partition]
            if stored is not None and stored >= end - 1:
                break
            if self.monotonic() - started > self.timeout:
                raise Unavailable("the ledger projection is behind the ledger: try again "
                                  "shortly")
            await asyncio.sleep(self.poll_seconds)
        m.BARRIER_SECONDS.observe(self.monotonic() - started)
