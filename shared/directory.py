"""Display names of a clinic's providers and rooms that imports brought, as flow and
notifications keep them: each service's own projection of ``clinicflow.directory.v1``.

Checkin publishes ``directory.named`` (``shared/events.py``) when a FHIR Practitioner or
Location, a FHIR participant's ``display`` or an HL7 AIP / AIL segment gives a provider
or a room a new name. Flow and notifications each read the topic through the shared
runner (``shared/projection.py``: exactly once, dead letters, a flushed Redis rebuilt
from the topic's beginning) into their own keys, and keep an in-memory copy
(``DirectoryNames``) that every instance reloads when the stored names change.

Which name a screen or a message uses (``layered``): the one configured in
``CLINICFLOW_CLINICS`` first (the operator's explicit choice), then the imported one,
then the id. Events, metrics and Redis keep ids.

Key layout (``P`` is the service's Redis prefix, ``S`` the service: ``flow``,
``notifications``)::

    P:S:names:{clinic}:{kind}     HASH  id -> display name (``kind``: provider, room)
    P:S:names:clinics             SET   clinics with an imported name
    P:S:names:version             STR   a token every batch that changed a name replaces
    P:applied:S-directory:<topic>:<partition>   offsets (shared/projection.py)
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from redis.asyncio import Redis

from shared import events as ev
from shared.clinics import Clinic
from shared.logging import get_logger
from shared.outbox import Outbox, outbox_entry
from shared.projection import Inbound, Planned, ProjectionRunner, RecordReader, RedisProjection

log = get_logger("clinicflow.directory")

KINDS: tuple[ev.DirectoryKind, ...] = ("provider", "room")
# how often each instance looks whether the stored names changed (one GET)
REFRESH_SECONDS = 2.0
# the outbox role of directory.named records (checkin's relay maps it to the topic)
OUTBOX_ROLE = "directory"
MAX_DISPLAY = 80

# (clinic, kind) -> id -> display name
NameTable = dict[tuple[str, str], dict[str, str]]


@dataclass(frozen=True, slots=True)
class ImportedNames:
    """One clinic's imported display names, by id."""

    providers: Mapping[str, str] = field(default_factory=dict)
    rooms: Mapping[str, str] = field(default_factory=dict)


NO_NAMES = ImportedNames()


def layered(configured: Mapping[str, str], imported: Mapping[str, str]) -> dict[str, str]:
    """The display names a screen or a message uses: the configured name of an id when
    there is one (the operator chose it), else the imported one."""
    return {**imported, **configured}


def named_clinic(clinic: Clinic, imported: ImportedNames) -> Clinic:
    """``clinic`` with its imported names under its configured ones."""
    if not imported.providers and not imported.rooms:
        return clinic
    return replace(clinic, providers=layered(clinic.providers, imported.providers),
                   rooms=layered(clinic.rooms, imported.rooms))


def clean_display(text: object) -> str | None:
    """A display name as published: one line, spaces collapsed, at most 80 characters
    (None: nothing left)."""
    if not isinstance(text, str):
        return None
    cleaned = " ".join(text.split())[:MAX_DISPLAY].strip()
    return cleaned or None


def changed_names(stored: Mapping[str, str], learned: Mapping[str, str]) -> dict[str, str]:
    """What an import brings that is new or different from what is stored (cleaned)."""
    changed: dict[str, str] = {}
    for ident, text in learned.items():
        display = clean_display(text)
        if display is not None and stored.get(ident) != display:
            changed[ident] = display
    return changed


def named_entries(clinic_id: str, kind: ev.DirectoryKind, names: Mapping[str, str], *,
                  origin: str, source: str, now: datetime) -> list[bytes]:
    """Outbox entries (role ``directory``) of ``directory.named`` for each name, keyed by
    clinic, in id order."""
    entries = []
    for ident in sorted(names):
        payload = ev.DirectoryNamed(kind=kind, id=ident, display=names[ident],
                                    origin=origin)  # type: ignore[arg-type]
        event = ev.make_event(payload, clinic_id=clinic_id, source=source, occurred_at=now)
        entries.append(outbox_entry(OUTBOX_ROLE, clinic_id, ev.encode(event)))
    return entries


# ------------------------------------------------------------------ consuming


def directory_reader(topic: str) -> RecordReader:
    """The directory topic carries ``directory.named`` only."""
    return RecordReader({topic: frozenset({ev.DirectoryNamed})})


def plan_names(records: list[Inbound], stored: NameTable) -> Planned[NameTable]:
    """The names a batch sets (pure): each record's display name for its clinic's
    provider or room, the last of a batch winning; a name equal to the stored one
    changes nothing."""
    changes: NameTable = {}
    for record in records:
        assert record.event is not None  # the runner dead-letters what it cannot read
        payload = record.event.payload
        assert isinstance(payload, ev.DirectoryNamed)
        key = (record.event.envelope.clinic_id, payload.kind)
        pending = changes.get(key, {})
        current = pending.get(payload.id, stored.get(key, {}).get(payload.id))
        if current != payload.display:
            changes.setdefault(key, {})[payload.id] = payload.display
    return Planned(changes, applied=len(records))


class NamesStore:
    """The service's imported names in Redis (the key layout above)."""

    def __init__(self, redis: Redis, prefix: str, service: str) -> None:
        self.redis = redis
        self.base = f"{prefix}:{service}:names"
        self.clinics_key = f"{self.base}:clinics"
        self.version_key = f"{self.base}:version"

    def key(self, clinic_id: str, kind: str) -> str:
        return f"{self.base}:{clinic_id}:{kind}"

    @staticmethod
    def _touched(records: Sequence[Inbound]) -> list[tuple[str, str]]:
        found: dict[tuple[str, str], None] = {}
        for record in records:
            if record.event is not None and isinstance(record.event.payload, ev.DirectoryNamed):
                found[(record.event.envelope.clinic_id, record.event.payload.kind)] = None
        return list(found)

    def watched(self, records: Sequence[Inbound]) -> list[str]:
        return [self.key(*pair) for pair in self._touched(records)]

    async def read(self, pipe: Any, records: Sequence[Inbound]) -> NameTable:
        table: NameTable = {}
        for clinic_id, kind in self._touched(records):
            raw = await pipe.hgetall(self.key(clinic_id, kind))
            table[(clinic_id, kind)] = _decoded(raw)
        return table

    def write(self, pipe: Any, changes: NameTable) -> None:
        for (clinic_id, kind), names in changes.items():
            pipe.hset(self.key(clinic_id, kind), mapping=names)
            pipe.sadd(self.clinics_key, clinic_id)
        if changes:
            pipe.set(self.version_key, uuid.uuid4().hex)

    async def version(self) -> str | None:
        raw = await self.redis.get(self.version_key)
        return None if raw is None else _text(raw)

    async def load(self) -> tuple[str | None, dict[str, ImportedNames]]:
        """The version and every clinic's names, as stored."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.get(self.version_key)
            pipe.smembers(self.clinics_key)
            version, members = await pipe.execute()
        clinics = sorted(_text(m) for m in members)
        async with self.redis.pipeline(transaction=False) as pipe:
            for clinic_id in clinics:
                for kind in KINDS:
                    pipe.hgetall(self.key(clinic_id, kind))
            raw = await pipe.execute()
        names = {clinic_id: ImportedNames(_decoded(raw[2 * i]), _decoded(raw[2 * i + 1]))
                 for i, clinic_id in enumerate(clinics)}
        return (None if version is None else _text(version)), names


class DirectoryNames:
    """Every clinic's imported names in memory, for lookups without I/O: ``names(clinic)``.
    ``refresh(now)`` (a periodic job) reloads them when the stored version changed (a
    batch applied by this instance or another); ``applied`` takes a batch's changes at
    once on the instance that applied it."""

    def __init__(self, store: NamesStore) -> None:
        self.store = store
        self.version: str | None = None
        self._by_clinic: dict[str, ImportedNames] = {}
        self.changes = 0  # counts every change taken: callers keeping derived views

    def __call__(self, clinic_id: str) -> ImportedNames:
        return self._by_clinic.get(clinic_id, NO_NAMES)

    async def refresh(self, _now: datetime | None = None) -> bool:
        """Reload when the stored names changed; True when it did."""
        version = await self.store.version()
        if version is None or version == self.version:
            return False
        self.version, names = await self.store.load()
        if names != self._by_clinic:
            self._by_clinic = names
            self.changes += 1
        return True

    async def applied(self, changes: NameTable) -> None:
        if not changes:
            return
        by_clinic = dict(self._by_clinic)
        for (clinic_id, kind), names in changes.items():
            current = by_clinic.get(clinic_id, NO_NAMES)
            if kind == "provider":
                current = replace(current, providers={**current.providers, **names})
            else:
                current = replace(current, rooms={**current.rooms, **names})
            by_clinic[clinic_id] = current
        self._by_clinic = by_clinic
        self.changes += 1


def directory_consumer(broker: Any, redis: Redis, prefix: str, *, service: str, topic: str,
                       group_id: str, outbox: Outbox,
                       on_dead_letters: Callable[[], None] | None = None
                       ) -> tuple[ProjectionRunner, DirectoryNames]:
    """The service's consumer of the directory topic (consumer ``<service>-directory``,
    its dead letters through the service's ``outbox``) and the names it keeps."""
    store = NamesStore(redis, prefix, service)
    names = DirectoryNames(store)
    consumer = f"{service}-directory"
    projection = RedisProjection(redis, prefix, consumer=consumer, store=store,
                                 plan=plan_names, outbox=outbox, after=names.applied)
    runner = ProjectionRunner(
        broker, projection, directory_reader(topic), service=service, consumer=consumer,
        topics=[topic], group_id=group_id, on_dead_letters=on_dead_letters,
        title=f"{service}.directory",
        description="The display names of providers and rooms that imports brought.")
    return runner, names


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _decoded(raw: Mapping[Any, Any]) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in raw.items()}
