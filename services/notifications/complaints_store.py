"""Complaints in Redis, and the escalation tick: the one place that knows their keys.

Keys (``P`` is ``CLINICFLOW_REDIS_PREFIX``)::

    P:notifications:complaint:{clinic}:{id}  HASH data (the complaint as JSON: ids,
                                             category, status, times, owner; no text),
                                             text (what the patient said: manager only,
                                             never on an event, a log line or a screen);
                                             EXPIRE the feedback retention
    P:notifications:complaints:{clinic}      ZSET id -> logged at (epoch s): the clinic's
    P:notifications:complaints:due           ZSET clinic|id -> acknowledge by (epoch s):
                                             the open complaints the tick watches

Every change is one transaction (the complaint's hash watched) that also queues its
``complaint.*`` event on the service's outbox, so a complaint and its event are stored
together or not at all. Each read of a complaint's text (``read``) queues its audit
event (``complaint_text.read``: who, which complaint, when; never the words) in the same
step, as a contact's read does.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import orjson
from redis.asyncio import Redis
from redis.exceptions import WatchError

from services.notifications import complaints as cp
from services.notifications import metrics as m
from services.notifications.complaints import Complaint
from shared import events as ev
from shared.errors import NotFound
from shared.events_notifications import (
    ComplaintAcknowledged,
    ComplaintEscalated,
    ComplaintLogged,
    ComplaintResolved,
    ComplaintTextRead,
)
from shared.logging import get_logger
from shared.outbox import Outbox, outbox_entry

log = get_logger("clinicflow.notifications.complaints")


def complaint_event(complaint: Complaint, kind: str, at: datetime) -> ev.Event:
    """The complaint's event of ``kind`` (logged, acknowledged, resolved, escalated): ids,
    category, source or owner, times; never the text."""
    common: dict[str, Any] = {"complaint_id": complaint.complaint_id,
                              "visit_id": complaint.visit_id,
                              "category": complaint.category}
    payload: ev.Payload
    if kind == "logged":
        payload = ComplaintLogged(**common, source=complaint.source,  # type: ignore[arg-type]
                                  due_at=complaint.due_at.isoformat())
    elif kind == "acknowledged":
        payload = ComplaintAcknowledged(**common, owner=complaint.owner or "")
    elif kind == "resolved":
        payload = ComplaintResolved(**common, owner=complaint.owner or "")
    else:
        payload = ComplaintEscalated(**common, due_at=complaint.due_at.isoformat())
    return ev.make_event(payload, clinic_id=complaint.clinic_id, source="notifications",
                         occurred_at=at, correlation_id=complaint.visit_id,
                         event_id=f"{complaint.complaint_id}-{kind}")


def text_read(clinic_id: str, complaint_id: str, *, reader: str, role: str,
              at: datetime) -> bytes:
    """The audit event (for the outbox) of one read of a complaint's text."""
    event = ev.make_event(
        ComplaintTextRead(complaint_id=complaint_id, reader=reader, reader_role=role),
        clinic_id=clinic_id, source="notifications", occurred_at=at,
        correlation_id=complaint_id, event_id=uuid.uuid4().hex)
    return outbox_entry("audit", clinic_id, ev.encode(event))


# the complaint, with the audit event of reading it queued atomically when there is one
_READ = """
local found = redis.call('HGETALL', KEYS[1])
if redis.call('HEXISTS', KEYS[1], 'data') == 1 then redis.call('RPUSH', KEYS[2], ARGV[1]) end
return found
"""


class ComplaintStore:
    """The key layout above."""

    def __init__(self, redis: Redis, prefix: str, outbox: Outbox, *,
                 retention_days: int, zone: Callable[[str], ZoneInfo],
                 configured: Callable[[str], bool] = lambda _clinic: True) -> None:
        self.redis = redis
        self.configured = configured
        self.base = f"{prefix}:notifications"
        self.outbox = outbox
        self.retention_seconds = retention_days * 86_400
        self.zone = zone
        self._read = redis.register_script(_READ)

    def key(self, clinic_id: str, complaint_id: str) -> str:
        return f"{self.base}:complaint:{clinic_id}:{complaint_id}"

    def index_key(self, clinic_id: str) -> str:
        return f"{self.base}:complaints:{clinic_id}"

    @property
    def due_key(self) -> str:
        return f"{self.base}:complaints:due"

    def queue(self, pipe: Any, complaint: Complaint, kind: str, at: datetime,
              text: str | None = None, *, unless_stored: bool = False) -> None:
        """Queue on ``pipe`` (inside MULTI) the complaint stored and its event.
        ``unless_stored``: a complaint already stored under its id is kept as it is (a
        low rating's complaint raised again by a projection read again: its event is the
        same event, its id the same)."""
        key = self.key(complaint.clinic_id, complaint.complaint_id)
        fields = {"data": orjson.dumps(complaint.to_dict())}
        if text is not None:
            fields["text"] = text.encode()
        if unless_stored:
            for name, value in fields.items():
                pipe.hsetnx(key, name, value)
        else:
            pipe.hset(key, mapping=fields)
        pipe.expire(key, self.retention_seconds)
        member = f"{complaint.clinic_id}|{complaint.complaint_id}"
        if kind == "logged":
            pipe.zadd(self.index_key(complaint.clinic_id),
                      {complaint.complaint_id: complaint.logged_at.timestamp()})
            pipe.expire(self.index_key(complaint.clinic_id), self.retention_seconds)
        if complaint.status == "open" and complaint.escalated_at is None:
            pipe.zadd(self.due_key, {member: complaint.due_at.timestamp()})
        else:
            pipe.zrem(self.due_key, member)
        pipe.rpush(self.outbox.key, outbox_entry(
            "notifications", complaint.clinic_id, ev.encode(complaint_event(complaint, kind,
                                                                            at))))

    async def get(self, clinic_id: str, complaint_id: str) -> tuple[Complaint, str] | None:
        raw = await self.redis.hgetall(self.key(clinic_id, complaint_id))
        return _decode(raw)

    async def read(self, clinic_id: str, complaint_id: str,
                   audit: bytes) -> tuple[Complaint, str] | None:
        """The complaint and its text, with ``audit`` (``text_read``) queued on the outbox
        in the same step when there is one (nothing queued for an unknown complaint)."""
        raw = await self._read(keys=[self.key(clinic_id, complaint_id), self.outbox.key],
                               args=[audit])
        pairs = iter(raw)
        return _decode(dict(zip(pairs, pairs, strict=True)))

    async def create(self, complaint: Complaint, text: str) -> bool:
        """Store a new complaint and queue ``complaint.logged``; False (nothing written)
        when one with its id exists (a low rating's complaint, raised once per visit)."""
        key = self.key(complaint.clinic_id, complaint.complaint_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    if await pipe.exists(key):
                        return False
                    pipe.multi()
                    self.queue(pipe, complaint, "logged", complaint.logged_at, text)
                    await pipe.execute()
                    m.COMPLAINTS_LOGGED.labels(complaint.category, complaint.source).inc()
                    return True
                except WatchError:
                    continue

    async def change(self, clinic_id: str, complaint_id: str, kind: str,
                     step: Callable[[Complaint], Complaint], at: datetime) -> Complaint:
        """Apply ``step`` (a transition of ``complaints``: it raises ``Conflict`` when the
        status does not allow it) and queue its event; ``NotFound`` naming it when there
        is no such complaint."""
        key = self.key(clinic_id, complaint_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    found = _decode(await pipe.hgetall(key))
                    if found is None:
                        raise NotFound(f"complaint {complaint_id} does not exist at clinic "
                                       f"{clinic_id}", code="complaint_not_found")
                    changed = step(found[0])
                    pipe.multi()
                    self.queue(pipe, changed, kind, at)
                    await pipe.execute()
                    return changed
                except WatchError:
                    continue

    async def listed(self, clinic_id: str) -> list[tuple[Complaint, str]]:
        """The clinic's complaints kept (oldest first), with their text."""
        ids = await self.redis.zrange(self.index_key(clinic_id), 0, -1)
        async with self.redis.pipeline(transaction=False) as pipe:
            for complaint_id in ids:
                pipe.hgetall(self.key(clinic_id, complaint_id.decode()))
            raw = await pipe.execute()
        return [found for found in map(_decode, raw) if found is not None]

    async def tick(self, now: datetime) -> int:
        """Escalate every open complaint past its acknowledge-by time, once: its
        ``complaint.escalated`` event and ``clinicflow_complaints_escalated_total``.
        Returns how many were escalated."""
        due = await self.redis.zrangebyscore(self.due_key, "-inf", now.timestamp())
        escalated = 0
        for member in due:
            clinic_id, _, complaint_id = member.decode().partition("|")
            zone = self.zone(clinic_id)

            def step(complaint: Complaint, zone: ZoneInfo = zone) -> Complaint:
                return _escalated(complaint, now, zone)

            try:
                await self.change(clinic_id, complaint_id, "escalated", step, now)
            except NotFound:  # expired: nothing left to escalate
                await self.redis.zrem(self.due_key, member)
                continue
            except _NotDue:  # acknowledged or escalated meanwhile: no longer watched
                await self.redis.zrem(self.due_key, member)
                continue
            escalated += 1
            m.COMPLAINTS_ESCALATED.labels(m.clinic_label(clinic_id, self.configured)).inc()
            log.info("complaint escalated", clinic_id=clinic_id, complaint_id=complaint_id)
        return escalated


class _NotDue(Exception):
    """Acknowledged (or escalated) between the tick's read and its transaction."""


def _escalated(complaint: Complaint, now: datetime, zone: ZoneInfo) -> Complaint:
    if not cp.due_escalation(complaint, now):
        raise _NotDue
    return cp.escalate(complaint, now, zone)


def _decode(raw: dict[Any, Any]) -> tuple[Complaint, str] | None:
    if not raw:
        return None
    fields = {(k.decode() if isinstance(k, bytes) else k): v for k, v in raw.items()}
    if "data" not in fields:
        return None
    text = fields.get("text", b"")
    return (Complaint.from_dict(orjson.loads(fields["data"])),
            text.decode() if isinstance(text, bytes) else text)
