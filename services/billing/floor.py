"""What billing reads on the floor topic: arrivals (the visit exists at the clinic, its
pseudonymous patient ref and provider), who saw the patient (provider.in, for the
receipt), how visits end (checkout, cancellation: a visit cancelled cannot be checked
out, a visit checked out is not told to the floor again), checkouts published by other
clients (priced like the desk's), and undone facts (an undone checkout's charge is
voided; the visit an undone fact ended is open again; a visit whose arrival was undone
no longer exists, as on the floor).

``floor_effects(event, now)`` decides, without I/O, what a floor event asks of billing
(most ask nothing). ``BillingFloorProjection`` is the floor consumer's ``Projection`` for
the shared runner: for a batch's new records, in order, it runs the effects through the
desk, then stores the batch's offsets (``P:applied:billing.floor:...``) and its dead
letters (to the outbox) in one Redis transaction.

Every effect is idempotent (entry ids derive from the visit or the floor event; what is
remembered of a visit is overwritten with the same values), so the effects run before
their offsets are stored: a batch that fails part way (Redis or Kafka away, the visit
busy, the ledger projection behind) is read again by the runner and what already took
effect posts nothing twice. A record billing cannot read (a tombstone, not an event,
keyed other than by its clinic, on another partition than its key's) is dead-lettered
with the reason; a readable event billing has nothing to do with is applied as a no-op.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from redis.asyncio import Redis
from redis.exceptions import WatchError

from services.billing import metrics as m
from services.billing.desk import Desk
from shared import events as ev
from shared.clock import Clock
from shared.errors import Conflict, Rejected
from shared.logging import get_logger
from shared.outbox import Outbox
from shared.projection import (
    Applied,
    DeadLetter,
    Inbound,
    Offsets,
    Partition,
    RecordReader,
    fresh,
)

log = get_logger("clinicflow.billing.floor")
FLOOR_CONSUMER = "billing.floor"
MAX_CHECKOUT_AGE = timedelta(days=1)  # a new group reading 14 days of floor bills nothing old


def floor_reader(floor_topic: str) -> RecordReader:
    """The floor consumer's reader: any event (billing ignores most of them)."""
    return RecordReader({floor_topic: None})


# ------------------------------------------------------------------ effects (pure)


@dataclass(frozen=True, slots=True)
class RememberArrival:
    """The visit checked in at the clinic: it exists there; keep its patient ref for its
    checkout and its provider for its receipt."""

    clinic_id: str
    visit_id: str
    patient_ref: str | None
    provider_id: str | None = None
    event_id: str = ""  # the arrival's: an undo naming it takes the visit off the floor


@dataclass(frozen=True, slots=True)
class RememberProvider:
    """The provider who saw the patient (named on the receipt)."""

    clinic_id: str
    visit_id: str
    provider_id: str


@dataclass(frozen=True, slots=True)
class VisitEnded:
    """The floor ended the visit: ``how`` is ``checked_out`` or a cancellation's reason."""

    clinic_id: str
    visit_id: str
    how: str
    event_id: str


@dataclass(frozen=True, slots=True)
class ReopenVisit:
    """An undo: the visit the undone event ended (if any) is open again."""

    clinic_id: str
    undone_event_id: str


@dataclass(frozen=True, slots=True)
class VisitChanged:
    """A fact about the visit after its arrival (roomed, provider in; an end or a
    provider's name mark it too): the floor no longer lets its arrival be undone."""

    clinic_id: str
    visit_id: str


@dataclass(frozen=True, slots=True)
class UndoArrival:
    """An undo: when the undone event is a visit's arrival and nothing happened to the
    visit since (the floor's own rule: it refuses such an undo otherwise), the visit no
    longer exists on the floor (flow and check-in drop it): no money command may name it
    any more."""

    clinic_id: str
    undone_event_id: str


@dataclass(frozen=True, slots=True)
class PriceFloorCheckout:
    """Price a checkout another client published, like the desk's (once per event)."""

    clinic_id: str
    visit_id: str
    cpt_codes: tuple[str, ...]
    event_id: str


@dataclass(frozen=True, slots=True)
class CheckoutTooOld:
    """A checkout from another client older than ``MAX_CHECKOUT_AGE``: logged, not
    priced (the desk prices it)."""

    clinic_id: str
    event_id: str


@dataclass(frozen=True, slots=True)
class VoidUndoneCheckout:
    """A checkout undone on the floor: void its charge and share."""

    clinic_id: str
    undone_event_id: str
    undo_event_id: str


FloorEffect = (RememberArrival | RememberProvider | VisitEnded | ReopenVisit | UndoArrival
               | VisitChanged | PriceFloorCheckout | CheckoutTooOld | VoidUndoneCheckout)


def floor_effects(event: ev.Event, now: datetime) -> tuple[FloorEffect, ...]:
    """What a floor event asks of billing at ``now``, in order (empty: nothing)."""
    payload, clinic_id = event.payload, event.clinic_id
    event_id = event.envelope.event_id
    if isinstance(payload, ev.PatientArrived):
        return (RememberArrival(clinic_id, payload.visit_id, payload.patient_ref,
                                payload.provider_id, event_id),)
    if isinstance(payload, ev.ProviderIn):
        if payload.provider_id:
            return (RememberProvider(clinic_id, payload.visit_id, payload.provider_id),)
        return (VisitChanged(clinic_id, payload.visit_id),)
    if isinstance(payload, ev.PatientRoomed):
        return (VisitChanged(clinic_id, payload.visit_id),)
    if isinstance(payload, ev.ArrivalCancelled):
        return (VisitEnded(clinic_id, payload.visit_id, payload.reason, event_id),)
    if isinstance(payload, ev.PatientCheckedOut):
        ended = VisitEnded(clinic_id, payload.visit_id, "checked_out", event_id)
        if event.envelope.source == "billing" or not payload.cpt_codes:
            return (ended,)  # the desk priced its own checkouts before publishing them
        if now - event.occurred_at > MAX_CHECKOUT_AGE:
            return (CheckoutTooOld(clinic_id, event_id), ended)
        return (PriceFloorCheckout(clinic_id, payload.visit_id, tuple(payload.cpt_codes),
                                   event_id), ended)
    if isinstance(payload, ev.ActionUndone):
        return (VoidUndoneCheckout(clinic_id, payload.undone_event_id, event_id),
                ReopenVisit(clinic_id, payload.undone_event_id),
                UndoArrival(clinic_id, payload.undone_event_id))
    return ()


# ------------------------------------------------------------------ the projection


class BillingFloorProjection:
    """The floor consumer, run by the shared ``ProjectionRunner`` (module docstring)."""

    max_conflicts = 50

    def __init__(self, desk: Desk, redis: Redis, prefix: str, outbox: Outbox,
                 clock: Clock, consumer: str = FLOOR_CONSUMER) -> None:
        self.desk = desk
        self.redis = redis
        self.offsets = Offsets(redis, prefix, consumer)
        self.outbox = outbox
        self.clock = clock
        self.consumer = consumer

    async def positions(self, partitions: Sequence[Partition]) -> dict[Partition, int | None]:
        return await self.offsets.read(partitions)

    async def release(self, partitions: Sequence[Partition]) -> None:
        return None  # nothing kept in memory

    async def apply(self, records: list[Inbound]) -> Applied:
        """Run the effects of the records past the stored offsets, in order, then store
        the offsets and the dead letters together. An effect that fails raises: the
        runner reads the batch again."""
        stored = await self.offsets.read(sorted({r.tp for r in records}))
        new, already, offsets = fresh(records, stored)
        now = self.clock.now()
        effects = 0
        dead: list[DeadLetter] = []
        for record in new:
            if record.event is None:
                dead.append(DeadLetter(record, record.reason or "not an event"))
                continue
            for effect in floor_effects(record.event, now):
                effects += await self.take_effect(effect)
        dead = await self._store(offsets, dead)
        return Applied(effects, already, dead, offsets)

    async def take_effect(self, effect: FloorEffect) -> int:
        """Run one effect through the desk; 1 when it changed something, else 0."""
        desk = self.desk
        if isinstance(effect, RememberArrival):
            await desk.store.remember_arrival(effect.clinic_id, effect.visit_id,
                                              effect.patient_ref, effect.provider_id,
                                              effect.event_id)
            return 1
        if isinstance(effect, RememberProvider):
            await desk.store.remember_provider(effect.clinic_id, effect.visit_id,
                                               effect.provider_id)
            return 1
        if isinstance(effect, VisitEnded):
            await desk.store.visit_ended(effect.clinic_id, effect.visit_id, effect.how,
                                         effect.event_id)
            return 1
        if isinstance(effect, ReopenVisit):
            reopened = await desk.store.reopen_visit(effect.clinic_id, effect.undone_event_id)
            if reopened is not None:
                await desk.visit_end_undone(effect.clinic_id, reopened)
            return 1 if reopened else 0
        if isinstance(effect, VisitChanged):
            await desk.store.visit_changed(effect.clinic_id, effect.visit_id)
            return 1
        if isinstance(effect, UndoArrival):
            return 1 if await desk.store.undo_arrival(effect.clinic_id,
                                                      effect.undone_event_id) else 0
        if isinstance(effect, CheckoutTooOld):
            log.warning("old checkout on the floor not priced: price it at the desk",
                        clinic=effect.clinic_id, event_id=effect.event_id)
            return 0
        if isinstance(effect, PriceFloorCheckout):
            try:
                result = await desk.checkout(effect.clinic_id, effect.visit_id,
                                             cpt_codes=effect.cpt_codes,
                                             floor_event_id=effect.event_id)
            except (Rejected, Conflict) as exc:  # unknown codes, too many, a visit ended
                if isinstance(exc, Conflict) and exc.code != "visit_ended":
                    raise  # busy with another money command: the batch is read again
                m.CHECKOUTS.labels("unpriceable").inc()
                log.error("checkout on the floor not priced", clinic=effect.clinic_id,
                          event_id=effect.event_id, reason=exc.detail)
                return 0
            return 1 if result.entries else 0
        if isinstance(effect, VoidUndoneCheckout):
            voids = await desk.undo_checkout(effect.clinic_id,
                                             undone_event_id=effect.undone_event_id,
                                             undo_event_id=effect.undo_event_id)
            return 1 if voids else 0
        return 0

    async def _store(self, offsets: dict[Partition, int],
                     dead: list[DeadLetter]) -> list[DeadLetter]:
        """Store the offsets and queue the dead letters in one transaction; returns the
        dead letters queued. Fenced like ``RedisProjection``: an instance that took a
        partition over meanwhile and got further keeps its offset, and the records at
        or below it (dead letters included) are its own."""
        if not offsets:
            return []
        partitions = sorted(offsets)
        keys = [self.offsets.key(tp) for tp in partitions]
        for _attempt in range(self.max_conflicts):
            try:
                async with self.redis.pipeline(transaction=True) as pipe:
                    await pipe.watch(*keys)
                    raw = await pipe.mget(keys)
                    theirs = {tp: int(value) for tp, value in zip(partitions, raw, strict=True)
                              if value is not None}
                    ahead = {tp: offset for tp, offset in offsets.items()
                             if offset > theirs.get(tp, -1)}
                    letters = [d for d in dead if d.record.offset > theirs.get(d.record.tp, -1)]
                    pipe.multi()
                    self.offsets.write(pipe, ahead)
                    self.outbox.queue(pipe, [d.entry(self.consumer) for d in letters])
                    await pipe.execute()
                    return letters
            except WatchError:
                continue
        raise RuntimeError(f"{self.consumer}: gave up after {self.max_conflicts} conflicting "
                           "writes to its offsets")
