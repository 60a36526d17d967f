"""The notifications service's Redis store. The one place that knows its key layout.

Keys (``P`` is ``CLINICFLOW_REDIS_PREFIX``, default ``cf``)::

    P:applied:notifications:{topic}:{partition}
                                                last floor / estimates offset applied (the
                                                shared projection runner's, shared/projection.py;
                                                versions before it kept it at
                                                P:notifications:offset:{topic}:{partition}, adopted
                                                on assignment: ``adopt_old_offsets``)
    P:notifications:state:{clinic}              the clinic's notifier (floor, what each
                                                patient was told, active alerts): JSON
    P:notifications:timers                      ZSET clinic -> when its notifier next has
                                                something to do (epoch seconds)
    P:notifications:prefs:{clinic}              HASH visit -> preferences JSON (channel kind,
                                                opted out, wait anywhere): no contact details
    P:notifications:contact:{clinic}:{visit}    HASH channel, address, recorded_by, recorded_at:
                                                the only place contact details live;
                                                expires_at (epoch s: the clinic's midnight)
                                                and hold:{notification_id} -> epoch s for
                                                each message deferred past it still
                                                pending; EXPIREAT the latest of them
    P:notifications:contact-expiry              ZSET contact key -> when it is deleted
                                                (epoch s): the sender's tick deletes what is
                                                due on the service's clock (Redis's own
                                                EXPIREAT is the backstop)
    P:notifications:n:{notification_id}         HASH one notification and its delivery:
                                                kind, channel kind, status, attempts, times,
                                                its wording in ids (a page: its payload),
                                                the text once sent; never the address and
                                                never a name before it is sent (3 days)
    P:notifications:list:{clinic}               ZSET notification ids by creation time
    P:notifications:due                         ZSET notification id -> next attempt (epoch s)
    P:notifications:inflight                    ZSET notification id -> when a sender claimed it
    P:notifications:instance:{id}               a running instance's heartbeat (expires)
    P:notifications:alerts:{clinic}             HASH room -> the active nurse alert (JSON, ids)
    P:notifications:alerts-live:{clinic}        pub/sub channel: alert raised / withdrawn
    P:notifications:outbox                      LIST of events to publish to Kafka, and
    P:notifications:outbox-lock                 its drainer's lock (shared/outbox.py)
    P:notifications:outbox-parked               LIST entries Kafka refused for good, set aside
    P:notifications:estimate:{clinic}           HASH waiting visit -> flow's latest estimate
                                                     (roomed or gone: removed)
    P:idem:notifications:{clinic}:{key}         Idempotency-Key answers (shared/idempotency.py)

Exactly once, in three places:

1. A batch of floor and estimate records (or a tick) is applied in one ``WATCH``/
   ``MULTI``/``EXEC`` (the shared ``RedisProjection``; ``NotifierStates`` below reads
   and writes the notifiers' side of it): the clinics' states, the partitions' offsets,
   the new notification records (created only if absent), alert changes, their pub/sub
   messages, the events for the outbox and the dead letters all commit together or not
   at all. A record at or below its partition's stored offset is skipped.
2. A sender claims a notification atomically (``pending``/``retrying`` ->
   ``sending``, phase ``preparing``) before it touches a channel, marks the
   phase ``handing_over`` just before the channel can have the message, and
   settles it (``sent``, ``retrying``, ``failed``) afterwards; each step checks
   the claim token. A claim left by a dead instance is recovered: still
   ``preparing`` -> tried again (nothing was handed over); ``handing_over`` ->
   ``unconfirmed``, never sent again.
3. Events leave through the outbox, written in the same transactions as the
   changes they report; the relay publishes then trims (at least once, with
   stable event ids for consumers to de-duplicate).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import WatchError

from services.notifications.domain import ClinicNotifier, Preferences
from services.notifications.plan import NotificationChanges, NotifierState
from shared.clock import Clock
from shared.logging import get_logger
from shared.outbox import Outbox
from shared.projection import Inbound, Partition

log = get_logger("clinicflow.notifications.store")
RECORD_TTL_SECONDS = 3 * 24 * 3600
LIST_TTL_SECONDS = 2 * 24 * 3600
ESTIMATE_TTL_SECONDS = 24 * 3600
HEARTBEAT_MS = 5000

# When a contact is deleted (``domain/rules.contact_deleted_at``): the latest of its own
# expiry and the holds of the deferred messages still pending on it. ``settle_contact``
# deletes it when that has passed, else sets its EXPIREAT and sweep score to it; a contact
# stored by a version before (no expires_at) keeps its own TTL.
_CONTACT_LUA = """
local function deletion_at(contact)
  local fields = redis.call('HGETALL', contact)
  local last = nil
  for i = 1, #fields, 2 do
    if fields[i] == 'expires_at' or string.sub(fields[i], 1, 5) == 'hold:' then
      local at = tonumber(fields[i + 1])
      if last == nil or at > last then last = at end
    end
  end
  return last
end
local function settle_contact(contact, expiry, now)
  if redis.call('EXISTS', contact) == 0 then
    redis.call('ZREM', expiry, contact)
    return 0
  end
  local last = deletion_at(contact)
  if last == nil then return 0 end
  if last <= now then
    redis.call('DEL', contact)
    redis.call('ZREM', expiry, contact)
    return 1
  end
  redis.call('EXPIREAT', contact, last)
  redis.call('ZADD', expiry, last, contact)
  return 0
end
local function release_contact(contact, expiry, notification_id, now)
  if redis.call('HDEL', contact, 'hold:' .. notification_id) == 1 then
    settle_contact(contact, expiry, now)
  end
end
"""

_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
redis.call('EXPIRE', KEYS[3], ARGV[4])
return 1
"""

_HOLD = """
-- KEYS: the new record, the contact, the sweep ZSET; ARGV: id, kept until (epoch s).
-- Once per record, while it is pending (a replayed decision holds nothing again)
if redis.call('HGET', KEYS[1], 'status') ~= 'pending' then return 0 end
if redis.call('HSETNX', KEYS[1], 'contact_held_until', ARGV[2]) == 0 then return 0 end
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
if redis.call('HEXISTS', KEYS[2], 'expires_at') == 0 then
  redis.call('HSET', KEYS[2], 'expires_at', redis.call('EXPIRETIME', KEYS[2]))
end
redis.call('HSET', KEYS[2], 'hold:' .. ARGV[1], ARGV[2])
redis.call('EXPIREAT', KEYS[2], ARGV[2], 'GT')
redis.call('ZADD', KEYS[3], 'GT', ARGV[2], KEYS[2])
return 1
"""

_EXPIRE_CONTACT = _CONTACT_LUA + """
return settle_contact(KEYS[1], KEYS[2], tonumber(ARGV[1]))
"""

_CANCEL = _CONTACT_LUA + """
-- KEYS: record, due, the contact sweep ZSET; ARGV: id, reason, finished at (ISO), now
-- (epoch s), the contact keys' prefix (P:notifications:contact:)
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'pending' or status == 'retrying' then
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'last_error', ARGV[2], 'finished_at', ARGV[3])
  redis.call('ZREM', KEYS[2], ARGV[1])
  if redis.call('HEXISTS', KEYS[1], 'contact_held_until') == 1 then
    -- cancelled for good: its contact is no longer kept for it (as when sent or failed)
    local place = redis.call('HMGET', KEYS[1], 'clinic_id', 'visit_id')
    if place[1] and place[2] then
      release_contact(ARGV[5] .. place[1] .. ':' .. place[2], KEYS[3], ARGV[1],
                      tonumber(ARGV[4]))
    end
  end
  return 1
end
return 0
"""

_CLAIM = """
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'pending' and status ~= 'retrying' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return false
end
local next_at = tonumber(redis.call('HGET', KEYS[1], 'next_attempt_at') or '0')
if next_at > tonumber(ARGV[2]) then return false end
redis.call('HSET', KEYS[1], 'status', 'sending', 'phase', 'preparing', 'claim', ARGV[3],
           'instance', ARGV[4], 'claimed_at', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
return redis.call('HGETALL', KEYS[1])
"""

_HAND_OVER = """
if redis.call('HGET', KEYS[1], 'claim') == ARGV[1]
   and redis.call('HGET', KEYS[1], 'status') == 'sending' then
  redis.call('HSET', KEYS[1], 'phase', 'handing_over')
  return 1
end
return 0
"""

_SETTLE = _CONTACT_LUA + """
-- KEYS: record, due, inflight, outbox[, the patient's contact, the sweep ZSET]
-- ARGV: id, claim, status, next_at ('' when none), now, n_events, events..., field, value...
local claim = redis.call('HGET', KEYS[1], 'claim')
local status = redis.call('HGET', KEYS[1], 'status')
if claim ~= ARGV[2] then return 0 end
if status ~= 'sending' and not (status == 'unconfirmed' and ARGV[3] == 'sent') then
  return 0
end
local n_events = tonumber(ARGV[6])
for i = 7, 6 + n_events do redis.call('RPUSH', KEYS[4], ARGV[i]) end
redis.call('HSET', KEYS[1], 'status', ARGV[3], 'phase', '')
if #ARGV > 6 + n_events then redis.call('HSET', KEYS[1], unpack(ARGV, 7 + n_events)) end
redis.call('ZREM', KEYS[3], ARGV[1])
if ARGV[3] == 'retrying' then
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
elseif #KEYS >= 6 then  -- settled for good: its contact is no longer kept for it
  release_contact(KEYS[5], KEYS[6], ARGV[1], tonumber(ARGV[5]))
end
return 1
"""

_RECOVER = _CONTACT_LUA + """
-- KEYS: record, due, inflight, outbox[, the patient's contact, the sweep ZSET]
-- ARGV: id, claim, now, events to queue when it ends unconfirmed...
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'sending' or redis.call('HGET', KEYS[1], 'claim') ~= ARGV[2] then
  redis.call('ZREM', KEYS[3], ARGV[1])
  return 0
end
redis.call('ZREM', KEYS[3], ARGV[1])
if redis.call('HGET', KEYS[1], 'phase') == 'preparing' then
  redis.call('HINCRBY', KEYS[1], 'attempts', -1)
  redis.call('HSET', KEYS[1], 'status', 'retrying', 'phase', '', 'next_attempt_at', ARGV[3],
             'last_error', 'the sender stopped before handing the message over; tried again')
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
  return 1
end
redis.call('HSET', KEYS[1], 'status', 'unconfirmed', 'phase', '', 'finished_at', ARGV[3],
           'last_error', 'the sender stopped while the channel had the message; '
           .. 'it may have been delivered and is not sent again')
for i = 4, #ARGV do redis.call('RPUSH', KEYS[4], ARGV[i]) end
if #KEYS >= 6 then release_contact(KEYS[5], KEYS[6], ARGV[1], tonumber(ARGV[3])) end
return 2
"""

_READ_CONTACT = """
-- KEYS: the contact, the outbox; ARGV: the audit event, now ('' for the sender: any kept)
local contact = redis.call('HGETALL', KEYS[1])
if #contact == 0 then return contact end
if ARGV[2] ~= '' then  -- shown to a person: not once past its own expiry (only held)
  local own = tonumber(redis.call('HGET', KEYS[1], 'expires_at'))
  if own ~= nil and own <= tonumber(ARGV[2]) then return {} end
end
redis.call('RPUSH', KEYS[2], ARGV[1])
return contact
"""


class NotificationStore:
    """Redis access for the notifications service (see the module docstring for keys)."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.prefix = f"{prefix}:notifications"
        self._create = redis.register_script(_CREATE)
        self._cancel = redis.register_script(_CANCEL)
        self._hold = redis.register_script(_HOLD)
        self._expire_contact = redis.register_script(_EXPIRE_CONTACT)
        self._claim = redis.register_script(_CLAIM)
        self._hand_over = redis.register_script(_HAND_OVER)
        self._settle = redis.register_script(_SETTLE)
        self._recover = redis.register_script(_RECOVER)
        self._read_contact = redis.register_script(_READ_CONTACT)
        self.outbox = Outbox(redis, self.prefix)

    # ------------------------------------------------------------------ keys

    def old_offset_key(self, topic: str, partition: int) -> str:
        return f"{self.prefix}:offset:{topic}:{partition}"

    def state_key(self, clinic_id: str) -> str:
        return f"{self.prefix}:state:{clinic_id}"

    @property
    def timers_key(self) -> str:
        return f"{self.prefix}:timers"

    def prefs_key(self, clinic_id: str) -> str:
        return f"{self.prefix}:prefs:{clinic_id}"

    def contact_key(self, clinic_id: str, visit_id: str) -> str:
        return f"{self.prefix}:contact:{clinic_id}:{visit_id}"

    @property
    def contact_expiry_key(self) -> str:
        return f"{self.prefix}:contact-expiry"

    def record_key(self, notification_id: str) -> str:
        return f"{self.prefix}:n:{notification_id}"

    def list_key(self, clinic_id: str) -> str:
        return f"{self.prefix}:list:{clinic_id}"

    @property
    def due_key(self) -> str:
        return f"{self.prefix}:due"

    @property
    def inflight_key(self) -> str:
        return f"{self.prefix}:inflight"

    def instance_key(self, instance_id: str) -> str:
        return f"{self.prefix}:instance:{instance_id}"

    def alerts_key(self, clinic_id: str) -> str:
        return f"{self.prefix}:alerts:{clinic_id}"

    def alerts_channel(self, clinic_id: str) -> str:
        return f"{self.prefix}:alerts-live:{clinic_id}"

    @property
    def alerts_pattern(self) -> str:
        return f"{self.prefix}:alerts-live:*"

    def clinic_of_channel(self, channel: str) -> str:
        return channel[len(self.prefix) + len(":alerts-live:"):]

    @property
    def outbox_key(self) -> str:
        return self.outbox.key

    def estimates_key(self, clinic_id: str) -> str:
        return f"{self.prefix}:estimate:{clinic_id}"

    # --------------------------------------------------------- consumer side

    async def adopt_old_offsets(self, partitions: Sequence[Partition],
                                new_key: Callable[[Partition], str]) -> int:
        """Move the offsets a version before the shared runner stored for ``partitions`` to
        the runner's keys (``new_key``), unless these hold one already: a Redis from
        before carries on where it was instead of replaying the topics over its
        notifiers. Returns how many were found."""
        old = [self.old_offset_key(*tp) for tp in partitions]
        raw = await self.redis.mget(old)
        found = [(tp, key, int(value)) for tp, key, value in zip(partitions, old, raw, strict=True)
                 if value is not None]
        if found:
            pipe = self.redis.pipeline(transaction=True)
            for tp, key, offset in found:
                pipe.set(new_key(tp), offset, nx=True)
                pipe.delete(key)
            await pipe.execute()
            log.info("offsets adopted from the layout before the shared runner",
                     partitions=len(found))
        return len(found)

    async def preferences(self, clinic_ids: Sequence[str]) -> dict[str, dict[str, Preferences]]:
        """Every visit's preferences, per clinic (no contact details in there)."""
        pipe = self.redis.pipeline(transaction=False)
        for clinic_id in clinic_ids:
            pipe.hgetall(self.prefs_key(clinic_id))
        answers = await pipe.execute()
        return {
            clinic_id: {k.decode(): Preferences.from_dict(orjson.loads(v))
                        for k, v in answer.items()}
            for clinic_id, answer in zip(clinic_ids, answers, strict=True)
        }

    def queue_changes(self, pipe: Any, changes: NotificationChanges) -> None:
        """Queue a batch's (or a tick's) changes on a pipeline already in MULTI."""
        for clinic_id, state in changes.states.items():
            pipe.set(self.state_key(clinic_id), state)
        for clinic_id, due in changes.timers.items():
            if due is None:
                pipe.zrem(self.timers_key, clinic_id)
            else:
                pipe.zadd(self.timers_key, {clinic_id: due})
        for new in changes.notifications:
            flat: list[Any] = [new.notification_id, new.due_at, new.created_at,
                               RECORD_TTL_SECONDS]
            for name, value in new.fields.items():
                flat.extend((name, value))
            _queue_script(pipe, self._create, [self.record_key(new.notification_id),
                                               self.due_key, self.list_key(new.clinic_id)], flat)
        for notification_id, clinic_id, visit_id, until in changes.contact_holds:
            _queue_script(pipe, self._hold, [self.record_key(notification_id),
                                             self.contact_key(clinic_id, visit_id),
                                             self.contact_expiry_key],
                          [notification_id, int(until.timestamp())])
        finished = datetime.fromisoformat(changes.finished_at).timestamp() \
            if changes.cancels else 0.0
        for notification_id, reason in changes.cancels:
            self._queue_cancel(pipe, notification_id, reason, changes.finished_at, finished)
        for action, clinic_id, room_id, alert in changes.alert_changes:
            if action == "raise":
                assert alert is not None
                pipe.hset(self.alerts_key(clinic_id), room_id, alert)
            else:
                pipe.hdel(self.alerts_key(clinic_id), room_id)
        for clinic_id, message in changes.live:
            pipe.publish(self.alerts_channel(clinic_id), message)
        self.outbox.queue(pipe, changes.outbox)
        for clinic_id, gone in changes.estimates_gone.items():
            if gone:
                pipe.hdel(self.estimates_key(clinic_id), *sorted(gone))
        for clinic_id, estimates in changes.estimates.items():
            if estimates:
                pipe.hset(self.estimates_key(clinic_id), mapping=estimates)
                pipe.expire(self.estimates_key(clinic_id), ESTIMATE_TTL_SECONDS)

    def _queue_cancel(self, pipe: Any, notification_id: str, reason: str, at: str,
                      now: float) -> None:
        """Queue cancelling a message not yet sent; a deferred one no longer keeps its
        patient's contact (deleted in the same step when past its own expiry)."""
        _queue_script(pipe, self._cancel, [self.record_key(notification_id), self.due_key,
                                           self.contact_expiry_key],
                      [notification_id, reason, at, now, f"{self.prefix}:contact:"])

    async def notifiers(self, pipe: Any, clinic_ids: Sequence[str]
                        ) -> dict[str, ClinicNotifier]:
        """The clinics' notifiers, read on ``pipe`` (watching their keys); a clinic never
        seen, or whose state this version cannot read, starts afresh."""
        if not clinic_ids:
            return {}
        raw = await pipe.mget([self.state_key(c) for c in clinic_ids])
        return {clinic_id: _notifier(clinic_id, state)
                for clinic_id, state in zip(clinic_ids, raw, strict=True)}

    async def due_clinics(self, now: float, limit: int = 100) -> list[str]:
        members = await self.redis.zrangebyscore(self.timers_key, "-inf", now, start=0,
                                                 num=limit)
        return [m.decode() for m in members]

    # ------------------------------------------------------------- contacts

    async def visit_status(self, clinic_id: str, visit_id: str) -> str | None:
        """Where a visit stands on the clinic's floor as the notifier knows it
        (``ClinicNotifier.visit_status``: an open status, "ended", or None: unknown)."""
        raw = await self.redis.get(self.state_key(clinic_id))
        if raw is None:
            return None
        return _notifier(clinic_id, raw).visit_status(visit_id)

    async def save_contact(self, clinic_id: str, visit_id: str, *, channel: str, address: str,
                           preferences: Preferences, recorded_by: str, recorded_at: datetime,
                           expires_at: datetime, audit: bytes) -> bool:
        """Keep a contact (and its preferences) until ``expires_at``, audited in the same
        transaction; the latest given for a visit replaces the one before (and is kept for
        the messages deferred to it still pending: their holds carry over). The same
        contact and preferences already on file change nothing (no write, no audit):
        returns False then, True when stored."""
        contact = self.contact_key(clinic_id, visit_id)
        prefs = self.prefs_key(clinic_id)
        until = int(expires_at.timestamp())
        async with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(contact, prefs)
                    stored = await pipe.hgetall(contact)
                    stored_prefs = await pipe.hget(prefs, visit_id)
                    if (stored.get(b"channel") == channel.encode()
                            and stored.get(b"address") == address.encode()
                            and stored_prefs is not None
                            and Preferences.from_dict(orjson.loads(stored_prefs)) == preferences):
                        await pipe.reset()
                        return False
                    holds = {k.decode(): int(v) for k, v in stored.items()
                             if k.startswith(b"hold:")}
                    deleted_at = max([until, *holds.values()])
                    pipe.multi()
                    pipe.delete(contact)
                    pipe.hset(contact, mapping={"channel": channel, "address": address,
                                                "recorded_by": recorded_by,
                                                "recorded_at": recorded_at.isoformat(),
                                                "expires_at": until, **holds})
                    pipe.expireat(contact, deleted_at)
                    pipe.zadd(self.contact_expiry_key, {contact: deleted_at})
                    pipe.hset(prefs, visit_id, orjson.dumps(preferences.to_dict()))
                    pipe.expireat(prefs, until, nx=True)
                    pipe.expireat(prefs, until, gt=True)
                    pipe.rpush(self.outbox_key, audit)
                    if preferences.wait_anywhere:
                        # the notifier's next tick looks at this patient now: one already
                        # near the front is called back without waiting for an estimate
                        pipe.zadd(self.timers_key, {clinic_id: recorded_at.timestamp()},
                                  lt=True)
                    await pipe.execute()
                    return True
                except WatchError:
                    continue  # changed meanwhile: compare with what is there now

    async def erase_contact(self, clinic_id: str, visit_id: str, *, at: datetime,
                            expires_at: datetime, audit: bytes) -> bool:
        """Forget a contact at ``at``, and cancel the deferred messages it was kept for;
        the visit stays opted out for the day (audited in the same transaction). A visit
        already erased and opted out changes nothing (no write, no audit): returns False
        then, True when something was erased or marked."""
        contact = self.contact_key(clinic_id, visit_id)
        prefs = self.prefs_key(clinic_id)
        until = int(expires_at.timestamp())
        async with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(contact, prefs)
                    stored = await pipe.hgetall(contact)
                    stored_prefs = await pipe.hget(prefs, visit_id)
                    if not stored and stored_prefs is not None and \
                            Preferences.from_dict(orjson.loads(stored_prefs)).opted_out:
                        await pipe.reset()
                        return False
                    pipe.multi()
                    pipe.delete(contact)
                    pipe.zrem(self.contact_expiry_key, contact)
                    for field in stored:
                        if field.startswith(b"hold:"):  # a deferred message waits for it
                            held = field[len(b"hold:"):].decode()
                            self._queue_cancel(pipe, held,
                                               "the patient's contact details were erased",
                                               at.isoformat(), at.timestamp())
                    pipe.hset(prefs, visit_id,
                              orjson.dumps(Preferences(opted_out=True).to_dict()))
                    pipe.expireat(prefs, until, nx=True)
                    pipe.expireat(prefs, until, gt=True)
                    pipe.rpush(self.outbox_key, audit)
                    await pipe.execute()
                    return True
                except WatchError:
                    continue  # changed meanwhile: look again

    async def read_contact(self, clinic_id: str, visit_id: str, audit: bytes,
                           shown_at: float | None = None) -> dict[str, str] | None:
        """The contact details, with the audit event queued atomically when there are any.
        ``shown_at`` (epoch s; a person's read, not the sender's): None, and nothing
        audited, for a contact past its own expiry that only a deferred message's hold
        keeps (it is kept for that message, not to be shown again)."""
        raw = await self._read_contact(
            keys=[self.contact_key(clinic_id, visit_id), self.outbox_key],
            args=[audit, "" if shown_at is None else shown_at])
        if not raw:
            return None
        pairs = iter(raw)
        return {k.decode(): v.decode() for k, v in zip(pairs, pairs, strict=True)}

    async def preference(self, clinic_id: str, visit_id: str) -> Preferences | None:
        raw = await self.redis.hget(self.prefs_key(clinic_id), visit_id)
        return None if raw is None else Preferences.from_dict(orjson.loads(raw))

    async def set_preference(self, clinic_id: str, visit_id: str,
                             preferences: Preferences) -> None:
        await self.redis.hset(self.prefs_key(clinic_id), visit_id,
                              orjson.dumps(preferences.to_dict()))

    async def contact_expires_at(self, clinic_id: str, visit_id: str) -> float | None:
        """When the contact is deleted (epoch s; later than its own expiry while a
        deferred message is kept for it), or None without one."""
        ttl = await self.redis.pexpiretime(self.contact_key(clinic_id, visit_id))
        return None if ttl is None or ttl < 0 else ttl / 1000.0

    async def expire_contacts(self, now: float, limit: int = 200) -> int:
        """Delete the contacts due for deletion at ``now`` on the service's clock (each
        checked again against its expiry and holds, in one step); returns how many."""
        due = await self.redis.zrangebyscore(self.contact_expiry_key, "-inf", now, start=0,
                                             num=limit)
        if not due:
            return 0
        pipe = self.redis.pipeline(transaction=False)
        for contact in due:
            _queue_script(pipe, self._expire_contact,
                          [contact.decode(), self.contact_expiry_key], [now])
        return sum(int(deleted) for deleted in await pipe.execute())

    # ------------------------------------------------------------ deliveries

    async def due_notifications(self, now: float, limit: int) -> list[str]:
        members = await self.redis.zrangebyscore(self.due_key, "-inf", now, start=0, num=limit)
        return [m.decode() for m in members]

    async def claim(self, notification_id: str, now: float, claim: str,
                    instance_id: str) -> dict[str, str] | None:
        raw = await self._claim(
            keys=[self.record_key(notification_id), self.due_key, self.inflight_key],
            args=[notification_id, now, claim, instance_id])
        if not raw:
            return None
        pairs = iter(raw)
        return {k.decode(): v.decode() for k, v in zip(pairs, pairs, strict=True)}

    async def hand_over(self, notification_id: str, claim: str) -> bool:
        """Mark that the channel is about to have the message; False if the claim is lost."""
        return bool(await self._hand_over(keys=[self.record_key(notification_id)],
                                          args=[claim]))

    async def settle(self, notification_id: str, claim: str, status: str, *, now: float,
                     fields: dict[str, str], events: Iterable[bytes] = (),
                     next_at: float | None = None,
                     patient: tuple[str, str] | None = None) -> bool:
        """End a claim at ``now``: sent, failed, unconfirmed, cancelled, or retrying at
        ``next_at``; ``events`` go to the outbox in the same step. Settled for good, a
        patient message (``patient``: its clinic and visit) no longer keeps the contact:
        one past its own expiry and kept for nothing else is deleted in the same step."""
        queued = list(events)
        args: list[Any] = [notification_id, claim, status,
                           "" if next_at is None else next_at, now, len(queued), *queued]
        for name, value in fields.items():
            args.extend((name, value))
        if next_at is not None:
            args.extend(("next_attempt_at", next_at))
        return bool(await self._settle(
            keys=self._claim_keys(notification_id, patient), args=args))

    def _claim_keys(self, notification_id: str, patient: tuple[str, str] | None) -> list[str]:
        keys = [self.record_key(notification_id), self.due_key, self.inflight_key,
                self.outbox_key]
        if patient is not None:
            keys.extend((self.contact_key(*patient), self.contact_expiry_key))
        return keys

    async def inflight(self) -> list[tuple[str, float]]:
        return [(m.decode(), s) for m, s in
                await self.redis.zrange(self.inflight_key, 0, -1, withscores=True)]

    async def recover(self, notification_id: str, claim: str, now: float,
                      unconfirmed_events: Sequence[bytes] = (),
                      patient: tuple[str, str] | None = None) -> int:
        """Recover a dead sender's claim: 1 tried again, 2 unconfirmed (``unconfirmed_events``
        queued; a patient message's contact no longer kept for it, as ``settle``), 0
        nothing to do."""
        return int(await self._recover(
            keys=self._claim_keys(notification_id, patient),
            args=[notification_id, claim, now, *unconfirmed_events]))

    async def due_count(self) -> int:
        return int(await self.redis.zcard(self.due_key))

    async def heartbeat(self, instance_id: str) -> None:
        await self.redis.set(self.instance_key(instance_id), b"1", px=HEARTBEAT_MS)

    async def instance_alive(self, instance_id: str) -> bool:
        return bool(await self.redis.exists(self.instance_key(instance_id)))

    async def record(self, notification_id: str) -> dict[str, str] | None:
        raw = await self.redis.hgetall(self.record_key(notification_id))
        return {k.decode(): v.decode() for k, v in raw.items()} or None

    async def records(self, clinic_id: str, *, since: float, limit: int) -> list[dict[str, str]]:
        """The clinic's notifications since ``since``, newest first."""
        ids = await self.redis.zrevrangebyscore(self.list_key(clinic_id), "+inf", since,
                                                start=0, num=limit)
        pipe = self.redis.pipeline(transaction=False)
        for notification_id in ids:
            pipe.hgetall(self.record_key(notification_id.decode()))
        found = await pipe.execute() if ids else []
        return [{k.decode(): v.decode() for k, v in r.items()} for r in found if r]

    # ----------------------------------------------------------- alerts, misc

    async def alerts(self, clinic_id: str) -> list[dict[str, Any]]:
        raw = await self.redis.hgetall(self.alerts_key(clinic_id))
        return sorted((orjson.loads(v) for v in raw.values()), key=lambda a: a["raised_at"])

    async def estimates(self, clinic_id: str) -> list[dict[str, Any]]:
        raw = await self.redis.hgetall(self.estimates_key(clinic_id))
        return sorted((orjson.loads(v) for v in raw.values()), key=lambda e: e["position"])


def _notifier(clinic_id: str, raw: bytes | None) -> ClinicNotifier:
    if raw is None:
        return ClinicNotifier(clinic_id)
    try:
        return ClinicNotifier.from_dict(orjson.loads(raw))
    except (ValueError, KeyError, TypeError) as exc:
        # a snapshot from another version: start the clinic afresh rather than stop
        log.error("clinic state unreadable, starting afresh", clinic=clinic_id,
                  error=repr(exc))
        return ClinicNotifier(clinic_id)


def _queue_script(pipe: Any, script: AsyncScript, keys: list[str], args: list[Any]) -> None:
    """Queue a registered script on a pipeline in MULTI (the pipeline loads it first if
    Redis does not know it, as ``AsyncScript.__call__`` arranges)."""
    pipe.scripts.add(script)
    pipe.evalsha(script.sha, len(keys), *keys, *args)


class NotifierStates:
    """The clinics' notifiers as the notifier's ``RedisProjection`` reads and writes them
    (a ``ProjectionStore``): the state keys a batch watches, the notifiers and
    preferences it is planned from, and its changes queued in the transaction.

    A batch of records is planned at the service clock's ``now``; a tick
    (``ticking_at``) at the time it was given, for the clinics that have something due
    then."""

    def __init__(self, store: NotificationStore, clock: Clock, *,
                 ticking: Sequence[str] = (), at: datetime | None = None) -> None:
        self.store = store
        self.clock = clock
        self.ticking = tuple(ticking)
        self.at = at

    def ticking_at(self, clinic_ids: Sequence[str], now: datetime) -> NotifierStates:
        """The same store for a tick of ``clinic_ids`` at ``now``."""
        return NotifierStates(self.store, self.clock, ticking=clinic_ids, at=now)

    def _clinics(self, records: Sequence[Inbound]) -> list[str]:
        touched = {r.event.clinic_id for r in records if r.event is not None}
        return sorted(touched.union(self.ticking))

    def watched(self, records: Sequence[Inbound]) -> list[str]:
        # preferences too: a contact saved while the batch is planned makes it plan again
        # with it (a patient waiting outside is then called back by this very batch)
        clinics = self._clinics(records)
        return [*(self.store.state_key(c) for c in clinics),
                *(self.store.prefs_key(c) for c in clinics)]

    async def read(self, pipe: Any, records: Sequence[Inbound]) -> NotifierState:
        clinics = self._clinics(records)
        now = self.at or self.clock.now()
        preferences = await self.store.preferences(clinics)
        notifiers = await self.store.notifiers(pipe, clinics)
        return NotifierState(now, notifiers, preferences, self.ticking)

    def write(self, pipe: Any, changes: NotificationChanges) -> None:
        self.store.queue_changes(pipe, changes)
