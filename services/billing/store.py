"""Billing's Redis projection. The one place that knows its key layout.

Keys (``P`` is ``CLINICFLOW_REDIS_PREFIX``, default ``cf``)::

    P:billing:ledger:offset:{topic}:{partition}  last ledger offset the projection applied
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
    P:billing:arrival:{clinic}:{visit}           the visit's patient_ref, from patient.arrived
                                                 on the floor (40 days)
    P:billing:lock:{clinic}:{visit}              one money command at a time per visit (10 s)
    P:idem:billing:{clinic}:{key}                Idempotency-Key answers (shared/idempotency.py)

Exactly once:

* The ledger projection writes a batch's entries and the partitions' offsets in
  one ``MULTI``/``EXEC``. Every write is keyed by entry id and only adds what is
  absent (``HSETNX``, ``ZADD NX``, ``SADD``), so a second copy of an entry, on the
  ledger twice or applied twice, changes nothing: the first copy wins.

Everything here can be thrown away: with no offsets stored the projection starts the
ledger topic from the beginning and rebuilds it (design decision 1).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime

from redis.asyncio import Redis

from services.billing.domain import Posted
from shared import events as ev
from shared.events_billing import LedgerEntry

LOCK_MILLISECONDS = 10_000
ARRIVAL_TTL_SECONDS = 40 * 24 * 3600  # longer than the floor topic's retention (14 days)


@dataclass(frozen=True, slots=True)
class LedgerRecord:
    """A ledger entry as read from Kafka, with where it sits."""

    clinic_id: str
    partition: int
    offset: int
    raw: bytes
    posted: Posted


def posted_of(event: ev.Event, position: int) -> Posted | None:
    """The ``Posted`` form of a decoded ledger event (None: not a ledger entry)."""
    if not isinstance(event.payload, LedgerEntry):
        return None
    return Posted(event.payload, event.event_type, event.occurred_at, position)


def _stored(partition: int, offset: int, raw: bytes) -> bytes:
    return f"{partition}:{offset}:".encode() + raw


def _unstored(value: bytes) -> Posted:
    _partition, offset, raw = value.split(b":", 2)
    posted = posted_of(ev.decode(raw), int(offset))
    assert posted is not None
    return posted


class BillingStore:
    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.prefix = f"{prefix}:billing"

    # ------------------------------------------------------------------ keys

    def _ledger_offset(self, topic: str, partition: int) -> str:
        return f"{self.prefix}:ledger:offset:{topic}:{partition}"

    def _entries(self, clinic_id: str) -> str:
        return f"{self.prefix}:entries:{clinic_id}"

    def _visit(self, clinic_id: str, visit_id: str) -> str:
        return f"{self.prefix}:visit:{clinic_id}:{visit_id}"

    def _patient(self, clinic_id: str, patient_ref: str) -> str:
        return f"{self.prefix}:patient:{clinic_id}:{patient_ref}"

    def _timeline(self, clinic_id: str) -> str:
        return f"{self.prefix}:timeline:{clinic_id}"

    def _drawer(self, clinic_id: str, business_date: date) -> str:
        return f"{self.prefix}:drawer:{clinic_id}:{business_date.isoformat()}"

    @property
    def _clinics(self) -> str:
        return f"{self.prefix}:clinics"

    def _checkouts(self, clinic_id: str) -> str:
        return f"{self.prefix}:checkouts:{clinic_id}"

    def _open(self, clinic_id: str) -> str:
        return f"{self.prefix}:open:{clinic_id}"

    def _arrival(self, clinic_id: str, visit_id: str) -> str:
        return f"{self.prefix}:arrival:{clinic_id}:{visit_id}"

    def _lock(self, clinic_id: str, visit_id: str) -> str:
        return f"{self.prefix}:lock:{clinic_id}:{visit_id}"

    # --------------------------------------------------------------- offsets

    async def ledger_offsets(self, tps: Sequence[tuple[str, int]]) -> dict[tuple[str, int], int]:
        return await self._offsets([self._ledger_offset(t, p) for t, p in tps], tps)

    async def _offsets(self, keys: list[str],
                       tps: Sequence[tuple[str, int]]) -> dict[tuple[str, int], int]:
        if not keys:
            return {}
        values = await self.redis.mget(keys)
        return {tp: int(v) for tp, v in zip(tps, values, strict=True) if v is not None}

    # -------------------------------------------------------- ledger writes

    async def existing(self, records: Sequence[LedgerRecord]) -> dict[str, Posted]:
        """Entries of ``records`` already in the projection, by entry id."""
        by_clinic: dict[str, list[str]] = {}
        for record in records:
            by_clinic.setdefault(record.clinic_id, []).append(record.posted.entry_id)
        found: dict[str, Posted] = {}
        for clinic_id, ids in by_clinic.items():
            unique = list(dict.fromkeys(ids))
            values = await self.redis.hmget(self._entries(clinic_id), unique)
            for entry_id, value in zip(unique, values, strict=True):
                if value is not None:
                    found[entry_id] = _unstored(value)
        return found

    async def apply_ledger(self, records: Sequence[LedgerRecord],
                           offsets: Mapping[tuple[str, int], int],
                           open_visits: Mapping[tuple[str, str], bool] | None = None) -> None:
        """Add the entries (first copy of an id wins), mark the touched visits open (a
        balance) or settled, and store the offsets, atomically."""
        pipe = self.redis.pipeline(transaction=True)
        for (open_clinic, open_visit), is_open in (open_visits or {}).items():
            if is_open:
                pipe.sadd(self._open(open_clinic), open_visit)
            else:
                pipe.srem(self._open(open_clinic), open_visit)
        clinics: set[str] = set()
        for record in records:
            posted, clinic_id = record.posted, record.clinic_id
            clinics.add(clinic_id)
            entry_id = posted.entry_id
            pipe.hsetnx(self._entries(clinic_id), entry_id,
                        _stored(record.partition, record.offset, record.raw))
            visit_id = posted.visit_id
            if visit_id:
                pipe.zadd(self._visit(clinic_id, visit_id), {entry_id: record.offset}, nx=True)
                patient_ref = getattr(posted.entry, "patient_ref", None)
                if patient_ref:
                    pipe.sadd(self._patient(clinic_id, patient_ref), visit_id)
            pipe.zadd(self._timeline(clinic_id),
                      {entry_id: int(posted.occurred_at.timestamp() * 1000)}, nx=True)
            checkout_event_id = getattr(posted.entry, "checkout_event_id", None)
            if checkout_event_id and visit_id:
                pipe.hsetnx(self._checkouts(clinic_id), checkout_event_id, visit_id)
            business_date = getattr(posted.entry, "business_date", None)
            if business_date is not None:
                pipe.zadd(self._drawer(clinic_id, business_date), {entry_id: record.offset},
                          nx=True)
        if clinics:
            pipe.sadd(self._clinics, *sorted(clinics))
        for (topic, partition), offset in offsets.items():
            pipe.set(self._ledger_offset(topic, partition), offset)
        await pipe.execute()

    # --------------------------------------------------------- ledger reads

    async def entry(self, clinic_id: str, entry_id: str) -> Posted | None:
        value = await self.redis.hget(self._entries(clinic_id), entry_id)
        return None if value is None else _unstored(value)

    async def entries(self, clinic_id: str, entry_ids: Sequence[str]) -> list[Posted]:
        if not entry_ids:
            return []
        values = await self.redis.hmget(self._entries(clinic_id), list(entry_ids))
        return [_unstored(v) for v in values if v is not None]

    async def visit_entries(self, clinic_id: str, visit_id: str) -> list[Posted]:
        """Every entry of a visit, in ledger order."""
        ids = await self.redis.zrange(self._visit(clinic_id, visit_id), 0, -1)
        return await self.entries(clinic_id, [i.decode() for i in ids])

    async def visits_entries(self, clinic_id: str,
                             visit_ids: Iterable[str]) -> dict[str, list[Posted]]:
        """Entries of several visits at once (one round trip for the ids, one for entries)."""
        visits = list(dict.fromkeys(visit_ids))
        if not visits:
            return {}
        pipe = self.redis.pipeline(transaction=False)
        for visit_id in visits:
            pipe.zrange(self._visit(clinic_id, visit_id), 0, -1)
        id_lists = await pipe.execute()
        all_ids = [i.decode() for ids in id_lists for i in ids]
        by_id = {p.entry_id: p for p in await self.entries(clinic_id, all_ids)}
        return {visit: [by_id[i.decode()] for i in ids if i.decode() in by_id]
                for visit, ids in zip(visits, id_lists, strict=True)}

    async def patient_visits(self, clinic_id: str, patient_ref: str) -> list[str]:
        members = await self.redis.smembers(self._patient(clinic_id, patient_ref))
        return sorted(m.decode() for m in members)

    async def entries_between(self, clinic_id: str, starts_at: datetime,
                              ends_at: datetime) -> list[Posted]:
        """Entries made in [starts_at, ends_at)."""
        ids = await self.redis.zrangebyscore(
            self._timeline(clinic_id), int(starts_at.timestamp() * 1000),
            f"({int(ends_at.timestamp() * 1000)}")
        return await self.entries(clinic_id, [i.decode() for i in ids])

    async def drawer_counts(self, clinic_id: str, business_date: date) -> list[Posted]:
        ids = await self.redis.zrange(self._drawer(clinic_id, business_date), 0, -1)
        return await self.entries(clinic_id, [i.decode() for i in ids])

    async def clinics(self) -> list[str]:
        return sorted(m.decode() for m in await self.redis.smembers(self._clinics))

    async def open_visits(self, clinic_id: str) -> list[str]:
        """Visits whose balance is not zero (owing, or a credit to refund)."""
        return sorted(m.decode() for m in await self.redis.smembers(self._open(clinic_id)))

    async def visit_of_checkout(self, clinic_id: str, checkout_event_id: str) -> str | None:
        """The visit a charged checkout event priced (None: no charge came from it)."""
        value = await self.redis.hget(self._checkouts(clinic_id), checkout_event_id)
        return None if value is None else value.decode()

    # ---------------------------------------------------------------- floor

    async def remember_arrival(self, clinic_id: str, visit_id: str, patient_ref: str) -> None:
        await self.redis.set(self._arrival(clinic_id, visit_id), patient_ref,
                             ex=ARRIVAL_TTL_SECONDS)

    async def arrival_ref(self, clinic_id: str, visit_id: str) -> str | None:
        value = await self.redis.get(self._arrival(clinic_id, visit_id))
        return None if value is None else value.decode()

    # ---------------------------------------------------------------- locks

    async def lock_visit(self, clinic_id: str, visit_id: str, token: str) -> bool:
        return bool(await self.redis.set(self._lock(clinic_id, visit_id), token, nx=True,
                                         px=LOCK_MILLISECONDS))

    async def unlock_visit(self, clinic_id: str, visit_id: str, token: str) -> None:
        key = self._lock(clinic_id, visit_id)
        # only the holder releases (a lock that expired and was taken again is not ours)
        await self.redis.eval(
            "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) "
            "end return 0", 1, key, token)

    # -------------------------------------------------------------- cleanup

    async def forget_everything(self) -> int:
        """Delete every billing key (tests and ``clinicflow billing rebuild``). Returns count."""
        deleted = 0
        async for batch in _scan_batches(self.redis, f"{self.prefix}:*"):
            deleted += await self.redis.delete(*batch)
        return deleted


async def _scan_batches(redis: Redis, pattern: str, size: int = 500):  # type: ignore[no-untyped-def]
    batch: list[bytes] = []
    async for key in redis.scan_iter(match=pattern, count=size):
        batch.append(key)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
