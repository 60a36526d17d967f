"""The ledger projection: ledger records in, one Redis transaction per batch out.

For each batch (FastStream batch subscriber, ``AckPolicy.MANUAL``):

1. records are decoded; unreadable ones (not JSON, unknown type, not a ledger entry,
   ``event_id`` not its ``entry_id``) go to the dead-letter topic with the reason;
2. records at or below their partition's stored offset are skipped (already applied);
3. entries and the partitions' offsets are written in one ``MULTI``/``EXEC``
   (``BillingStore.apply_ledger``: first copy of an entry id wins);
4. only then is Kafka told (its committed offsets serve lag monitoring).

On assignment each partition is positioned just after its stored offset, or at the
beginning when Redis has none: a flushed projection rebuilds itself from the ledger
topic (retained for ever).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import Any

from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.partitioner import DefaultPartitioner

from services.billing import metrics as m
from services.billing.domain import Posted, Refused, account, same_amounts
from services.billing.store import BillingStore, LedgerRecord, posted_of
from shared import events as ev
from shared.events_billing import ChargePosted, PaymentRecorded, PaymentRefunded
from shared.kafka import dead_letter_record
from shared.logging import get_logger
from shared.metrics import CONSUMER_LAG, DEAD_LETTERS, EVENTS_CONSUMED, reason_kind
from shared.service import ServiceRuntime

log = get_logger("clinicflow.billing.projection")


class LedgerProjection:
    """Applies ledger records to the Redis projection, each entry id once."""

    def __init__(self, runtime: ServiceRuntime, store: BillingStore, *, ledger_topic: str,
                 dead_letter_topic: str, barrier_timeout: float = 30.0) -> None:
        self.runtime = runtime
        self.store = store
        self.ledger_topic = ledger_topic
        self.dead_letter_topic = dead_letter_topic
        self.barrier_timeout = barrier_timeout
        self.subscriber: Any = None
        self._partitioner = DefaultPartitioner()

    async def caught_up(self, clinic_id: str) -> None:
        """Wait until the projection holds everything on the clinic's ledger partition as of
        now (after a restart, or behind another instance's writes), so a command decides
        on the whole account. ``Refused`` (503) when it does not catch up in time."""
        started = time.monotonic()
        kafka = self.kafka_consumer
        while kafka is None or not kafka.partitions_for_topic(self.ledger_topic):
            if time.monotonic() - started > self.barrier_timeout:
                raise Refused("the ledger projection is starting (ledger topic "
                              f"{self.ledger_topic} not known yet): try again shortly", 503)
            await asyncio.sleep(0.05)
            kafka = self.kafka_consumer
        partitions = sorted(kafka.partitions_for_topic(self.ledger_topic))
        tp = TopicPartition(self.ledger_topic, self._partitioner(
            clinic_id.encode(), partitions, partitions))
        try:
            end = (await kafka.end_offsets([tp]))[tp]
        except Exception as exc:  # a rebalance or a broker away: the caller may retry
            raise Refused(f"the ledger's end is not known right now ({exc!r}): try again "
                          "shortly", 503) from None
        while end > 0:
            stored = await self.store.ledger_offsets([(tp.topic, tp.partition)])
            if stored.get((tp.topic, tp.partition), -1) >= end - 1:
                break
            if time.monotonic() - started > self.barrier_timeout:
                raise Refused("the ledger projection is behind the ledger: try again shortly",
                              503)
            await asyncio.sleep(0.01)
        m.BARRIER_SECONDS.observe(time.monotonic() - started)

    def listener(self) -> ConsumerRebalanceListener:
        projection = self

        class Listener(ConsumerRebalanceListener):  # type: ignore[misc]
            async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
                return None

            async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
                await projection.on_assigned(assigned)

        return Listener()

    @property
    def kafka_consumer(self) -> Any:
        return getattr(self.subscriber, "consumer", None)

    async def on_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        """Position each partition just after its stored offset (or at the beginning)."""
        kafka = self.kafka_consumer
        if kafka is None or not assigned:
            return
        stored = await self.store.ledger_offsets([(tp.topic, tp.partition) for tp in assigned])
        for tp in assigned:
            offset = stored.get((tp.topic, tp.partition))
            start = (await kafka.beginning_offsets([tp]))[tp] if offset is None else offset + 1
            kafka.seek(tp, start)

    async def handle(self, raw_records: Sequence[Any]) -> int:
        """Apply one batch of aiokafka ``ConsumerRecord`` objects. Returns entries applied.

        A partition whose records do not start just after its stored offset (the group's
        committed offset won over our seek, or an earlier batch failed) is sought back and
        its records dropped; a batch that fails (Redis down) is sought back and read again:
        nothing is skipped over."""
        tps = sorted({(r.topic, r.partition) for r in raw_records})
        try:
            stored = await self.store.ledger_offsets(tps)
            expected = {tp: stored[tp] + 1 if tp in stored else await self._beginning(tp)
                        for tp in tps}
            first: dict[tuple[str, int], int] = {}
            for raw in raw_records:
                first.setdefault((raw.topic, raw.partition), raw.offset)
            gaps = {tp for tp, offset in first.items() if offset > expected[tp]}
            for tp in gaps:
                log.warning("ledger partition did not resume at its stored offset: seeking "
                            "again", topic=tp[0], partition=tp[1], got=first[tp],
                            expected=expected[tp])
                self._seek(tp, expected[tp])
            return await self._apply([r for r in raw_records
                                      if (r.topic, r.partition) not in gaps], stored)
        except Exception as exc:
            m.BATCH_FAILURES.labels("ledger").inc()
            log.error("ledger batch failed: it will be read again", error=repr(exc))
            with contextlib.suppress(Exception):
                stored = await self.store.ledger_offsets(tps)
                for tp in tps:
                    self._seek(tp, stored[tp] + 1 if tp in stored
                               else await self._beginning(tp))
            await asyncio.sleep(0.5)
            return 0

    async def _beginning(self, tp: tuple[str, int]) -> int:
        kafka = self.kafka_consumer
        if kafka is None:
            return 0
        partition = TopicPartition(*tp)
        return int((await kafka.beginning_offsets([partition]))[partition])

    def _seek(self, tp: tuple[str, int], offset: int) -> None:
        kafka = self.kafka_consumer
        if kafka is not None and TopicPartition(*tp) in kafka.assignment():
            kafka.seek(TopicPartition(*tp), offset)

    async def _apply(self, raw_records: Sequence[Any],
                     stored: dict[tuple[str, int], int]) -> int:
        offsets: dict[tuple[str, int], int] = {}
        records: list[LedgerRecord] = []
        for raw in raw_records:
            tp = (raw.topic, raw.partition)
            if raw.offset <= stored.get(tp, -1):
                EVENTS_CONSUMED.labels("billing", "already_applied").inc()
                continue
            offsets[tp] = max(offsets.get(tp, -1), raw.offset)
            record, reason = self._read(raw)
            if record is None:
                await self._dead_letter(raw, reason)
                continue
            records.append(record)
        if not offsets:
            return 0
        existing = await self.store.existing(records)
        seen: dict[str, LedgerRecord] = {}
        for record in records:
            entry_id = record.posted.entry_id
            first = existing.get(entry_id) or (seen[entry_id].posted if entry_id in seen
                                               else None)
            if first is None:
                seen[entry_id] = record
                m.LEDGER_ENTRIES.labels(record.posted.event_type, "applied").inc()
                continue
            m.LEDGER_ENTRIES.labels(record.posted.event_type, "duplicate").inc()
            if not same_amounts(first, record.posted):
                m.ENTRY_CONFLICTS.inc()
                log.warning("two copies of one ledger entry disagree: the first counts",
                            entry_id=entry_id, clinic=record.clinic_id)
        await self.store.apply_ledger(records, offsets,
                                      await self._open_visits(list(seen.values())))
        EVENTS_CONSUMED.labels("billing", "applied").inc(len(seen))
        for record in seen.values():
            entry = record.posted.entry
            if isinstance(entry, ChargePosted):
                m.CHARGED.labels(record.clinic_id).inc(entry.amount_cents)
            elif isinstance(entry, PaymentRecorded):
                m.COLLECTED.labels(record.clinic_id, entry.method, "in").inc(entry.amount_cents)
            elif isinstance(entry, PaymentRefunded):
                m.COLLECTED.labels(record.clinic_id, entry.method, "out").inc(
                    entry.amount_cents)
        await self._commit(offsets)
        return len(seen)

    async def _open_visits(self, new: list[LedgerRecord]) -> dict[tuple[str, str], bool]:
        """Whether each visit the new entries touch has a balance once they are applied."""
        by_clinic: dict[str, dict[str, list[Posted]]] = {}
        for record in new:
            if record.posted.visit_id:
                by_clinic.setdefault(record.clinic_id, {}).setdefault(
                    record.posted.visit_id, []).append(record.posted)
        result: dict[tuple[str, str], bool] = {}
        for clinic_id, visits in by_clinic.items():
            histories = await self.store.visits_entries(clinic_id, visits)
            for visit_id, added in visits.items():
                visit = account(visit_id, [*histories.get(visit_id, []), *added])
                result[(clinic_id, visit_id)] = visit.balance_cents != 0
        return result

    def _read(self, raw: Any) -> tuple[LedgerRecord | None, str]:
        if raw.value is None:
            return None, "empty record (tombstone)"
        try:
            event = ev.decode(raw.value)
        except ev.InvalidEvent as exc:
            return None, exc.reason
        posted = posted_of(event, raw.offset)
        if posted is None:
            return None, f"{event.event_type} is not a ledger entry"
        if posted.entry_id != event.envelope.event_id:
            return None, (f"event_id {event.envelope.event_id!r} is not the entry_id "
                          f"{posted.entry_id!r}")
        if raw.key is not None and raw.key != event.clinic_id.encode():
            return None, "ledger records are keyed by clinic_id"
        return LedgerRecord(event.clinic_id, raw.partition, raw.offset, raw.value, posted), ""

    async def _dead_letter(self, raw: Any, reason: str) -> None:
        log.warning("ledger record dead-lettered", reason=reason, partition=raw.partition,
                    offset=raw.offset)
        DEAD_LETTERS.labels("billing", reason_kind(reason)).inc()
        await self.runtime.broker.publish(
            dead_letter_record(raw=raw.value, reason=reason, consumer="billing.ledger",
                               source_topic=raw.topic, partition=raw.partition,
                               offset=raw.offset, key=raw.key),
            self.dead_letter_topic, key=raw.key)

    async def _commit(self, offsets: dict[tuple[str, int], int]) -> None:
        """Tell Kafka what Redis holds (for lag monitoring only)."""
        kafka = self.kafka_consumer
        if kafka is None:
            return
        assigned = kafka.assignment()
        commit = {TopicPartition(*tp): offset + 1 for tp, offset in offsets.items()
                  if TopicPartition(*tp) in assigned}
        if commit:
            try:
                await kafka.commit(commit)
            except Exception as exc:  # a rebalance in progress: the next batch commits
                log.info("kafka commit skipped", error=repr(exc))
        lag = 0
        for tp, offset in offsets.items():
            try:
                highwater = kafka.highwater(TopicPartition(*tp))
            except Exception:
                return
            if highwater is not None:
                lag += max(0, highwater - offset - 1)
        CONSUMER_LAG.labels("billing").set(lag)
