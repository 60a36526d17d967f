"""What billing reads on the floor topic: arrivals (the visit's pseudonymous patient
ref), checkouts published by other clients (priced like the desk's), and undone
checkouts (their charge is voided).

Every effect is an idempotent ledger command (entry ids derive from the visit or the
floor event), so the consumer is at-least-once with Kafka commits after the effects:
a redelivered or replayed floor event posts nothing twice. A record whose effect fails
(Redis or Kafka down, the visit busy) is sought back and read again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka import TopicPartition

from services.billing import metrics as m
from services.billing.desk import Desk
from services.billing.domain import UnknownServices
from shared import events as ev
from shared.logging import get_logger

log = get_logger("clinicflow.billing.floor")
MAX_CHECKOUT_AGE = timedelta(days=1)  # a new group reading 14 days of floor bills nothing old


class FloorConsumer:
    def __init__(self, desk: Desk) -> None:
        self.desk = desk
        self.subscriber: Any = None

    @property
    def kafka_consumer(self) -> Any:
        return getattr(self.subscriber, "consumer", None)

    async def handle(self, raw_records: Sequence[Any], now: datetime | None = None) -> int:
        """Apply a batch in order; returns how many records took effect."""
        wall = now or datetime.now(UTC)
        done: dict[tuple[str, int], int] = {}
        failed: set[tuple[str, int]] = set()
        effects = 0
        for raw in raw_records:
            tp = (raw.topic, raw.partition)
            if tp in failed:
                continue
            try:
                effects += await self._apply(raw, wall)
            except Exception as exc:
                log.warning("floor record not applied: it will be read again",
                            error=repr(exc), partition=raw.partition, offset=raw.offset)
                m.BATCH_FAILURES.labels("floor").inc()
                failed.add(tp)
                kafka = self.kafka_consumer
                if kafka is not None and TopicPartition(*tp) in kafka.assignment():
                    kafka.seek(TopicPartition(*tp), raw.offset)
                continue
            done[tp] = raw.offset
        await self._commit(done)
        if failed:
            await asyncio.sleep(0.5)
        return effects

    async def _apply(self, raw: Any, wall: datetime) -> int:
        if raw.value is None:
            return 0
        try:
            event = ev.decode(raw.value)
        except ev.InvalidEvent:
            return 0  # flow dead-letters bad floor events; billing only skips them
        payload, clinic_id = event.payload, event.clinic_id
        if isinstance(payload, ev.PatientArrived):
            if payload.patient_ref:
                await self.desk.store.remember_arrival(clinic_id, payload.visit_id,
                                                       payload.patient_ref)
                return 1
            return 0
        if isinstance(payload, ev.PatientCheckedOut):
            if event.envelope.source == "billing" or not payload.cpt_codes:
                return 0  # the desk priced its own checkouts before publishing them
            if wall - event.occurred_at > MAX_CHECKOUT_AGE:
                log.warning("old checkout on the floor not priced: price it at the desk",
                            clinic=clinic_id, event_id=event.envelope.event_id)
                return 0
            try:
                result = await self.desk.checkout(
                    clinic_id, payload.visit_id, cpt_codes=payload.cpt_codes,
                    floor_event_id=event.envelope.event_id)
            except UnknownServices as exc:
                m.CHECKOUTS.labels("unpriceable").inc()
                log.error("checkout on the floor not priced", clinic=clinic_id,
                          event_id=event.envelope.event_id, reason=exc.message)
                return 0
            return 1 if result.entries else 0
        if isinstance(payload, ev.ActionUndone):
            voids = await self.desk.undo_checkout(
                clinic_id, undone_event_id=payload.undone_event_id,
                undo_event_id=event.envelope.event_id)
            return 1 if voids else 0
        return 0

    async def _commit(self, done: dict[tuple[str, int], int]) -> None:
        kafka = self.kafka_consumer
        if kafka is None or not done:
            return
        assigned = kafka.assignment()
        commit = {TopicPartition(*tp): offset + 1 for tp, offset in done.items()
                  if TopicPartition(*tp) in assigned}
        if commit:
            try:
                await kafka.commit(commit)
            except Exception as exc:  # a rebalance: the records are applied again, harmlessly
                log.info("kafka commit skipped", error=repr(exc))
