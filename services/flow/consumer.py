"""The floor consumer: Kafka batches in, Redis checkpoints and boards out.

One FastStream batch subscriber reads the floor topic. For each batch:

1. ``FloorProcessor.process`` applies every record not applied yet (pure);
2. dead letters are published (awaited, ``acks=all``) before anything that
   would mark their offsets as done;
3. boards of the touched clinics are written and published to SSE listeners,
   and, at most every ``checkpoint_seconds`` (ten times less often while
   catching up on a backlog, and at once when the backlog is read), the changed
   clinics' state and the partitions' offsets are stored in one Redis
   transaction;
4. changed wait estimates are published to the estimates topic.

Where to resume comes from Redis, not from Kafka's committed offsets: on
assignment a partition is positioned just after its checkpointed offset, or
at the beginning when Redis has none (a flushed Redis rebuilds itself). The
group's Kafka commits only serve lag monitoring.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from aiokafka import TopicPartition

from services.flow import metrics as m
from services.flow.processor import BatchResult, FloorProcessor, Record, build_board
from services.flow.store import Fenced, FlowStore
from shared import events as ev
from shared.consumer import (
    RedisPositioned,
    commit_applied,
    lag_after,
    resume_all,
)
from shared.floor.estimator import Estimate
from shared.floor.snapshot import dump_flow_json, load_flow
from shared.kafka import dead_letter_record
from shared.logging import get_logger
from shared.metrics import CONSUMER_LAG, DEAD_LETTERS, EVENTS_CONSUMED, reason_kind
from shared.service import ServiceRuntime

log = get_logger("clinicflow.flow.consumer")
# estimates and stage timings older than this are not published (catch-up)
FRESH = timedelta(minutes=30)
CATCH_UP_LAG = 5000  # records behind: above this, boards wait until flow has caught up
# while catching up, checkpoints come this many times less often: each writes every touched
# clinic's snapshot (about 20 KiB each), and a restart replays at most a few seconds more
CATCH_UP_CHECKPOINT_FACTOR = 10
# the last estimate published per visit is pruned of ended visits past this many entries
PUBLISHED_PRUNE_AT = 2000


class FloorConsumer(RedisPositioned):
    """Applies the floor topic to flow's projection; owns the in-memory clinics."""

    def __init__(
        self,
        runtime: ServiceRuntime,
        store: FlowStore,
        *,
        floor_topic: str,
        estimates_topic: str,
        dead_letter_topic: str,
        publish_estimates: bool = True,
        checkpoint_seconds: float = 1.0,
    ) -> None:
        super().__init__()
        self.runtime = runtime
        self.store = store
        self.floor_topic = floor_topic
        self.estimates_topic = estimates_topic
        self.dead_letter_topic = dead_letter_topic
        self.publish_estimates = publish_estimates
        self.checkpoint_seconds = checkpoint_seconds
        self.processor = FloorProcessor()
        self.lock = asyncio.Lock()
        self._dirty: dict[str, tuple[str, int]] = {}
        self._pending_offsets: dict[tuple[str, int], int] = {}
        self._last_checkpoint = time.monotonic()
        self._last_batch = 0.0  # monotonic time the last batch came
        self._published: dict[str, tuple[datetime, float, float, float]] = {}
        self._prune_published_at = PUBLISHED_PRUNE_AT
        self._stale: set[str] = set()  # clinics whose board waits (catch-up, Redis down)
        self._last_lag: int | None = None
        self._catching_up = False  # a backlog (or a rebuild) is being read: checkpoint at its end
        self.applied_total = 0
        self._stage_histograms: dict[tuple[str, str, str], Any] = {}

    # ------------------------------------------------------------- wiring

    async def on_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        """Restore each new partition's clinics from the checkpoint and seek past it."""
        async with self.lock:
            stored: dict[TopicPartition, int | None] = {}
            for tp in assigned:
                await self.store.claim(tp.topic, tp.partition)  # fences off a paused holder
                offset, snapshots = await self.store.load_partition(tp.topic, tp.partition)
                for raw in snapshots:
                    flow = load_flow(orjson.loads(raw))
                    self.processor.adopt(flow, tp.topic, tp.partition)
                stored[tp] = offset
                # set with the adopted state, before any seek: should the seeks below fail
                # (the listener's errors do not stop the consumer), a record at or below
                # the checkpoint is still never applied again, and a first batch from
                # elsewhere is sought back (``off_course``; 0: the partition's beginning)
                if offset is not None:
                    self.processor.applied[(tp.topic, tp.partition)] = offset
                self._expect[(tp.topic, tp.partition)] = 0 if offset is None else offset + 1
            await resume_all(self.kafka_consumer, stored, self._expect)
            for tp, offset in stored.items():
                if offset is None:
                    log.info("no checkpoint: rebuilding partition from the beginning",
                             topic=tp.topic, partition=tp.partition)
                else:
                    log.info("resuming partition from checkpoint", topic=tp.topic,
                             partition=tp.partition, offset=offset,
                             clinics=len(self.processor.clinics_of(tp.topic, tp.partition)))
            # the restored clinics' boards are current again
            boards = {}
            for tp in assigned:
                for clinic_id in self.processor.clinics_of(tp.topic, tp.partition):
                    boards[clinic_id] = self._board_bytes(clinic_id)[0]
            if boards:
                await self.store.write(boards)

    async def on_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        """Checkpoint what this instance applied, then let the partitions go (even when
        the checkpoint fails: what was not stored is replayed by the next owner)."""
        async with self.lock:
            try:
                await self._checkpoint(force=True)
            except Fenced:
                log.warning("partitions taken over while this instance was paused: its "
                            "late checkpoint is dropped", partitions=len(revoked))
            finally:
                for tp in revoked:
                    for clinic_id in self.processor.drop_partition(tp.topic, tp.partition):
                        self._dirty.pop(clinic_id, None)
                        self._stale.discard(clinic_id)
                    self._pending_offsets.pop((tp.topic, tp.partition), None)
                    self.store.release(tp.topic, tp.partition)

    # ------------------------------------------------------------ batches

    async def handle(self, raw_records: Sequence[Any]) -> BatchResult:
        """Apply one Kafka batch (aiokafka ``ConsumerRecord`` objects)."""
        started = time.perf_counter()
        self._last_batch = time.monotonic()
        async with self.lock:
            records = await self._without_gaps(raw_records)
            result = self.processor.process(records)
            await self._dead_letter(result)
            for clinic_id in result.touched:
                self._dirty[clinic_id] = self.processor.partition_of[clinic_id]
            self._pending_offsets.update(result.offsets)
            boards: dict[str, bytes] = {}
            estimates: list[tuple[str, Estimate, datetime]] = []
            lag = self._last_lag = self._lag(result)
            self._stale.update(result.touched)
            drawn: set[str] = set()
            if lag is None or lag <= CATCH_UP_LAG:
                # catching up (a rebuild, a backlog): boards are drawn once it is over,
                # not for every batch on the way; what is applied is the same either way
                drawn = set(self._stale)
                for clinic_id in drawn:
                    if clinic_id not in self.processor.flows:
                        continue
                    at = result.touched.get(clinic_id)
                    board, clinic_estimates = self._board_bytes(clinic_id, at)
                    boards[clinic_id] = board
                    if at is not None:
                        estimates.extend((clinic_id, e, at) for e in clinic_estimates)
            if lag is not None and lag > CATCH_UP_LAG:
                self._catching_up = True
            # caught up at last: what took the rebuild is stored at once, not a checkpoint
            # period later (a restart now would replay it all again)
            caught_up = self._catching_up and lag == 0 and self._behind_anywhere() == 0
            checkpoint = self._checkpoint_payload(force=caught_up)
            # counted now: applied in memory, the batch is not delivered again even when
            # the write below fails (its records then reach Redis with a later write)
            self._observe(result, lag)
            # a failed write (Redis down) leaves the boards stale: the next batch or the
            # idle flush draws them again, so no board stays behind the events applied
            await self.store.write(boards, checkpoint)
            self._stale -= drawn
            if checkpoint is not None:
                self._after_checkpoint()
                if caught_up:
                    self._catching_up = False
                await self._commit(checkpoint[0])
        if self.publish_estimates and estimates:
            await self._publish_estimates(estimates)
        m.BATCH_SECONDS.observe(time.perf_counter() - started)
        return result

    def _board_bytes(
        self, clinic_id: str, at: datetime | None = None
    ) -> tuple[bytes, list[Estimate]]:
        flow = self.processor.flows[clinic_id]
        now = at or flow.last_event_at or datetime.now(UTC)
        estimates = flow.estimates(now)
        board = build_board(flow, estimates, now)
        self._gauges(clinic_id, board)
        return orjson.dumps(board), estimates

    def _checkpoint_payload(
        self, force: bool = False
    ) -> tuple[dict[tuple[str, int], int], dict[str, tuple[tuple[str, int], bytes]]] | None:
        if not self._pending_offsets:
            return None
        every = self.checkpoint_seconds
        if self._last_lag is not None and self._last_lag > CATCH_UP_LAG:
            every *= CATCH_UP_CHECKPOINT_FACTOR
        if not force and time.monotonic() - self._last_checkpoint < every:
            return None
        snapshots = {
            clinic_id: (tp, dump_flow_json(self.processor.flows[clinic_id]))
            for clinic_id, tp in self._dirty.items()
            if clinic_id in self.processor.flows
        }
        return dict(self._pending_offsets), snapshots

    def _after_checkpoint(self) -> None:
        self._dirty.clear()
        self._pending_offsets.clear()
        self._last_checkpoint = time.monotonic()

    async def _checkpoint(self, force: bool = False) -> None:
        payload = self._checkpoint_payload(force)
        if payload is not None:
            await self.store.write({}, payload)
            self._after_checkpoint()
            await self._commit(payload[0])

    async def _commit(self, offsets: dict[tuple[str, int], int]) -> None:
        """Tell Kafka what is checkpointed (for lag monitoring; see shared/consumer.py)."""
        await commit_applied(self.kafka_consumer, offsets)

    async def _without_gaps(self, raw_records: Sequence[Any]) -> list[Record]:
        """The batch's records, minus those of a partition that did not start where its
        checkpoint says (a position decided by the group's committed offset rather than
        by our seek): that partition is sought again and its records are dropped."""
        # aiokafka's records have Record's fields: no copy of each
        records: list[Record] = list(raw_records)
        skip = await self.off_course_partitions(records)
        if not skip:
            return records
        return [r for r in records if (r.topic, r.partition) not in skip]

    async def flush(self, idle_only: bool = False) -> None:
        """Checkpoint what is pending now, and draw the boards left stale (on shutdown,
        when the topic goes quiet, and after Redis was unreachable).

        ``idle_only``: only once no batch has come for ``checkpoint_seconds`` (the idle
        loop's call); while batches come, they checkpoint at their own pace (less often
        while catching up), and a forced one in between would undo that."""
        if not self._pending_offsets and not self._stale:
            return
        if idle_only and time.monotonic() - self._last_batch < self.checkpoint_seconds:
            return
        async with self.lock:
            if self._stale and (self._last_lag is None or self._last_lag <= CATCH_UP_LAG):
                drawn = set(self._stale)
                boards = {clinic_id: self._board_bytes(clinic_id)[0] for clinic_id in drawn
                          if clinic_id in self.processor.flows}
                payload = self._checkpoint_payload(force=True)
                await self.store.write(boards, payload)
                self._stale -= drawn
                if payload is not None:
                    self._after_checkpoint()
                    await self._commit(payload[0])
            else:
                await self._checkpoint(force=True)

    async def _dead_letter(self, result: BatchResult) -> None:
        for dead in result.dead_letters:
            record = dead.record
            await self.runtime.broker.publish(
                dead_letter_record(
                    raw=record.value,
                    reason=dead.reason,
                    consumer="flow",
                    source_topic=record.topic,
                    partition=record.partition,
                    offset=record.offset,
                    key=record.key,
                ),
                self.dead_letter_topic,
                key=record.key,
            )
            DEAD_LETTERS.labels("flow", reason_kind(dead.reason)).inc()
            log.warning(
                "event dead-lettered",
                reason=dead.reason,
                partition=record.partition,
                offset=record.offset,
            )

    async def _publish_estimates(self, estimates: list[tuple[str, Estimate, datetime]]) -> None:
        wall = datetime.now(UTC)
        batch: list[tuple[str, bytes]] = []
        for clinic_id, estimate, at in estimates:
            if wall - at > FRESH:
                continue
            previous = self._published.get(estimate.visit_id)
            if previous is not None:
                made_at, wait, _low, high = previous
                aged = (at - made_at).total_seconds() / 60.0
                if (
                    abs(max(0.0, wait - aged) - estimate.wait_minutes) < 0.5
                    and abs(max(0.0, high - aged) - estimate.high) < 1.0
                ):
                    continue
            self._published[estimate.visit_id] = (
                at,
                estimate.wait_minutes,
                estimate.low,
                estimate.high,
            )
            flow = self.processor.flows[clinic_id]
            visit = flow.clinic.visits.get(estimate.visit_id)
            if visit is None:
                continue
            event = ev.make_event(
                ev.WaitEstimated(
                    visit_id=visit.visit_id,
                    ticket_code=visit.ticket_code,
                    provider_id=visit.provider_id,
                    position=estimate.position,
                    wait_minutes=estimate.wait_minutes,
                    low=estimate.low,
                    high=estimate.high,
                ),
                clinic_id=clinic_id,
                source="flow",
                occurred_at=at,
                correlation_id=visit.visit_id,
            )
            batch.append((clinic_id, ev.encode(event)))
        if len(self._published) > self._prune_published_at:
            # keep only visits still open: memory follows the open visits, not the day
            open_ids = {v for flow in self.processor.flows.values() for v in flow.clinic.visits}
            self._published = {v: p for v, p in self._published.items() if v in open_ids}
            self._prune_published_at = max(PUBLISHED_PRUNE_AT, 2 * len(self._published))
        producer = self.runtime.broker
        await asyncio.gather(
            *(
                producer.publish(body, self.estimates_topic, key=clinic_id.encode())
                for clinic_id, body in batch
            )
        )

    # ------------------------------------------------------------ metrics

    def _observe(self, result: BatchResult, lag: int | None) -> None:
        EVENTS_CONSUMED.labels("flow", "applied").inc(result.applied)
        if result.duplicates:
            EVENTS_CONSUMED.labels("flow", "duplicate").inc(result.duplicates)
        if result.already_applied:
            EVENTS_CONSUMED.labels("flow", "already_applied").inc(result.already_applied)
        if result.dead_letters:
            EVENTS_CONSUMED.labels("flow", "dead_lettered").inc(len(result.dead_letters))
        self.applied_total += result.applied
        histograms = self._stage_histograms
        # stages finished long ago (a rebuild, a backlog) are history, not what the clinic
        # is doing now: observed, they would show a day's worth at once (and set off the
        # alerts on rates); the day's own report (the board's operations) keeps them
        fresh_from = datetime.now(UTC) - FRESH
        for clinic_id, stage, ended_at in result.stages:
            if ended_at < fresh_from:
                continue
            key = (clinic_id, stage.provider_id or "any", stage.stage)
            histogram = histograms.get(key)
            if histogram is None:  # a labelled child looked up once, not per event
                histogram = histograms[key] = m.STAGE_MINUTES.labels(*key)
            histogram.observe(stage.minutes)
        if lag is not None:
            CONSUMER_LAG.labels("flow").set(lag)

    def _lag(self, result: BatchResult) -> int | None:
        """Records left on the partitions this batch came from (None: not known yet)."""
        return lag_after(self.kafka_consumer, result.offsets)

    def _behind_anywhere(self) -> int | None:
        """Records left on every partition this instance has applied records of (a batch
        may come from the partitions read to the end while others still have a backlog)."""
        return lag_after(self.kafka_consumer, self.processor.applied)

    def _gauges(self, clinic_id: str, board: dict[str, Any]) -> None:
        per_provider: dict[str, list[float]] = {}
        for waiting in board["waiting"]:
            per_provider.setdefault(waiting["provider_id"] or "any", []).append(
                waiting["wait_minutes"] or 0.0
            )
        for provider in {p["provider_id"] for p in board["providers"]} | set(per_provider):
            waits = per_provider.get(provider, [])
            m.QUEUE_LENGTH.labels(clinic_id, provider).set(len(waits))
            m.ESTIMATED_WAIT.labels(clinic_id, provider).set(max(waits, default=0.0))
        states: dict[str, int] = {
            "ready": 0,
            "occupied": 0,
            "needs_cleaning": 0,
            "out_of_service": 0,
        }
        for room in board["rooms"]:
            states[room["state"]] = states.get(room["state"], 0) + 1
        for state, count in states.items():
            m.ROOMS.labels(clinic_id, state).set(count)
        m.IN_ROOMS.labels(clinic_id).set(len(board["in_rooms"]))
        for provider in board["providers"]:
            m.DELAY_MINUTES.labels(clinic_id, provider["provider_id"]).set(
                provider["delay_minutes"]
            )
        clinic_delay = board["clinic_delay"]
        m.DELAY_MINUTES.labels(clinic_id, "clinic").set(
            clinic_delay["minutes"] if clinic_delay else 0
        )

    # ------------------------------------------------------------- ticker

    async def refresh_boards(self, now: datetime | None = None) -> int:
        """Re-estimate every live clinic at the current time (estimates age with the
        clock even when nothing happens) and checkpoint. Returns boards written."""
        wall = now or datetime.now(UTC)
        async with self.lock:
            boards = {}
            for clinic_id, flow in self.processor.flows.items():
                last = flow.last_event_at
                if last is None or wall - last > timedelta(hours=12) or wall < last:
                    continue
                board, _ = self._board_bytes(clinic_id, wall)
                boards[clinic_id] = board
            payload = self._checkpoint_payload(force=True)
            await self.store.write(boards, payload)
            self._after_checkpoint()
            if payload is not None:  # what Redis now holds, Kafka is told (lag monitoring)
                await self._commit(payload[0])
        return len(boards)
