"""Flow's projection of the floor topic: every clinic live in memory, boards after every
batch, checkpoints in Redis.

``FlowProjection`` is the ``StreamingProjection`` that ``shared.projection.ProjectionRunner``
runs (app.py wires them). The runner owns the Kafka side: the batch subscriber, positioning
each assigned partition, dropping an off-course first batch, reading each record, Kafka
commits of what Redis holds, lag, and the counts and logs of what was applied and
dead-lettered. Flow's side:

``positions``
    claims each newly assigned partition (fencing off an instance that held it and may
    still write), restores its clinics from their snapshots and says where its checkpoint
    ends; the runner seeks just after it (no checkpoint: the beginning, so a flushed
    Redis rebuilds itself). Resuming comes from Redis, never from Kafka's committed
    offsets.
``apply_stream``
    ``FloorProcessor.process_stream`` applies every record past the last applied offset,
    in memory, as the runner reads them (a few hundred ahead, never the whole batch
    decoded at once, no ``Inbound`` made for a record that applies); the touched clinics'
    boards are written and published to SSE listeners; at most every
    ``checkpoint_seconds`` of the injected clock (ten times less often while catching up
    on a backlog, at once when the backlog is read), the changed clinics' snapshots, the
    partitions' offsets and the dead letters decided since the last checkpoint (queued in
    the outbox) are stored in one atomic Redis write; changed wait estimates go to the
    estimates topic. ``Applied.offsets`` is what that checkpoint stored (empty between
    checkpoints), so Kafka's commits and the lag follow Redis.
``release``
    a last checkpoint of the partitions going to another instance, then forgets them.

Two periodic jobs, each a ``tick(now)`` (registered in app.py, called directly by tests):
``refresh_boards`` re-estimates every live clinic as the clock moves, and
``flush_when_idle`` checkpoints the tail of a burst once the topic goes quiet.
"""

from __future__ import annotations

import asyncio
import math
import re
import uuid
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import orjson
from pydantic import TypeAdapter

from services.flow import metrics as m
from services.flow.processor import FloorBatchOutcome, FloorProcessor, build_board
from services.flow.store import Checkpoint, Fenced, FlowStore
from shared import events as ev
from shared.clock import Clock
from shared.floor.estimator import WaitEstimate
from shared.floor.model import Visit
from shared.floor.snapshot import dump_flow_json, load_flow
from shared.logging import get_logger
from shared.metrics import EVENTS_CONSUMED
from shared.outbox import Send
from shared.projection import Applied, DeadLetter, Partition, Reading
from shared.told import LastTold, screen_range, tell_again, told_event

log = get_logger("clinicflow.flow.consumer")
CONSUMER = "flow"  # names the projection in metrics, logs and dead letters
# estimates and stage timings older than this are not published (catch-up)
FRESH = timedelta(minutes=30)
CATCH_UP_LAG = 5000  # records behind: above this, boards wait until flow has caught up
# while catching up, checkpoints come this many times less often: each writes every touched
# clinic's snapshot (about 20 KiB each), and a restart replays at most a few seconds more
CATCH_UP_CHECKPOINT_FACTOR = 10
# the last estimate published per visit is pruned of ended visits past this many entries
PUBLISHED_PRUNE_AT = 2000
LONG_AGO = datetime.min.replace(tzinfo=UTC)


_ESTIMATED = ev.EVENT_TYPE_OF[ev.WaitEstimated]  # (event type, version)
# matched whole: in Python a pattern's "$" lets a trailing newline through, in pydantic not
_ID = re.compile(ev.WaitEstimated.model_json_schema()["properties"]["visit_id"]["pattern"])
_EVENT_TIMES: dict[datetime, str] = {}  # an estimate's time -> as the envelope gives it
_ENVELOPE_TIME = TypeAdapter(datetime)


def estimate_event(clinic_id: str, visit: Visit, estimate: WaitEstimate, at: datetime) -> bytes:
    """The ``wait.estimated`` event of ``estimate`` (made at ``at``), as Kafka gets it: the
    bytes ``ev.encode(ev.make_event(ev.WaitEstimated(...), ...))`` gives, made without
    the pydantic models (a board's changed estimates are sent after every batch). Values
    the models would refuse, or might write otherwise, go through them (and raise)."""
    position, wait, low, high = (estimate.position, estimate.wait_minutes, estimate.low,
                                 estimate.high)
    if not (type(position) is int and position >= 1
            and all(type(v) in (float, int) and 0 <= v < math.inf for v in (wait, low, high))
            and at.tzinfo is not None
            and _ID.fullmatch(visit.visit_id) and _ID.fullmatch(clinic_id)
            and type(visit.ticket_code) is str
            and (visit.provider_id is None or type(visit.provider_id) is str)):
        return ev.encode(ev.make_event(
            ev.WaitEstimated(visit_id=visit.visit_id, ticket_code=visit.ticket_code,
                             provider_id=visit.provider_id, position=position,
                             wait_minutes=wait, low=low, high=high),
            clinic_id=clinic_id, source="flow", occurred_at=at, correlation_id=visit.visit_id))
    # keyed by the instant: two local times a fall-back hour apart (fold) compare equal
    instant = at.astimezone(UTC)
    occurred_at = _EVENT_TIMES.get(instant)
    if occurred_at is None:
        if len(_EVENT_TIMES) >= 4096:
            _EVENT_TIMES.clear()
        occurred_at = _EVENT_TIMES[instant] = _ENVELOPE_TIME.dump_python(instant, mode="json")
    return orjson.dumps({
        "event_id": uuid.uuid4().hex,
        "event_type": _ESTIMATED[0],
        "schema_version": _ESTIMATED[1],
        "occurred_at": occurred_at,
        "clinic_id": clinic_id,
        "correlation_id": visit.visit_id,
        "source": "flow",
        "data": {"visit_id": visit.visit_id, "ticket_code": visit.ticket_code,
                 "provider_id": visit.provider_id, "position": position,
                 "wait_minutes": float(wait), "low": float(low), "high": float(high)},
    })


class KafkaPositions(Protocol):
    """What flow asks of its runner (``ProjectionRunner``): how far behind the ends of
    the partitions some offsets are, and Kafka commits of the checkpoints it stores
    between batches (the periodic jobs, a revocation)."""

    def lag(self, offsets: Mapping[Partition, int]) -> int | None: ...

    async def commit(self, offsets: Mapping[Partition, int]) -> None: ...


class NoKafka:
    """Positions unknown (unit tests, benchmarks): no lag known, nothing committed."""

    def lag(self, offsets: Mapping[Partition, int]) -> int | None:
        return None

    async def commit(self, offsets: Mapping[Partition, int]) -> None:
        return None


class FlowProjection:
    """Applies the floor topic to flow's projection; owns the in-memory clinics.

    ``kafka`` is the runner once app.py has made it (lag and commits); ``send`` hands
    wait estimates (bytes, topic, key) to the producer, each batch's in order, and their
    confirmations are awaited together (``ServiceRuntime.send``)."""

    def __init__(self, store: FlowStore, send: Send, clock: Clock, *,
                 estimates_topic: str, publish_estimates: bool = True,
                 checkpoint_seconds: float = 1.0, labels: m.Labels | None = None,
                 told_topic: str | None = None) -> None:
        self.store = store
        self.labels = labels if labels is not None else m.Labels()  # bounded label values
        self.send = send
        self.clock = clock
        self.estimates_topic = estimates_topic
        self.publish_estimates = publish_estimates
        # the waiting-room screen's ranges as told (shared/told.py), with the estimates
        self.told_topic = told_topic
        self._told_tv: dict[str, LastTold] = {}
        self.checkpoint_seconds = checkpoint_seconds
        self.kafka: KafkaPositions = NoKafka()
        # each clinic remembers its days, counted on its own clock (CLINICFLOW_CLINICS)
        self.processor = FloorProcessor(self.labels.clinics.zone)
        self.lock = asyncio.Lock()
        self._dirty: dict[str, Partition] = {}
        self._pending_offsets: dict[Partition, int] = {}
        self._pending_dead: list[DeadLetter] = []  # decided since the last checkpoint
        self._last_checkpoint = clock.now()
        self._last_batch = LONG_AGO
        self._published: dict[str, tuple[datetime, float, float, float]] = {}
        self._prune_published_at = PUBLISHED_PRUNE_AT
        self._stale: set[str] = set()  # clinics whose board waits (catch-up, Redis down)
        self._last_lag: int | None = None
        self._catching_up = False  # a backlog (or a rebuild) is being read: checkpoint at its end
        self._stage_histograms: dict[tuple[str, str, str], Any] = {}
        # each board gauge series flow set: its labelled child and the value it holds
        self._gauge_children: dict[tuple[Any, tuple[str, ...]], Any] = {}
        self._gauge_values: dict[tuple[Any, tuple[str, ...]], float] = {}
        self._duplicates = EVENTS_CONSUMED.labels("flow", "duplicate")

    # ------------------------------------------------------------ partitions

    async def positions(self, partitions: Sequence[Partition]) -> dict[Partition, int | None]:
        """Claim each new partition, restore its clinics from the checkpoint, and return
        the checkpointed offset of each (None: none, rebuild from the beginning)."""
        async with self.lock:
            stored: dict[Partition, int | None] = {}
            for tp in partitions:
                await self.store.claim(*tp)  # fences off a paused holder
                offset, snapshots = await self.store.load_partition(*tp)
                for raw in snapshots:
                    self.processor.adopt(load_flow(orjson.loads(raw)), *tp)
                # set with the adopted state, before the runner seeks: should a seek fail,
                # a record at or below the checkpoint is still never applied again
                if offset is None:
                    log.info("no checkpoint: rebuilding partition from the beginning",
                             topic=tp[0], partition=tp[1])
                else:
                    self.processor.applied[tp] = offset
                    log.info("resuming partition from checkpoint", topic=tp[0],
                             partition=tp[1], offset=offset,
                             clinics=len(self.processor.clinics_of(*tp)))
                stored[tp] = offset
            # the restored clinics' boards are current again
            restored = [c for tp in partitions for c in self.processor.clinics_of(*tp)]
            boards = {clinic_id: self._board_bytes(clinic_id)[0] for clinic_id in restored}
            if boards:
                try:
                    await self.store.write(boards)
                except Exception as exc:  # drawn again by the next batch or idle checkpoint
                    log.warning("restored boards not written", error=repr(exc))
                    self._stale.update(boards)
            return stored

    async def release(self, partitions: Sequence[Partition]) -> None:
        """Checkpoint what this instance applied, then let the partitions go (even when
        the checkpoint fails: what was not stored is replayed by the next owner)."""
        async with self.lock:
            try:
                await self._write_checkpoint(self.clock.now(), {})
            except Fenced:
                log.warning("partitions taken over while this instance was paused: its "
                            "late checkpoint is dropped", partitions=len(partitions))
            finally:
                gone = set(partitions)
                for tp in partitions:
                    for clinic_id in self.processor.drop_partition(*tp):
                        self._dirty.pop(clinic_id, None)
                        self._stale.discard(clinic_id)
                    self._pending_offsets.pop(tp, None)
                    self.store.release(*tp)
                self._pending_dead = [d for d in self._pending_dead if d.record.tp not in gone]

    # ------------------------------------------------------------ batches

    async def apply_stream(self, records: Iterator[Reading]) -> Applied:
        """Apply one batch, read by the runner as it goes (see the module docstring)."""
        now = self._last_batch = self.clock.now()
        async with self.lock:
            outcome = self.processor.process_stream(records)
            self._pending_dead.extend(outcome.dead_letters)
            partition_of = self.processor.partition_of
            for clinic_id in outcome.touched:
                self._dirty[clinic_id] = partition_of[clinic_id]
            self._pending_offsets.update(outcome.offsets)
            boards: dict[str, bytes] = {}
            estimates: list[tuple[str, WaitEstimate, datetime]] = []
            lag = self._last_lag = self.kafka.lag(outcome.offsets)
            self._stale.update(outcome.touched)
            drawn: set[str] = set()
            if lag is None or lag <= CATCH_UP_LAG:
                # catching up (a rebuild, a backlog): boards are drawn once it is over,
                # not for every batch on the way; what is applied is the same either way
                drawn = set(self._stale)
                for clinic_id in drawn:
                    if clinic_id not in self.processor.flows:
                        continue
                    at = outcome.touched.get(clinic_id)
                    board, clinic_estimates = self._board_bytes(clinic_id, at)
                    boards[clinic_id] = board
                    if at is not None:
                        estimates.extend((clinic_id, e, at) for e in clinic_estimates)
            if lag is not None and lag > CATCH_UP_LAG:
                self._catching_up = True
            # caught up at last: what took the rebuild is stored at once, not a checkpoint
            # period later (a restart now would replay it all again)
            caught_up = (self._catching_up and lag == 0
                         and self.kafka.lag(self.processor.applied) == 0)
            checkpoint = self._checkpoint_due(now, force=caught_up)
            self._observe(outcome, now)
            try:
                await self.store.write(boards, checkpoint)
            except Exception as exc:
                # applied in memory all the same (the batch is not read again): the boards
                # stay stale and the checkpoint pending until the next batch or the idle
                # checkpoint writes them, so no board stays behind the events applied
                log.warning("boards and checkpoint not written: they will be with the next "
                            "write", error=repr(exc))
                return Applied(outcome.applied, outcome.already_applied, outcome.dead_letters)
            self._stale -= drawn
            stored: dict[Partition, int] = {}
            if checkpoint is not None:
                self._after_checkpoint(now)
                if caught_up:
                    self._catching_up = False
                stored = checkpoint.offsets
        if self.publish_estimates and estimates:
            await self._publish_estimates(estimates)
        return Applied(outcome.applied, outcome.already_applied, outcome.dead_letters, stored)

    def _board_bytes(
        self, clinic_id: str, at: datetime | None = None
    ) -> tuple[bytes, list[WaitEstimate]]:
        flow = self.processor.flows[clinic_id]
        now = at or flow.last_event_at or self.clock.now()
        estimates = flow.estimates(now)
        board = build_board(flow, estimates, now)
        self._gauges(clinic_id, board)
        return orjson.dumps(board), estimates

    # ------------------------------------------------------------ checkpoints

    def _checkpoint_due(self, now: datetime, force: bool = False) -> Checkpoint | None:
        """What a checkpoint now would store, or None: nothing pending, or (unless
        ``force``) the last one is more recent than the checkpoint period."""
        if not self._pending_offsets:
            return None
        every = self.checkpoint_seconds
        if self._last_lag is not None and self._last_lag > CATCH_UP_LAG:
            every *= CATCH_UP_CHECKPOINT_FACTOR
        # a clock set back (negative) does not hold checkpoints off until it catches up
        if not force and 0 <= (now - self._last_checkpoint).total_seconds() < every:
            return None
        flows = self.processor.flows
        snapshots = {clinic_id: (tp, dump_flow_json(flows[clinic_id]))
                     for clinic_id, tp in self._dirty.items() if clinic_id in flows}
        return Checkpoint(dict(self._pending_offsets), snapshots,
                          [letter.entry(CONSUMER) for letter in self._pending_dead])

    def _after_checkpoint(self, now: datetime) -> None:
        self._dirty.clear()
        self._pending_offsets.clear()
        self._pending_dead.clear()
        self._last_checkpoint = now

    async def _write_checkpoint(self, now: datetime, boards: dict[str, bytes]) -> None:
        """Write ``boards`` with a checkpoint of everything pending, and tell Kafka what
        Redis now holds (lag monitoring)."""
        checkpoint = self._checkpoint_due(now, force=True)
        await self.store.write(boards, checkpoint)
        if checkpoint is not None:
            self._after_checkpoint(now)
            await self.kafka.commit(checkpoint.offsets)

    async def flush(self, now: datetime) -> None:
        """Checkpoint what is pending now, and draw the boards left stale (on shutdown,
        when the topic goes quiet, and after Redis was unreachable)."""
        if not self._pending_offsets and not self._stale:
            return
        async with self.lock:
            boards: dict[str, bytes] = {}
            drawn: set[str] = set()
            if self._stale and (self._last_lag is None or self._last_lag <= CATCH_UP_LAG):
                drawn = set(self._stale)
                boards = {clinic_id: self._board_bytes(clinic_id)[0] for clinic_id in drawn
                          if clinic_id in self.processor.flows}
            await self._write_checkpoint(now, boards)
            self._stale -= drawn

    async def flush_when_idle(self, now: datetime) -> None:
        """The idle checkpoint (a periodic ``tick``): once no batch has come for
        ``checkpoint_seconds``, ``flush``. While batches come, they checkpoint at their
        own pace (less often while catching up), and a forced one in between would undo
        that; a burst followed by silence must not leave its tail out of the checkpoint."""
        if not self._pending_offsets and not self._stale:
            return
        if 0 <= (now - self._last_batch).total_seconds() < self.checkpoint_seconds:
            return
        await self.flush(now)

    async def refresh_boards(self, now: datetime) -> int:
        """Re-estimate every live clinic at ``now`` (estimates age with the clock even when
        nothing happens) and checkpoint (a periodic ``tick``). Returns boards written."""
        async with self.lock:
            boards = {}
            for clinic_id, flow in self.processor.flows.items():
                last = flow.last_event_at
                if last is None or now - last > timedelta(hours=12) or now < last:
                    continue
                board, _ = self._board_bytes(clinic_id, now)
                boards[clinic_id] = board
            checkpoint = self._checkpoint_due(now, force=True)
            await self.store.write(boards, checkpoint)
            self._after_checkpoint(now)
            if checkpoint is not None:  # what Redis now holds, Kafka is told (lag monitoring)
                await self.kafka.commit(checkpoint.offsets)
        return len(boards)

    # ------------------------------------------------------------ estimates

    async def _publish_estimates(
        self, estimates: list[tuple[str, WaitEstimate, datetime]]
    ) -> None:
        wall = self.clock.now()
        batch: list[tuple[str, bytes]] = []
        told: list[tuple[str, bytes]] = []
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
            batch.append((clinic_id, estimate_event(clinic_id, visit, estimate, at)))
            last = self._told_tv.get(visit.visit_id)
            if self.told_topic is not None and tell_again(last, at, estimate.low, estimate.high):
                self._told_tv[visit.visit_id] = LastTold(at, estimate.low, estimate.high)
                low, high = screen_range(estimate.low, estimate.high)
                told.append((clinic_id, ev.encode(told_event(
                    clinic_id, visit.visit_id, channel="tv", low=float(low), high=float(high),
                    point=estimate.wait_minutes, at=at, source="flow",
                    provider_id=visit.provider_id, ticket_code=visit.ticket_code))))
        if len(self._published) > self._prune_published_at:
            # keep only visits still open: memory follows the open visits, not the day
            open_ids = {v for flow in self.processor.flows.values() for v in flow.clinic.visits}
            self._published = {v: p for v, p in self._published.items() if v in open_ids}
            self._told_tv = {v: t for v, t in self._told_tv.items() if v in open_ids}
            self._prune_published_at = max(PUBLISHED_PRUNE_AT, 2 * len(self._published))
        records = [(self.estimates_topic, clinic_id, body) for clinic_id, body in batch]
        if self.told_topic is not None:
            records += [(self.told_topic, clinic_id, body) for clinic_id, body in told]
        # every record handed over even when one cannot be, every outcome read; the
        # first failure fails the batch (as each awaited publish did)
        confirmations: list[Any] = []
        failure: BaseException | None = None
        for topic, clinic_id, body in records:
            try:
                confirmations.append(await self.send(body, topic, clinic_id.encode()))
            except Exception as exc:
                failure = failure or exc
        outcomes = await asyncio.gather(*confirmations, return_exceptions=True)
        failure = failure or next((o for o in outcomes if isinstance(o, BaseException)), None)
        if failure is not None:
            raise failure

    # ------------------------------------------------------------ metrics

    def _observe(self, outcome: FloorBatchOutcome, now: datetime) -> None:
        """Flow's own counts (the runner counts applied, already applied, dead letters)."""
        if outcome.duplicates:
            self._duplicates.inc(outcome.duplicates)
        histograms = self._stage_histograms
        # stages finished long ago (a rebuild, a backlog) are history, not what the clinic
        # is doing now: observed, they would show a day's worth at once (and set off the
        # alerts on rates); the day's own report (the board's operations) keeps them
        fresh_from = now - FRESH
        for clinic_id, stage, ended_at in outcome.stages:
            if ended_at < fresh_from:
                continue
            key = (clinic_id, self.labels.provider(clinic_id, stage.provider_id), stage.stage)
            histogram = histograms.get(key)
            if histogram is None:  # a labelled child looked up once, not per event
                histogram = histograms[key] = m.STAGE_MINUTES.labels(*key)
            histogram.observe(stage.minutes)

    def _gauges(self, clinic_id: str, board: dict[str, Any]) -> None:
        """The clinic's gauges from its board. Only the series whose value changed are
        set (a board changes few of them), each through its labelled child, looked up
        once: flow is the only writer of these gauges, so the value it last set is the
        value the series holds."""
        provider_label = self.labels.provider
        per_provider: dict[str, list[float]] = {}
        for waiting in board["waiting"]:
            per_provider.setdefault(provider_label(clinic_id, waiting["provider_id"]), []).append(
                waiting["wait_minutes"] or 0.0
            )
        known = {provider_label(clinic_id, p["provider_id"]) for p in board["providers"]}
        gauge = self._gauge
        for provider in known | set(per_provider):
            waits = per_provider.get(provider, [])
            gauge(m.QUEUE_LENGTH, (clinic_id, provider), len(waits))
            gauge(m.ESTIMATED_WAIT, (clinic_id, provider), max(waits, default=0.0))
        states: dict[str, int] = {
            "ready": 0,
            "occupied": 0,
            "needs_cleaning": 0,
            "out_of_service": 0,
        }
        for room in board["rooms"]:
            states[room["state"]] = states.get(room["state"], 0) + 1
        for state, count in states.items():
            gauge(m.ROOMS, (clinic_id, state), count)
        gauge(m.IN_ROOMS, (clinic_id,), len(board["in_rooms"]))
        delays: dict[str, float] = {}
        for provider in board["providers"]:
            label = provider_label(clinic_id, provider["provider_id"])
            delays[label] = max(delays.get(label, 0), provider["delay_minutes"])
        for label, minutes in delays.items():
            gauge(m.DELAY_MINUTES, (clinic_id, label), minutes)
        clinic_delay = board["clinic_delay"]
        gauge(m.DELAY_MINUTES, (clinic_id, "clinic"),
              clinic_delay["minutes"] if clinic_delay else 0)
        operations = board.get("operations")
        if operations is not None:
            self.labels.set_bottleneck(clinic_id, operations.get("bottleneck"))

    def _gauge(self, metric: Any, labels: tuple[str, ...], value: float) -> None:
        """Set one series of ``metric`` to ``value`` unless that is what it holds."""
        key = (metric, labels)
        if self._gauge_values.get(key) == value:
            return
        child = self._gauge_children.get(key)
        if child is None:
            child = self._gauge_children[key] = metric.labels(*labels)
        child.set(value)
        self._gauge_values[key] = value
