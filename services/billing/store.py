"""Billing's Redis projection. The one place that knows its key layout.

Keys (``P`` is ``CLINICFLOW_REDIS_PREFIX``, default ``cf``)::

    P:applied:billing.ledger:{topic}:{partition}  last ledger offset the projection applied,
                                                 written with its entries (shared/projection.py)
    P:applied:billing.floor:{topic}:{partition}   last floor offset whose effects are done
    P:billing:outbox, P:billing:outbox-lock      dead letters waiting to be published, and
                                                 the relay's lock (shared/outbox.py);
                                                 P:billing:outbox-parked those refused for good
    P:billing:entries:{clinic}                   HASH entry_id -> "{partition}:{offset}:" +
                                                 the entry's envelope JSON (first copy wins)
    P:billing:visit:{clinic}:{visit}             ZSET entry ids of the visit, score = ledger
                                                 offset (the ledger's order)
    P:billing:patient:{clinic}:{patient_ref}     SET visits of a pseudonymous patient ref
    P:billing:timeline:{clinic}                  ZSET entry ids, score = occurred_at (epoch ms):
                                                 a day's entries for reconciliation
    P:billing:drawer:{clinic}:{yyyy-mm-dd}       ZSET drawer-count entry ids for a business day
    P:billing:clinics                            SET clinics with ledger entries
    P:billing:checkouts:{clinic}                 HASH checkout event id -> visit (from charges)
    P:billing:open:{clinic}                      SET visits whose balance is not zero
    P:billing:floor-visit:{clinic}:{visit}       HASH what the floor said of the visit (40
                                                 days): arrived, arrived_by (the arrival's
                                                 event id), changed (1: a fact about the
                                                 visit came after it: roomed, provider in,
                                                 ended), undone (1: that arrival was undone
                                                 while nothing had changed), patient_ref,
                                                 provider_id (arrival, then provider.in),
                                                 ended (checked_out
                                                 or the cancellation's reason), ended_by (its
                                                 event id), published (the patient.checked_out
                                                 id the desk published)
    P:billing:ended-by:{clinic}:{event_id}       the visit a floor event ended (40 days): an
                                                 undo of that event opens the visit again
    P:billing:arrival-event:{clinic}:{event_id}  the visit a patient.arrived event checked in (40
                                                 days): an undo of that event undoes the visit
    P:billing:arrival:{clinic}:{visit}           (read only) the patient_ref of an arrival read
                                                 before floor-visit existed: the visit is known
    P:billing:lock:{clinic}:{visit}              one money command at a time per visit (10 s)

Exactly once:

* The ledger projection (``LedgerProjectionStore`` under the shared ``RedisProjection``)
  writes a batch's entries, the partitions' offsets and its dead letters in one
  ``MULTI``/``EXEC``. Every write is keyed by entry id and only adds what is absent
  (``HSETNX``, ``ZADD NX``, ``SADD``), so a second copy of an entry, on the ledger twice
  or applied twice, changes nothing: the first copy wins.

Everything here can be thrown away: with no offsets stored the projection starts the
ledger topic (retained for ever) from the beginning and rebuilds it (design decision 1).
A Redis written before the shared runner kept its ledger offsets under
``P:billing:ledger:offset:...``, which nothing reads now: it rebuilds the same way, the
entries it holds already counting as duplicates.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import date, datetime
from typing import Any

from redis.asyncio import Redis

from services.billing.domain.accounts import Posted
from services.billing.domain.visits import FloorVisit
from services.billing.projection import (
    LedgerChanges,
    LedgerRecord,
    LedgerState,
    ledger_records,
    posted_of,
)
from shared import events as ev
from shared.projection import Inbound

LOCK_MILLISECONDS = 10_000
ARRIVAL_TTL_SECONDS = 40 * 24 * 3600  # longer than the floor topic's retention (14 days)


def _stored(record: LedgerRecord) -> bytes:
    return f"{record.partition}:{record.offset}:".encode() + record.raw


def _unstored(value: bytes) -> Posted:
    _partition, offset, raw = value.split(b":", 2)
    posted = posted_of(ev.decode(raw), int(offset))
    assert posted is not None
    return posted


class BillingKeys:
    """Builds the keys of the layout above (``prefix`` is ``P``)."""

    def __init__(self, prefix: str) -> None:
        self.root = prefix
        self.prefix = f"{prefix}:billing"

    def entries(self, clinic_id: str) -> str:
        return f"{self.prefix}:entries:{clinic_id}"

    def visit(self, clinic_id: str, visit_id: str) -> str:
        return f"{self.prefix}:visit:{clinic_id}:{visit_id}"

    def patient(self, clinic_id: str, patient_ref: str) -> str:
        return f"{self.prefix}:patient:{clinic_id}:{patient_ref}"

    def timeline(self, clinic_id: str) -> str:
        return f"{self.prefix}:timeline:{clinic_id}"

    def drawer(self, clinic_id: str, business_date: date) -> str:
        return f"{self.prefix}:drawer:{clinic_id}:{business_date.isoformat()}"

    @property
    def clinics(self) -> str:
        return f"{self.prefix}:clinics"

    def checkouts(self, clinic_id: str) -> str:
        return f"{self.prefix}:checkouts:{clinic_id}"

    def open(self, clinic_id: str) -> str:
        return f"{self.prefix}:open:{clinic_id}"

    def arrival(self, clinic_id: str, visit_id: str) -> str:
        return f"{self.prefix}:arrival:{clinic_id}:{visit_id}"

    def floor_visit(self, clinic_id: str, visit_id: str) -> str:
        return f"{self.prefix}:floor-visit:{clinic_id}:{visit_id}"

    def arrival_event(self, clinic_id: str, event_id: str) -> str:
        return f"{self.prefix}:arrival-event:{clinic_id}:{event_id}"

    def ended_by(self, clinic_id: str, event_id: str) -> str:
        return f"{self.prefix}:ended-by:{clinic_id}:{event_id}"

    def lock(self, clinic_id: str, visit_id: str) -> str:
        return f"{self.prefix}:lock:{clinic_id}:{visit_id}"

    def everything(self) -> list[str]:
        """Patterns of every billing key (both consumers' offsets included)."""
        return [f"{self.prefix}:*", f"{self.root}:applied:billing.*"]


class LedgerProjectionStore:
    """The ledger projection's side of the shared ``RedisProjection``: the keys a batch
    reads (watched), reading them, and writing ``plan_ledger``'s changes."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.keys = BillingKeys(prefix)

    def watched(self, records: Sequence[Inbound]) -> list[str]:
        entries = ledger_records(list(records))
        return sorted({self.keys.entries(e.clinic_id) for e in entries}
                      | {self.keys.visit(e.clinic_id, e.posted.visit_id) for e in entries
                         if e.posted.visit_id})

    async def read(self, _pipe: Any, records: Sequence[Inbound]) -> LedgerState:
        """The stored copies of the batch's entry ids and the stored entries of the visits
        they touch. Read on a pipeline of their own (two round trips, whatever the batch):
        the keys are watched already, so a write after this read still makes the
        transaction plan again."""
        entries = ledger_records(list(records))
        ids = sorted({e.ref for e in entries})
        visits = sorted({(e.clinic_id, e.posted.visit_id) for e in entries
                         if e.posted.visit_id})
        state = LedgerState()
        if not ids:
            return state
        pipe = self.redis.pipeline(transaction=False)
        for clinic_id, entry_id in ids:
            pipe.hget(self.keys.entries(clinic_id), entry_id)
        for clinic_id, visit_id in visits:
            pipe.zrange(self.keys.visit(clinic_id, visit_id), 0, -1)
        found = await pipe.execute()
        for ref, value in zip(ids, found[:len(ids)], strict=True):
            if value is not None:
                state.existing[ref] = _unstored(value)
        visit_ids = dict(zip(visits, found[len(ids):], strict=True))
        wanted = sorted({(clinic_id, member.decode())
                         for (clinic_id, _visit), members in visit_ids.items()
                         for member in members})
        if wanted:
            pipe = self.redis.pipeline(transaction=False)
            for clinic_id, entry_id in wanted:
                pipe.hget(self.keys.entries(clinic_id), entry_id)
            stored = {ref: _unstored(value) for ref, value in
                      zip(wanted, await pipe.execute(), strict=True) if value is not None}
            for (clinic_id, visit_id), members in visit_ids.items():
                state.histories[(clinic_id, visit_id)] = [
                    stored[(clinic_id, m.decode())] for m in members
                    if (clinic_id, m.decode()) in stored]
        return state

    def write(self, pipe: Any, changes: LedgerChanges) -> None:
        """Add the entries (first copy of an id wins) and mark the touched visits open (a
        balance) or settled, on the pipeline inside its MULTI."""
        keys = self.keys
        for (open_clinic, open_visit), is_open in changes.open_visits.items():
            if is_open:
                pipe.sadd(keys.open(open_clinic), open_visit)
            else:
                pipe.srem(keys.open(open_clinic), open_visit)
        clinics: set[str] = set()
        for record in changes.added:
            posted, clinic_id = record.posted, record.clinic_id
            clinics.add(clinic_id)
            entry_id = posted.entry_id
            pipe.hsetnx(keys.entries(clinic_id), entry_id, _stored(record))
            visit_id = posted.visit_id
            if visit_id:
                pipe.zadd(keys.visit(clinic_id, visit_id), {entry_id: record.offset}, nx=True)
                patient_ref = getattr(posted.entry, "patient_ref", None)
                if patient_ref:
                    pipe.sadd(keys.patient(clinic_id, patient_ref), visit_id)
            pipe.zadd(keys.timeline(clinic_id),
                      {entry_id: int(posted.occurred_at.timestamp() * 1000)}, nx=True)
            checkout_event_id = getattr(posted.entry, "checkout_event_id", None)
            if checkout_event_id and visit_id:
                pipe.hsetnx(keys.checkouts(clinic_id), checkout_event_id, visit_id)
            business_date = getattr(posted.entry, "business_date", None)
            if business_date is not None:
                pipe.zadd(keys.drawer(clinic_id, business_date), {entry_id: record.offset},
                          nx=True)
        if clinics:
            pipe.sadd(keys.clinics, *sorted(clinics))


class BillingStore:
    """Reads of the ledger projection (accounts, days, balances), arrivals' patient refs
    and the per-visit locks of money commands."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.keys = BillingKeys(prefix)
        self.prefix = self.keys.prefix

    # --------------------------------------------------------- ledger reads

    async def entry(self, clinic_id: str, entry_id: str) -> Posted | None:
        value = await self.redis.hget(self.keys.entries(clinic_id), entry_id)
        return None if value is None else _unstored(value)

    async def entries(self, clinic_id: str, entry_ids: Sequence[str]) -> list[Posted]:
        if not entry_ids:
            return []
        values = await self.redis.hmget(self.keys.entries(clinic_id), list(entry_ids))
        return [_unstored(v) for v in values if v is not None]

    async def visit_entries(self, clinic_id: str, visit_id: str) -> list[Posted]:
        """Every entry of a visit, in ledger order."""
        ids = await self.redis.zrange(self.keys.visit(clinic_id, visit_id), 0, -1)
        return await self.entries(clinic_id, [i.decode() for i in ids])

    async def visits_entries(self, clinic_id: str,
                             visit_ids: Iterable[str]) -> dict[str, list[Posted]]:
        """Entries of several visits at once (one round trip for the ids, one for entries)."""
        visits = list(dict.fromkeys(visit_ids))
        if not visits:
            return {}
        pipe = self.redis.pipeline(transaction=False)
        for visit_id in visits:
            pipe.zrange(self.keys.visit(clinic_id, visit_id), 0, -1)
        id_lists = await pipe.execute()
        all_ids = [i.decode() for ids in id_lists for i in ids]
        by_id = {p.entry_id: p for p in await self.entries(clinic_id, all_ids)}
        return {visit: [by_id[i.decode()] for i in ids if i.decode() in by_id]
                for visit, ids in zip(visits, id_lists, strict=True)}

    async def patient_visits(self, clinic_id: str, patient_ref: str) -> list[str]:
        members = await self.redis.smembers(self.keys.patient(clinic_id, patient_ref))
        return sorted(m.decode() for m in members)

    async def entries_between(self, clinic_id: str, starts_at: datetime,
                              ends_at: datetime) -> list[Posted]:
        """Entries made in [starts_at, ends_at)."""
        ids = await self.redis.zrangebyscore(
            self.keys.timeline(clinic_id), int(starts_at.timestamp() * 1000),
            f"({int(ends_at.timestamp() * 1000)}")
        return await self.entries(clinic_id, [i.decode() for i in ids])

    async def drawer_counts(self, clinic_id: str, business_date: date) -> list[Posted]:
        ids = await self.redis.zrange(self.keys.drawer(clinic_id, business_date), 0, -1)
        return await self.entries(clinic_id, [i.decode() for i in ids])

    async def clinics(self) -> list[str]:
        return sorted(m.decode() for m in await self.redis.smembers(self.keys.clinics))

    async def open_visits(self, clinic_id: str) -> list[str]:
        """Visits whose balance is not zero (owing, or a credit to refund)."""
        return sorted(m.decode() for m in await self.redis.smembers(self.keys.open(clinic_id)))

    async def visit_of_checkout(self, clinic_id: str, checkout_event_id: str) -> str | None:
        """The visit a charged checkout event priced (None: no charge came from it)."""
        value = await self.redis.hget(self.keys.checkouts(clinic_id), checkout_event_id)
        return None if value is None else value.decode()

    # ---------------------------------------------------------------- floor

    async def _floor_fields(self, clinic_id: str, visit_id: str, fields: dict[str, str],
                            ended_by: str | None = None) -> None:
        key = self.keys.floor_visit(clinic_id, visit_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
            pipe.expire(key, ARRIVAL_TTL_SECONDS)
            if ended_by is not None:
                pipe.set(self.keys.ended_by(clinic_id, ended_by), visit_id,
                         ex=ARRIVAL_TTL_SECONDS)
            await pipe.execute()

    async def remember_arrival(self, clinic_id: str, visit_id: str, patient_ref: str | None,
                               provider_id: str | None = None, event_id: str = "") -> None:
        """The visit checked in at the clinic by the arrival ``event_id`` (a repeat
        overwrites the same fields; an arrival after an undone one counts again)."""
        fields = {"arrived": "1"}
        if patient_ref:
            fields["patient_ref"] = patient_ref
        if provider_id:
            fields["provider_id"] = provider_id
        if event_id:
            fields["arrived_by"] = event_id
        key = self.keys.floor_visit(clinic_id, visit_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
            pipe.hdel(key, "undone")
            pipe.expire(key, ARRIVAL_TTL_SECONDS)
            if event_id:
                pipe.set(self.keys.arrival_event(clinic_id, event_id), visit_id,
                         ex=ARRIVAL_TTL_SECONDS)
            await pipe.execute()

    async def undo_arrival(self, clinic_id: str, undone_event_id: str) -> str | None:
        """An undo of the arrival that checked a visit in: the visit no longer exists on
        the floor. Returns the visit, or None when the event was no visit's arrival, the
        visit arrived again since (by another event), or something happened to it after
        the arrival (roomed, provider in, ended: the floor refuses that undo)."""
        return await self._undo_fact(
            self.keys.arrival_event(clinic_id, undone_event_id), clinic_id, "arrived_by",
            undone_event_id, "if redis.call('hexists', key, 'changed') == 1 then return false "
            "end redis.call('hset', key, 'undone', '1')")

    async def visit_changed(self, clinic_id: str, visit_id: str) -> None:
        """A fact about the visit after its arrival: its arrival can no longer be undone
        (the floor refuses it; billing then leaves the visit as it is)."""
        await self._floor_fields(clinic_id, visit_id, {"changed": "1"})

    async def remember_provider(self, clinic_id: str, visit_id: str, provider_id: str) -> None:
        """The provider who saw the patient (provider.in): named on the receipt."""
        await self._floor_fields(clinic_id, visit_id, {"provider_id": provider_id,
                                                       "changed": "1"})

    async def visit_ended(self, clinic_id: str, visit_id: str, how: str,
                          event_id: str) -> None:
        """The floor ended the visit (checked out, cancelled, left) by ``event_id``."""
        await self._floor_fields(clinic_id, visit_id, {"ended": how, "ended_by": event_id,
                                                       "changed": "1"}, ended_by=event_id)

    async def reopen_visit(self, clinic_id: str, undone_event_id: str) -> str | None:
        """An undo of the event that ended a visit: the visit is open again (and its next
        checkout is published). Returns the visit, or None when the event ended none."""
        return await self._undo_fact(self.keys.ended_by(clinic_id, undone_event_id),
                                     clinic_id, "ended_by", undone_event_id,
                                     "redis.call('hdel', key, 'ended', 'ended_by', 'published')")

    async def _undo_fact(self, index: str, clinic_id: str, field: str, undone_event_id: str,
                         action: str) -> str | None:
        """Run the Lua ``action`` on the floor-visit hash (``key``) of the visit ``index``
        names, if that visit's ``field`` is still ``undone_event_id``; returns the visit."""
        visit = await self.redis.eval(
            "local visit = redis.call('get', KEYS[1]) "
            "if not visit then return false end "
            "local key = ARGV[1] .. visit "
            f"if redis.call('hget', key, '{field}') == ARGV[2] then "
            f"  {action} return visit end "
            "return false", 1, index, self.keys.floor_visit(clinic_id, ""), undone_event_id)
        return visit.decode() if isinstance(visit, bytes) else None

    async def checkout_published(self, clinic_id: str, visit_id: str, event_id: str) -> None:
        """The desk published ``patient.checked_out`` ``event_id`` for the visit."""
        await self._floor_fields(clinic_id, visit_id, {"published": event_id})

    async def floor_visit(self, clinic_id: str, visit_id: str) -> FloorVisit:
        return (await self.visit_known(clinic_id, visit_id))[0]

    async def visit_known(self, clinic_id: str, visit_id: str) -> tuple[FloorVisit, bool]:
        """What the floor said of the visit, and whether it has entries on the ledger."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(self.keys.floor_visit(clinic_id, visit_id))
        pipe.get(self.keys.arrival(clinic_id, visit_id))
        pipe.exists(self.keys.visit(clinic_id, visit_id))
        raw, legacy_ref, on_ledger = await pipe.execute()
        fields = {k.decode(): v.decode() for k, v in raw.items()}
        legacy = legacy_ref.decode() if legacy_ref is not None else None
        undone = fields.get("undone") == "1"
        floor = FloorVisit(
            arrived=(fields.get("arrived") == "1" or legacy is not None) and not undone,
            patient_ref=fields.get("patient_ref") or legacy or None,
            provider_id=fields.get("provider_id"), ended=fields.get("ended"),
            ended_by=fields.get("ended_by"), checkout_published=fields.get("published"),
            arrival_undone=undone)
        return floor, bool(on_ledger)

    # ---------------------------------------------------------------- locks

    async def lock_visit(self, clinic_id: str, visit_id: str, token: str) -> bool:
        return bool(await self.redis.set(self.keys.lock(clinic_id, visit_id), token, nx=True,
                                         px=LOCK_MILLISECONDS))

    async def keep_lock(self, clinic_id: str, visit_id: str, token: str) -> bool:
        """Whether ``token`` still holds the visit's lock (it is then held another
        ``LOCK_MILLISECONDS``); False: it expired, and may be another's now."""
        key = self.keys.lock(clinic_id, visit_id)
        return bool(await self.redis.eval(
            "if redis.call('get', KEYS[1]) == ARGV[1] then "
            "return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0",
            1, key, token, LOCK_MILLISECONDS))

    async def unlock_visit(self, clinic_id: str, visit_id: str, token: str) -> None:
        key = self.keys.lock(clinic_id, visit_id)
        # only the holder releases (a lock that expired and was taken again is not ours)
        await self.redis.eval(
            "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) "
            "end return 0", 1, key, token)

    # -------------------------------------------------------------- cleanup

    async def forget_everything(self) -> int:
        """Delete every billing key, offsets included (a lost Redis, for tests): the
        projections rebuild from the beginning of their topics. Returns how many."""
        deleted = 0
        for pattern in self.keys.everything():
            async for batch in _scan_batches(self.redis, pattern):
                deleted += await self.redis.delete(*batch)
        return deleted


async def _scan_batches(redis: Redis, pattern: str,
                        size: int = 500) -> AsyncIterator[list[bytes]]:
    batch: list[bytes] = []
    async for key in redis.scan_iter(match=pattern, count=size):
        batch.append(key)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
