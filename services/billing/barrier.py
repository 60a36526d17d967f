"""The desk's barriers: a command decides only once a consumer holds the clinic's
partition of its topic up to its end as of now.

* the **ledger** projection: a money command decides on the whole account (after a
  restart the projection catches up first; behind another instance's writes it waits for
  them);
* the **floor** consumer: a command naming a visit billing does not know yet, or a
  checkout, looks again once billing has read the clinic's floor as of now (an arrival
  just published is known, a cancellation just made is seen).

A barrier asks the runner's Kafka consumer for the partition's end and reads the offset
the consumer stored (``P:applied:billing.ledger:...``, ``P:applied:billing.floor:...``),
polling Redis until they meet. The polling is production waiting for another task's
progress; how long it may last is ``CLINICFLOW_BILLING_BARRIER_TIMEOUT_SECONDS``, after
which the command is refused as ``Unavailable`` (503: try again shortly).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from aiokafka import TopicPartition

from shared.errors import Unavailable
from shared.projection import Offsets, partition_for


class ConsumerBarrier:
    """``caught_up(clinic_id)`` for the desk, on a runner's consumer (``consumer`` returns
    it; None until the service has started) and its stored ``offsets``. ``what`` names the
    consumer and ``topic_role`` its topic in the 503's words; ``observe`` is given each
    wait's seconds. It waits ``poll_seconds`` between looks, at most ``timeout`` seconds
    of ``monotonic`` in all."""

    def __init__(self, consumer: Callable[[], Any], offsets: Offsets, topic: str, *,
                 what: str = "the ledger projection", topic_role: str = "ledger",
                 timeout: float = 30.0, poll_seconds: float = 0.01,
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
        self.monotonic = monotonic  # seconds, for the timeout (tests give their own)

    async def caught_up(self, clinic_id: str) -> None:
        """Return once the consumer holds everything on the clinic's partition as of now;
        ``Unavailable`` when it does not within ``timeout`` seconds."""
        started = self.monotonic()
        kafka = self.consumer()
        while kafka is None or not kafka.partitions_for_topic(self.topic):
            if self.monotonic() - started > self.timeout:
                raise Unavailable(f"{self.what} is starting ({self.topic_role} topic "
                                  f"{self.topic} not known yet): try again shortly")
            await asyncio.sleep(self.poll_seconds)
            kafka = self.consumer()
        partitions = len(kafka.partitions_for_topic(self.topic))
        tp = TopicPartition(self.topic, partition_for(clinic_id.encode(), partitions))
        try:
            end = (await kafka.end_offsets([tp]))[tp]
        except Exception as exc:  # a rebalance or a broker away: the caller may retry
            raise Unavailable(f"the {self.topic_role} topic's end is not known right now "
                              f"({exc!r}): try again shortly") from None
        partition = (tp.topic, tp.partition)
        while end > 0:
            stored = (await self.offsets.read([partition]))[partition]
            if stored is not None and stored >= end - 1:
                break
            if self.monotonic() - started > self.timeout:
                raise Unavailable(f"{self.what} is behind the {self.topic_role} topic: try "
                                  "again shortly")
            await asyncio.sleep(self.poll_seconds)
        if self.observe is not None:
            self.observe(self.monotonic() - started)
