"""Checkin's Redis store. The one place that knows its key layout.

Keys (``P`` is ``CLINICFLOW_REDIS_PREFIX``, default ``cf``; ``{day}`` is the clinic's
calendar day ``YYYY-MM-DD`` in the clinic's own zone, ``CLINICFLOW_CLINICS``)::

    P:checkin:clinics                       SET   clinics with a schedule (the no-show sweep)
    P:checkin:appt:{clinic}:{appointment}   HASH  the imported appointment; ``identity`` is the
                                                  HMAC digest of birth date + initials, never
                                                  the plain values; ``kiosk_code`` its code
    P:checkin:kcodes:{clinic}:{day}         HASH  kiosk code -> appointment id (the day's
                                                  codes, unique per clinic day)
    P:checkin:providers:{clinic}            SET   providers on the clinic's imported schedules
    P:checkin:names:{clinic}:{kind}         HASH  display names from imported FHIR Practitioner
                                                  (``kind`` provider) and Location (``room``)
                                                  resources and HL7 AIP / AIL, by id; each new
                                                  or changed one is published with it
                                                  (``directory.named``, through the outbox)
    P:checkin:who:{clinic}:{day}:{digest}   SET   appointment ids with that identity digest
    P:checkin:day:{clinic}:{day}            ZSET  the day's appointment ids by time
    P:checkin:pending:{clinic}              ZSET  booked appointments by time, the no-show
                                                  sweep's candidates, until the projection
                                                  reads their arrival or no-show back from
                                                  the floor, or the sweep finds them settled
    P:checkin:arrived:{clinic}:{appointment} STR  the visit id of its one arrival
    P:checkin:noshow:{clinic}:{appointment} STR   set once its no-show is published
    P:checkin:noshows:{clinic}:{day}        ZSET  the day's no-shows by time (follow-up list)
    P:checkin:seq:{clinic}:{day}            INT   ticket numbers handed out that day (raised
                                                  again by every visit the projection
                                                  rebuilds, so no code is handed out twice)
    P:checkin:ticket:{clinic}:{day}:{code}  STR   visit id of a ticket code
    P:checkin:visits:{clinic}:{day}         ZSET  the day's visit ids by when each was first
                                                  stored (its arrival): every visit, whatever
                                                  its ticket code (the demo's ``N-12``, a
                                                  desk's ``A-3``), for the FHIR Encounter read
    P:checkin:visit:{clinic}:{visit}        HASH  the visit: ticket, status, latest estimate
    P:checkin:arrival:{clinic}:{event}      STR   visit id of a ``patient.arrived`` event (an
                                                  ``action.undone`` names the event; an EHR
                                                  message resent after a try that died looks
                                                  for that try's arrival by it)
    P:checkin:limit:{kind}:{client}:{minute} INT  rate-limit counters (lookups, misses;
                                                  ``kind`` is ``lookup`` or ``miss``)
    P:checkin:import:{clinic}               STR   held while an import of that clinic runs
    P:checkin:feedholds:{clinic}            ZSET  appointments an EHR feed is changing now,
                                                  by when the hold lapses: no import starts
                                                  while one is held, and a feed holds none
                                                  while an import runs
    P:checkin:feedhold:{clinic}:{appointment} STR the message holding it (``message`` as in
                                                  ``feed:ack``)
    P:checkin:feed:ack:{message}            STR   the HL7 ACK answered to a message (``message``:
                                                  a digest of MSH-3, MSH-4 and MSH-10), so a
                                                  resent message gets it again, with no effect
    P:checkin:feed:at:{clinic}:{subject}    STR   the own time (epoch) of the last feed message
                                                  applied to an appointment, EHR visit or
                                                  patient (``subject``): an older one is stale
    P:checkin:feed:visit:{clinic}:{ehr}     STR   our visit id of an EHR visit (``ehr``: a keyed
                                                  digest of PV1-19), ``pending:{message}``
                                                  while its arrival is being published
    P:checkin:outbox                        LIST  dead letters, told records and directory.named
                                                  waiting for the relay, and
    P:checkin:outbox-lock                   STR   its drainer's lock (shared/outbox.py)
    P:checkin:outbox-parked                 LIST  entries Kafka refused for good, set aside
    P:applied:checkin:{topic}:{partition}   STR   the consumer's last offset applied per
                                                  partition (shared/projection.py)
    P:idem:checkin:{clinic}:{caller}:{key}  Idempotency-Key answers, per credential
                                                  (shared/idempotency.py)

Day-scoped keys and visits expire ``KEEP_DAYS`` after their day; appointments and their
arrival / no-show marks ``KEEP_DAYS`` after their time; the providers seen on schedules
``PROVIDERS_KEEP_DAYS`` after the last import that listed any. Display names do not
expire (configuration stays their first source; an import replaces those it names).

What comes from Kafka is rebuilt by replaying it: visits, tickets, estimates, arrival
and no-show marks are applied by the consumer (``VisitProjectionStore``: the shared
runner's ``RedisProjection`` watches and reads the batch's visits, and writes its
changes, each batch in one ``MULTI``/``EXEC`` together with the partitions' offsets and
its dead letters). The schedule itself (with the kiosk's identity digests and codes, which are never
published) comes from imports: after losing Redis, import the day's schedule again. The
display names are checkin's record of what it published on ``clinicflow.directory.v1``
(flow and notifications keep their own copies from that topic): an import that names an
id again as stored publishes nothing. The offsets once kept in a ``P:checkin:offsets`` hash
are no longer read: a Redis from before rebuilds the projection from the topics'
beginnings.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any, cast

from redis.asyncio import Redis
from redis.exceptions import WatchError

from services.checkin.domain import (
    TICKET_LETTERS,
    TICKETS_PER_LETTER,
    Appointment,
    AppointmentState,
    VisitView,
    clinic_day,
    ticket_number,
)
from services.checkin.projection import (
    CheckinChanges,
    ProjectionState,
    freed_appointments,
    undone_refs,
    visit_refs,
)
from shared.directory import KINDS, changed_names, named_entries
from shared.outbox import Outbox
from shared.projection import Inbound

KEEP_DAYS = 3
FEED_ACK_KEEP_DAYS = 7  # a sender resending a week-old message still gets its first ACK
FEED_PENDING = "pending"
FEED_PENDING_SECONDS = 60
KEEP = timedelta(days=KEEP_DAYS)
PROVIDERS_KEEP_DAYS = 30
MAX_CONFLICTS = 50
_RELEASE_IF_OURS = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# a subject's latest feed message time (epoch seconds), never moved back
_LATEST = """
local current = tonumber(redis.call('GET', KEYS[1]) or '-1e300')
if current > tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"""
# an import's lock, taken only while no EHR feed holds one of the clinic's appointments
_LOCK_IMPORT = """
local now = tonumber(redis.call('TIME')[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if redis.call('ZCARD', KEYS[2]) > 0 then return 0 end
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return 1 end
return 0
"""
# an EHR feed message's hold on one appointment (KEYS[3] names its holder; ARGV[3] is the
# message, so a resent message takes its own hold back): 0 while an import of the clinic
# runs, -1 while another message holds it, 1 when held
_HOLD = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local holder = redis.call('GET', KEYS[3])
if holder and holder ~= ARGV[3] then return -1 end
local lapses = tonumber(redis.call('TIME')[1]) + tonumber(ARGV[2])
redis.call('ZADD', KEYS[2], lapses, ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[2])
redis.call('SET', KEYS[3], ARGV[3], 'EX', ARGV[2])
return 1
"""
# an EHR visit claimed while its arrival is published: nil when taken, else its holder
_CLAIM_VISIT = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then return false end
return redis.call('GET', KEYS[1])
"""
# the first of the candidate kiosk codes (ARGV[3..]) free on the day (KEYS[1]) or already
# the appointment's (ARGV[1]), taken for it at once (two bookings never share one)
_CLAIM_CODE = """
for i = 3, #ARGV do
  local holder = redis.call('HGET', KEYS[1], ARGV[i])
  if not holder or holder == ARGV[1] then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[1])
    redis.call('EXPIREAT', KEYS[1], ARGV[2])
    return ARGV[i]
  end
end
return false
"""
# a new visit in one step: the appointment's arrival claimed (KEYS[4], a scheduled
# arrival only: {0, holder} when another visit holds it), the day's next ticket number
# taken (KEYS[1]) and turned into its code as domain.ticket_code does (ARGV[4] letters,
# ARGV[5] tickets per letter), the visit (KEYS[2]) saved with it, its ticket (ARGV[6] ..
# code, the key's name known only here) and its place in the day's index (KEYS[3]).
# ARGV: 1 expiry of the day's keys, 2 the visit id, 3 its score, 4-6 as said, 7 the
# claim's expiry, 8.. the visit's field/value pairs but its ticket_code. Returns {1, code}.
_OPEN_VISIT = """
if #KEYS == 4 and not redis.call('SET', KEYS[4], ARGV[2], 'NX', 'EXAT', ARGV[7]) then
  local holder = redis.call('GET', KEYS[4])
  if holder ~= ARGV[2] then return {0, holder} end
end
local n = redis.call('INCR', KEYS[1])
redis.call('EXPIREAT', KEYS[1], ARGV[1])
local per = tonumber(ARGV[5])
local at = math.floor((n - 1) / per) % string.len(ARGV[4]) + 1
local code = string.sub(ARGV[4], at, at) .. '-' .. string.format('%d', (n - 1) % per + 1)
redis.call('HSET', KEYS[2], 'ticket_code', code, unpack(ARGV, 8))
redis.call('EXPIREAT', KEYS[2], ARGV[1])
redis.call('SET', ARGV[6] .. code, ARGV[2], 'EXAT', ARGV[1])
redis.call('ZADD', KEYS[3], 'NX', ARGV[3], ARGV[2])
redis.call('EXPIREAT', KEYS[3], ARGV[1])
return {1, code}
"""
# the day's ticket counter raised to at least ARGV[1] (a visit rebuilt from the floor topic
# after Redis was lost: the next arrival must not get its code again)
_RAISE_TO = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
redis.call('EXPIREAT', KEYS[1], ARGV[2])
return 0
"""
# display names stored, and their directory.named queued on the outbox (KEYS[3]), only
# where they differ from the stored ones (KEYS[1] providers, KEYS[2] rooms), compared
# here where they are written: of two messages naming an id at once, the one applied last
# decides the name stored, and its event is the last one published. ARGV: groups of
# (KEYS index, id, display name, outbox entry). Returns how many changed.
_NAME_CHANGES = """
local changed = 0
for i = 1, #ARGV, 4 do
  local key = KEYS[tonumber(ARGV[i])]
  if redis.call('HGET', key, ARGV[i + 1]) ~= ARGV[i + 2] then
    redis.call('HSET', key, ARGV[i + 1], ARGV[i + 2])
    redis.call('RPUSH', KEYS[3], ARGV[i + 3])
    changed = changed + 1
  end
end
return changed
"""


# queues more writes into a store method's transaction (an EHR feed's ACK with its change)
Also = Callable[[Any], None]


@dataclass(slots=True)
class FeedState:
    """What a feed message finds before it is applied (``CheckinStore.feed_state``)."""

    ack: bytes | None  # the ACK answered to it before: a resend
    seen: datetime | None  # the own time of the last message applied to its subject
    held: int | None = None  # with a hold asked: hold_appointment's answer
    stored: Appointment | None = None  # ... and the appointment as stored
    visit_claim: VisitClaim | None = None  # with a claim asked: claim_feed_visit's answer
    identity_matches: IdentityMatches | None = None  # with an identity: identity_matches'


@dataclass(frozen=True, slots=True)
class IdentityMatches:
    """``identity_matches``' answer read ahead: the appointment ids of ``days`` whose kiosk
    check's digest is ``digest``."""

    days: tuple[date, ...]
    digest: str
    ids: list[str]


@dataclass(frozen=True, slots=True)
class VisitClaim:
    """``claim_feed_visit``'s answer: ``holder`` None when the claim was taken, else what
    holds it; ``tried``: the message's own visit is stored already."""

    holder: str | None
    tried: bool = False


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _decode_hash(raw: dict[Any, Any]) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in raw.items()}


def _opt(value: str | None) -> str | None:
    return value if value else None


class CheckinStore:
    """Checkin's keys (see the module's docstring) and what the desk, the kiosk and the
    lookups do with them."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.prefix = f"{prefix}:checkin"
        self._release = redis.register_script(_RELEASE_IF_OURS)
        self._open_visit = redis.register_script(_OPEN_VISIT)
        # directory.named of the names an import changes, queued with them (the relay
        # publishes them to the directory topic); ``names_queued`` wakes the relay
        self.names_outbox = Outbox(redis, self.prefix)
        self.names_queued: Callable[[], None] | None = None

    # ------------------------------------------------------------------ keys

    @property
    def _clinics(self) -> str:
        return f"{self.prefix}:clinics"

    def _appt(self, clinic: str, appointment_id: str) -> str:
        return f"{self.prefix}:appt:{clinic}:{appointment_id}"

    def _kcodes(self, clinic: str, day: date) -> str:
        return f"{self.prefix}:kcodes:{clinic}:{day.isoformat()}"

    def _providers(self, clinic: str) -> str:
        return f"{self.prefix}:providers:{clinic}"

    def _names(self, clinic: str, kind: str) -> str:
        return f"{self.prefix}:names:{clinic}:{kind}"

    def _arrival_event(self, clinic: str, event_id: str) -> str:
        return f"{self.prefix}:arrival:{clinic}:{event_id}"

    def _who(self, clinic: str, day: date, digest: str) -> str:
        return f"{self.prefix}:who:{clinic}:{day.isoformat()}:{digest}"

    def _day(self, clinic: str, day: date) -> str:
        return f"{self.prefix}:day:{clinic}:{day.isoformat()}"

    def _pending(self, clinic: str) -> str:
        return f"{self.prefix}:pending:{clinic}"

    def _arrived(self, clinic: str, appointment_id: str) -> str:
        return f"{self.prefix}:arrived:{clinic}:{appointment_id}"

    def _noshow(self, clinic: str, appointment_id: str) -> str:
        return f"{self.prefix}:noshow:{clinic}:{appointment_id}"

    def _noshows(self, clinic: str, day: date) -> str:
        return f"{self.prefix}:noshows:{clinic}:{day.isoformat()}"

    def _seq(self, clinic: str, day: date) -> str:
        return f"{self.prefix}:seq:{clinic}:{day.isoformat()}"

    def _ticket(self, clinic: str, day: date, code: str) -> str:
        return f"{self.prefix}:ticket:{clinic}:{day.isoformat()}:{code}"

    def _visit(self, clinic: str, visit_id: str) -> str:
        return f"{self.prefix}:visit:{clinic}:{visit_id}"

    def _day_visits(self, clinic: str, day: date) -> str:
        return f"{self.prefix}:visits:{clinic}:{day.isoformat()}"

    def _limit(self, kind: str, client: str, minute: int) -> str:
        return f"{self.prefix}:limit:{kind}:{client}:{minute}"

    def _import_lock(self, clinic: str) -> str:
        return f"{self.prefix}:import:{clinic}"

    @staticmethod
    def _until(day: date) -> int:
        """Expiry (epoch seconds) of a key about a clinic's ``day``: at least KEEP_DAYS
        after that day ends in any zone (UTC-12 to UTC+14)."""
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        return int(start.timestamp()) + (KEEP_DAYS + 2) * 86400

    # ------------------------------------------------------------- schedule

    @staticmethod
    def _appointment_fields(appointment: Appointment, day: date) -> dict[str, str]:
        return {
            "appointment_id": appointment.appointment_id,
            "patient_ref": appointment.patient_ref,
            "provider_id": appointment.provider_id,
            "visit_type": appointment.visit_type,
            "scheduled_at": appointment.scheduled_at.isoformat(),
            "duration_minutes": "" if appointment.duration_minutes is None
            else str(appointment.duration_minutes),
            "status": appointment.status,
            "identity": appointment.identity or "",
            "kiosk_code": appointment.kiosk_code or "",
            "day": day.isoformat(),
        }

    @staticmethod
    def _appointment_of(fields: dict[str, str]) -> Appointment:
        duration = fields.get("duration_minutes")
        return Appointment(
            appointment_id=fields["appointment_id"],
            patient_ref=fields["patient_ref"],
            provider_id=fields["provider_id"],
            visit_type=fields["visit_type"],
            scheduled_at=datetime.fromisoformat(fields["scheduled_at"]),
            duration_minutes=int(duration) if duration else None,
            status="cancelled" if fields.get("status") == "cancelled" else "booked",
            identity=_opt(fields.get("identity")),
            kiosk_code=_opt(fields.get("kiosk_code")),
        )

    async def appointments(self, clinic: str, ids: Sequence[str]) -> dict[str, Appointment]:
        """The stored appointments among ``ids`` (missing ones are left out)."""
        if not ids:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for appointment_id in ids:
                pipe.hgetall(self._appt(clinic, appointment_id))
            raw = await pipe.execute()
        found = {}
        for appointment_id, fields in zip(ids, raw, strict=True):
            if fields:
                found[appointment_id] = self._appointment_of(_decode_hash(fields))
        return found

    async def appointment_states(self, clinic: str,
                                 ids: Sequence[str]) -> dict[str, AppointmentState]:
        """Stored appointments with their arrival and no-show marks."""
        ids = list(dict.fromkeys(ids))
        if not ids:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for appointment_id in ids:
                pipe.hgetall(self._appt(clinic, appointment_id))
                pipe.get(self._arrived(clinic, appointment_id))
                pipe.exists(self._noshow(clinic, appointment_id))
            raw = await pipe.execute()
        states = {}
        for index, appointment_id in enumerate(ids):
            fields, arrived, no_show = raw[3 * index: 3 * index + 3]
            if fields:
                states[appointment_id] = AppointmentState(
                    self._appointment_of(_decode_hash(fields)),
                    arrived_visit=_text(arrived) if arrived else None,
                    no_show=bool(no_show),
                )
        return states

    async def save_appointments(self, clinic: str, appointments: Sequence[Appointment],
                                previous: dict[str, Appointment], zone: Any) -> None:
        """Store imported appointments and their indexes (one transaction)."""
        if not appointments:
            return
        async with self.redis.pipeline(transaction=True) as pipe:
            self._queue_appointments(pipe, clinic, appointments, previous, zone)
            await pipe.execute()

    def _queue_appointments(self, pipe: Any, clinic: str, appointments: Sequence[Appointment],
                            previous: dict[str, Appointment], zone: Any) -> None:
        if appointments:
            pipe.sadd(self._clinics, clinic)
            providers = self._providers(clinic)
            pipe.sadd(providers, *{a.provider_id for a in appointments})
            pipe.expire(providers, PROVIDERS_KEEP_DAYS * 86400)
            for appointment in appointments:
                day = clinic_day(appointment.scheduled_at, zone)
                key = self._appt(clinic, appointment.appointment_id)
                expires = int((appointment.scheduled_at + KEEP).timestamp())
                pipe.hset(key, mapping=self._appointment_fields(appointment, day))
                pipe.expireat(key, expires)
                before = previous.get(appointment.appointment_id)
                if before is not None:
                    before_day = clinic_day(before.scheduled_at, zone)
                    if before_day != day:
                        pipe.zrem(self._day(clinic, before_day), appointment.appointment_id)
                    if before.identity and (before.identity != appointment.identity
                                            or before_day != day):
                        pipe.srem(self._who(clinic, before_day, before.identity),
                                  appointment.appointment_id)
                    if before.kiosk_code and (before.kiosk_code != appointment.kiosk_code
                                              or before_day != day):
                        pipe.hdel(self._kcodes(clinic, before_day), before.kiosk_code)
                if appointment.kiosk_code:
                    codes = self._kcodes(clinic, day)
                    pipe.hset(codes, appointment.kiosk_code, appointment.appointment_id)
                    pipe.expireat(codes, self._until(day))
                score = appointment.scheduled_at.timestamp()
                pipe.zadd(self._day(clinic, day), {appointment.appointment_id: score})
                pipe.expireat(self._day(clinic, day), self._until(day))
                if appointment.identity:
                    who = self._who(clinic, day, appointment.identity)
                    pipe.sadd(who, appointment.appointment_id)
                    pipe.expireat(who, self._until(day))
                if appointment.status == "booked":
                    pipe.zadd(self._pending(clinic), {appointment.appointment_id: score})
                else:
                    pipe.zrem(self._pending(clinic), appointment.appointment_id)

    async def kiosk_codes(self, clinic: str, days: Sequence[date]
                          ) -> dict[date, dict[str, str]]:
        """The kiosk codes handed out for each of ``days``: code -> appointment id."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for day in days:
                pipe.hgetall(self._kcodes(clinic, day))
            raw = await pipe.execute()
        return {day: _decode_hash(codes) for day, codes in zip(days, raw, strict=True)}

    async def appointment_for_kiosk_code(self, clinic: str, days: Sequence[date],
                                         code: str) -> str | None:
        """The appointment holding ``code`` on the first of ``days`` that has it."""
        for day in days:
            found = await self.redis.hget(self._kcodes(clinic, day), code)
            if found:
                return _text(found)
        return None

    async def kiosk_code_elsewhere(self, clinic: str, days: Sequence[date],
                                   code: str) -> tuple[date, str] | None:
        """The first of ``days`` (one round trip) whose kiosk codes hold ``code``, with its
        appointment: a code typed on the wrong day."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for day in days:
                pipe.hget(self._kcodes(clinic, day), code)
            found = await pipe.execute()
        for day, appointment_id in zip(days, found, strict=True):
            if appointment_id:
                return day, _text(appointment_id)
        return None

    async def identity_matches(self, clinic: str, days: Sequence[date],
                               digest: str) -> list[str]:
        """Appointment ids of ``days`` with that identity digest."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for day in days:
                pipe.smembers(self._who(clinic, day, digest))
            return self._matched(await pipe.execute())

    @staticmethod
    def _matched(raw: list[Any]) -> list[str]:
        return sorted({_text(m) for members in raw for m in members})

    # ------------------------------------------------------------ directory

    async def scheduled_providers(self, clinic: str) -> set[str]:
        """The providers on the clinic's imported schedules (the last 30 days' imports)."""
        return {_text(m) for m in await self.redis.smembers(self._providers(clinic))}

    async def save_names(self, clinic: str, providers: dict[str, str],
                         rooms: dict[str, str], *, now: datetime,
                         origin: str = "fhir") -> int:
        """Keep the display names an import brought (FHIR Practitioner, Location) and
        publish those new or changed (``directory.named``, through the outbox, in the
        same transaction). Returns how many changed."""
        async with self.redis.pipeline(transaction=True) as pipe:
            if not self._queue_named(pipe, clinic, providers, rooms, now=now,
                                     origin=origin):
                return 0
            changed = int((await pipe.execute())[0])
        if changed:
            self._names_kick()
        return changed

    def _queue_named(self, pipe: Any, clinic: str, providers: Mapping[str, str],
                     rooms: Mapping[str, str], *, now: datetime, origin: str) -> bool:
        """Queue, on a pipeline inside its MULTI, the names given: each stored, with its
        ``directory.named`` outbox entry, where it differs from the one stored then (one
        ``EVAL``: compared where it is written, so two writers naming an id at once
        leave the last one's name stored and published last, and no rename is lost); its
        answer says how many changed. False (nothing queued) when none are given."""
        given = {"provider": changed_names({}, providers), "room": changed_names({}, rooms)}
        args: list[Any] = []
        for index, kind in enumerate(KINDS, start=1):
            names = given[kind]
            entries = named_entries(clinic, kind, names, origin=origin, source="checkin",
                                    now=now)
            for ident, entry in zip(sorted(names), entries, strict=True):
                args += [index, ident, names[ident], entry]
        if not args:
            return False
        pipe.eval(_NAME_CHANGES, 3, *(self._names(clinic, kind) for kind in KINDS),
                  self.names_outbox.key, *args)
        return True

    def _names_kick(self) -> None:
        if self.names_queued is not None:
            self.names_queued()

    async def names(self, clinic: str) -> tuple[dict[str, str], dict[str, str]]:
        """Imported display names: (providers, rooms), by id."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self._names(clinic, "provider"))
            pipe.hgetall(self._names(clinic, "room"))
            providers, rooms = await pipe.execute()
        return _decode_hash(providers), _decode_hash(rooms)

    async def day_schedule(self, clinic: str, day: date) -> list[AppointmentState]:
        ids = [_text(m) for m in await self.redis.zrange(self._day(clinic, day), 0, -1)]
        states = await self.appointment_states(clinic, ids)
        return [states[i] for i in ids if i in states]

    async def lock_import(self, clinic: str, seconds: int = 120) -> bool:
        """Take the clinic's import lock: False while another import holds it or an EHR
        feed is changing one of its appointments (``hold_appointment``)."""
        return bool(await self.redis.eval(_LOCK_IMPORT, 2, self._import_lock(clinic),
                                          self._feed_holds(clinic), seconds))

    async def unlock_import(self, clinic: str) -> None:
        await self.redis.delete(self._import_lock(clinic))

    # ------------------------------------------------------------- arrivals

    async def release_arrival(self, clinic: str, appointment_id: str, visit_id: str) -> None:
        """Undo ``open_visit``'s claim (the arrival could not be published)."""
        await self._release(keys=[self._arrived(clinic, appointment_id)], args=[visit_id])

    async def reopen_appointment(self, clinic: str, appointment_id: str, visit_id: str) -> None:
        """Undo an arrival entered in error: the appointment waits for its patient again
        (and the no-show sweep watches it again)."""
        await self._release(keys=[self._arrived(clinic, appointment_id)], args=[visit_id])
        appointment = (await self.appointments(clinic, [appointment_id])).get(appointment_id)
        if appointment is not None and appointment.status == "booked":
            await self.redis.zadd(self._pending(clinic),
                                  {appointment_id: appointment.scheduled_at.timestamp()})

    # --------------------------------------------------------------- visits

    @staticmethod
    def _visit_fields(view: VisitView) -> dict[str, str]:
        def opt(value: object) -> str:
            if value is None:
                return ""
            return value.isoformat() if isinstance(value, datetime) else str(value)

        return {
            "clinic_id": view.clinic_id,
            "visit_id": view.visit_id,
            "ticket_code": view.ticket_code,
            "day": view.day.isoformat(),
            "status": view.status,
            "status_at": view.status_at.isoformat(),
            "appointment_id": opt(view.appointment_id),
            "position": opt(view.position),
            "wait_minutes": opt(view.wait_minutes),
            "low": opt(view.low),
            "high": opt(view.high),
            "estimated_at": opt(view.estimated_at),
            "provider_id": opt(view.provider_id),
        }

    @staticmethod
    def _visit_of(fields: dict[str, str]) -> VisitView:
        def number(name: str) -> float | None:
            value = fields.get(name)
            return float(value) if value else None

        position = fields.get("position")
        estimated_at = fields.get("estimated_at")
        return VisitView(
            clinic_id=fields["clinic_id"],
            visit_id=fields["visit_id"],
            ticket_code=fields["ticket_code"],
            day=date.fromisoformat(fields["day"]),
            status=cast(Any, fields["status"]),
            status_at=datetime.fromisoformat(fields["status_at"]),
            appointment_id=_opt(fields.get("appointment_id")),
            position=int(position) if position else None,
            wait_minutes=number("wait_minutes"),
            low=number("low"),
            high=number("high"),
            estimated_at=datetime.fromisoformat(estimated_at) if estimated_at else None,
            provider_id=_opt(fields.get("provider_id")),
        )

    def _queue_visit(self, pipe: Any, view: VisitView) -> None:
        key = self._visit(view.clinic_id, view.visit_id)
        pipe.hset(key, mapping=self._visit_fields(view))
        pipe.expireat(key, self._until(view.day))
        ticket = self._ticket(view.clinic_id, view.day, view.ticket_code)
        pipe.set(ticket, view.visit_id, exat=self._until(view.day))
        day_visits = self._day_visits(view.clinic_id, view.day)
        pipe.zadd(day_visits, {view.visit_id: view.status_at.timestamp()}, nx=True)
        pipe.expireat(day_visits, self._until(view.day))
        number = ticket_number(view.ticket_code)
        if number is not None:
            pipe.eval(_RAISE_TO, 1, self._seq(view.clinic_id, view.day), number,
                      self._until(view.day))

    async def open_visit(self, view: VisitView, *,
                         claim: Appointment | None = None) -> VisitView | str:
        """Save a new visit under the day's next ticket code, in one round trip: the
        visit as given but its ``ticket_code`` (ignored), returned with the code it got.
        With ``claim``, the appointment is first marked arrived as this visit (its one
        arrival, kept until its day is well past): when another visit holds it, nothing is
        saved and that visit's id is returned instead."""
        fields = self._visit_fields(view)
        del fields["ticket_code"]
        keys = [self._seq(view.clinic_id, view.day), self._visit(view.clinic_id, view.visit_id),
                self._day_visits(view.clinic_id, view.day)]
        claim_expires = 0
        if claim is not None:
            keys.append(self._arrived(view.clinic_id, claim.appointment_id))
            claim_expires = int((claim.scheduled_at + KEEP).timestamp())
        args: list[str | int | float] = [
            self._until(view.day), view.visit_id, view.status_at.timestamp(), TICKET_LETTERS,
            TICKETS_PER_LETTER, self._ticket(view.clinic_id, view.day, ""), claim_expires]
        for name, value in fields.items():
            args += (name, value)
        took, got = await self._open_visit(keys=keys, args=args)
        if not int(took):
            return _text(got)
        return replace(view, ticket_code=_text(got))

    async def forget_visit(self, view: VisitView) -> None:
        """Undo ``open_visit`` (its arrival could not be published)."""
        await self._release(keys=[self._ticket(view.clinic_id, view.day, view.ticket_code)],
                            args=[view.visit_id])
        await self.redis.delete(self._visit(view.clinic_id, view.visit_id))
        await self.redis.zrem(self._day_visits(view.clinic_id, view.day), view.visit_id)

    async def visit(self, clinic: str, visit_id: str) -> VisitView | None:
        fields = await self.redis.hgetall(self._visit(clinic, visit_id))
        return self._visit_of(_decode_hash(fields)) if fields else None

    async def day_visits(self, clinic: str, day: date) -> list[VisitView]:
        """The visits of the clinic's ``day`` in the order they arrived (the day's index,
        whatever their ticket codes: the day's ticket counter does not name a demo's
        ``N-12`` or a feed's codes)."""
        ids = await self.redis.zrange(self._day_visits(clinic, day), 0, -1)
        async with self.redis.pipeline(transaction=False) as pipe:
            for visit_id in ids:
                pipe.hgetall(self._visit(clinic, _text(visit_id)))
            found = await pipe.execute()
        return [self._visit_of(_decode_hash(fields)) for fields in found if fields]

    async def visit_for_ticket(self, clinic: str, days: Sequence[date],
                               code: str) -> VisitView | None:
        """The visit holding ``code`` on the first of ``days`` that has it."""
        for day in days:
            visit_id = await self.redis.get(self._ticket(clinic, day, code))
            if visit_id:
                return await self.visit(clinic, _text(visit_id))
        return None

    async def change_visit(self, clinic: str, visit_id: str,
                           change: Callable[[VisitView | None], VisitView]) -> VisitView:
        """Read, change and write one visit atomically (``change`` may raise to refuse)."""
        key = self._visit(clinic, visit_id)
        for _attempt in range(MAX_CONFLICTS):
            try:
                async with self.redis.pipeline(transaction=True) as pipe:
                    await pipe.watch(key)
                    fields = await pipe.hgetall(key)
                    current = self._visit_of(_decode_hash(fields)) if fields else None
                    changed = change(current)
                    pipe.multi()
                    self._queue_visit(pipe, changed)
                    await pipe.execute()
                    return changed
            except WatchError:
                continue
        raise RuntimeError(f"visit {visit_id} kept changing under {MAX_CONFLICTS} attempts")

    # ------------------------------------------------------------- no-shows

    async def clinics(self) -> list[str]:
        return sorted(_text(c) for c in await self.redis.smembers(self._clinics))

    async def pending_until(self, clinic: str, until: datetime) -> list[str]:
        raw = await self.redis.zrangebyscore(self._pending(clinic), "-inf", until.timestamp())
        return [_text(m) for m in raw]

    async def drop_pending(self, clinic: str, ids: Sequence[str]) -> None:
        if ids:
            await self.redis.zrem(self._pending(clinic), *ids)

    async def claim_no_show(self, clinic: str, appointment: Appointment) -> bool:
        expires = int((appointment.scheduled_at + KEEP).timestamp())
        key = self._noshow(clinic, appointment.appointment_id)
        return bool(await self.redis.set(key, "1", nx=True, exat=expires))

    async def release_no_show(self, clinic: str, appointment_id: str) -> None:
        await self.redis.delete(self._noshow(clinic, appointment_id))

    async def record_no_show(self, clinic: str, appointment_id: str, scheduled_at: datetime,
                             day: date) -> None:
        """Put a published no-show on the day's follow-up list."""
        async with self.redis.pipeline(transaction=True) as pipe:
            self._queue_no_show(pipe, clinic, appointment_id, scheduled_at, day)
            pipe.zrem(self._pending(clinic), appointment_id)
            await pipe.execute()

    def _queue_no_show(self, pipe: Any, clinic: str, appointment_id: str,
                       scheduled_at: datetime, day: date) -> None:
        expires = int((scheduled_at + KEEP).timestamp())
        pipe.set(self._noshow(clinic, appointment_id), "1", exat=expires)
        key = self._noshows(clinic, day)
        pipe.zadd(key, {appointment_id: scheduled_at.timestamp()})
        pipe.expireat(key, self._until(day))

    async def no_shows(self, clinic: str, day: date) -> list[tuple[str, datetime]]:
        raw = await self.redis.zrange(self._noshows(clinic, day), 0, -1, withscores=True)
        return [(_text(m), datetime.fromtimestamp(s, UTC)) for m, s in raw]

    # ----------------------------------------------------------- rate limits

    async def count(self, kind: str, client: str, minute: int) -> int:
        """Add one to this minute's counter and return it."""
        key = self._limit(kind, client, minute)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, 120)
            count, _ = await pipe.execute()
        return int(count)

    async def counted(self, kind: str, client: str, minute: int) -> int:
        raw = await self.redis.get(self._limit(kind, client, minute))
        return int(raw) if raw else 0

    # ---------------------------------------------------------- EHR feeds

    def _feed_ack(self, message: str) -> str:
        return f"{self.prefix}:feed:ack:{message}"

    def _feed_at(self, clinic: str, subject: str) -> str:
        return f"{self.prefix}:feed:at:{clinic}:{subject}"

    def _feed_visit(self, clinic: str, ehr_visit: str) -> str:
        return f"{self.prefix}:feed:visit:{clinic}:{ehr_visit}"

    def _feed_holds(self, clinic: str) -> str:
        return f"{self.prefix}:feedholds:{clinic}"

    def _feed_hold(self, clinic: str, appointment_id: str) -> str:
        return f"{self.prefix}:feedhold:{clinic}:{appointment_id}"

    async def feed_state(self, message: str, clinic: str, subject: str,
                         hold: tuple[str, str] | None = None,
                         claim_visit: tuple[str, str, str] | None = None,
                         identity: tuple[Sequence[date], str] | None = None,
                         ) -> FeedState:
        """In one round trip: the ACK already answered to a message (``feed_ack``), the
        own time of the last message applied to its subject (``feed_seen_at``) and, with
        ``hold`` (appointment id, holding message), ``hold_appointment``'s answer, or with
        ``claim_visit`` (an EHR visit, its pending mark, our visit), ``claim_feed_visit``'s;
        with ``identity`` (days, the kiosk check's digest), ``identity_matches``' answer,
        which the message's change would otherwise read in a round trip of its own. (The
        clinic's display names a booking brings are compared in the transaction that
        stores them: ``save_held``.)"""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(self._feed_ack(message))
            pipe.get(self._feed_at(clinic, subject))
            if hold is not None:
                self._queue_hold(pipe, clinic, *hold)
            if claim_visit is not None:
                self._queue_claim_visit(pipe, clinic, *claim_visit)
            if identity is not None:
                for day in identity[0]:
                    pipe.smembers(self._who(clinic, day, identity[1]))
            ack, seen, *more = await pipe.execute()
        if isinstance(ack, str):
            ack = ack.encode()
        state = FeedState(ack or None,
                          datetime.fromtimestamp(float(_text(seen)), UTC) if seen else None)
        if hold is not None:
            state.held, state.stored = self._held(more[:2])
            more = more[2:]
        if claim_visit is not None:
            state.visit_claim = self._claimed(more[:2])
            more = more[2:]
        if identity is not None:
            days = tuple(identity[0])
            state.identity_matches = IdentityMatches(days, identity[1],
                                                     self._matched(more[:len(days)]))
        return state

    def queue_feed_done(self, pipe: Any, message: str, ack: bytes, clinic: str,
                        seen: tuple[str, datetime] | None) -> None:
        """Queue ``feed_done``'s writes in a transaction that stores the change itself
        (a resend finds the change, the ACK and the order mark, or none of them)."""
        pipe.set(self._feed_ack(message), ack, ex=FEED_ACK_KEEP_DAYS * 86400)
        if seen is not None:
            subject, at = seen
            pipe.eval(_LATEST, 1, self._feed_at(clinic, subject), repr(at.timestamp()),
                      KEEP_DAYS * 86400)

    async def feed_done(self, message: str, ack: bytes, clinic: str,
                        seen: tuple[str, datetime] | None) -> None:
        """Keep a message's ACK and, when it was applied, its subject's time (one
        transaction: a resend finds both or neither)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            self.queue_feed_done(pipe, message, ack, clinic, seen)
            await pipe.execute()

    async def hold_appointment(self, clinic: str, appointment_id: str, message: str,
                               ) -> tuple[int, Appointment | None]:
        """An EHR feed message's hold on one appointment while it changes it, and the
        appointment as stored, in one round trip: 1 held (also when this message held it
        already: a resend), 0 not while an import of the clinic runs, -1 not while
        another message holds it. Released by ``save_held``/``release_hold``, else it
        lapses after ``FEED_PENDING_SECONDS``."""
        async with self.redis.pipeline(transaction=False) as pipe:
            self._queue_hold(pipe, clinic, appointment_id, message)
            return self._held(await pipe.execute())

    def _queue_hold(self, pipe: Any, clinic: str, appointment_id: str, message: str) -> None:
        pipe.eval(_HOLD, 3, self._import_lock(clinic), self._feed_holds(clinic),
                  self._feed_hold(clinic, appointment_id), appointment_id,
                  FEED_PENDING_SECONDS, message)
        pipe.hgetall(self._appt(clinic, appointment_id))

    def _held(self, answers: list[Any]) -> tuple[int, Appointment | None]:
        held, fields = answers
        return int(held), self._appointment_of(_decode_hash(fields)) if fields else None

    def _queue_release(self, pipe: Any, clinic: str, appointment_id: str) -> None:
        pipe.zrem(self._feed_holds(clinic), appointment_id)
        pipe.delete(self._feed_hold(clinic, appointment_id))

    async def release_hold(self, clinic: str, appointment_id: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            self._queue_release(pipe, clinic, appointment_id)
            await pipe.execute()

    async def claim_kiosk_code(self, clinic: str, appointment_id: str, day: date,
                               candidates: Sequence[str]) -> str | None:
        """The first of ``candidates`` free on the clinic's ``day`` (or already this
        appointment's), taken for it at once; None when every one is taken."""
        code = await self.redis.eval(_CLAIM_CODE, 1, self._kcodes(clinic, day),
                                     appointment_id, self._until(day), *candidates)
        return _text(code) if code else None

    async def save_held(self, clinic: str, appointments: Sequence[Appointment],
                        previous: dict[str, Appointment], zone: Any,
                        providers: dict[str, str], rooms: dict[str, str],
                        held: str, also: Also | None = None, *, now: datetime,
                        origin: str = "hl7") -> None:
        """Store what a feed message changed (``save_appointments``, the display names,
        the ``directory.named`` of those new or changed, compared in this transaction:
        ``_queue_named``) and release its hold on appointment ``held``, in one
        transaction with what ``also`` queues (the message's ACK)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            # first: its answer (how many names changed) is the first of the EXEC's
            named = self._queue_named(pipe, clinic, providers, rooms, now=now, origin=origin)
            self._queue_appointments(pipe, clinic, appointments, previous, zone)
            self._queue_release(pipe, clinic, held)
            if also is not None:
                also(pipe)
            answers = await pipe.execute()
        if named and int(answers[0]):
            self._names_kick()

    async def feed_ack(self, message: str) -> bytes | None:
        """The ACK already answered to a message (None: not seen, or not settled)."""
        raw = await self.redis.get(self._feed_ack(message))
        return raw if isinstance(raw, bytes) else (raw.encode() if raw else None)

    async def save_feed_ack(self, message: str, ack: bytes) -> None:
        await self.redis.set(self._feed_ack(message), ack, ex=FEED_ACK_KEEP_DAYS * 86400)

    async def feed_seen_at(self, clinic: str, subject: str) -> datetime | None:
        """The own time of the last feed message applied to ``subject``."""
        raw = await self.redis.get(self._feed_at(clinic, subject))
        return datetime.fromtimestamp(float(_text(raw)), UTC) if raw else None

    async def mark_feed_seen(self, clinic: str, subject: str, at: datetime) -> None:
        """Remember ``at`` as the subject's latest message time (never moved back)."""
        await self.redis.eval(_LATEST, 1, self._feed_at(clinic, subject),
                              repr(at.timestamp()), KEEP_DAYS * 86400)

    async def claim_feed_visit(self, clinic: str, ehr_visit: str, pending: str,
                               visit_id: str) -> VisitClaim:
        """Hold an EHR visit while its arrival is published, as ``pending`` (``pending:``
        and the message trying it), and say whether our visit ``visit_id`` (the one that
        message's arrival gets) is stored already (a try of it that died)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            self._queue_claim_visit(pipe, clinic, ehr_visit, pending, visit_id)
            return self._claimed(await pipe.execute())

    def _queue_claim_visit(self, pipe: Any, clinic: str, ehr_visit: str, pending: str,
                           visit_id: str) -> None:
        pipe.eval(_CLAIM_VISIT, 1, self._feed_visit(clinic, ehr_visit), pending,
                  FEED_PENDING_SECONDS)
        pipe.exists(self._visit(clinic, visit_id))

    async def arrival_event_visit(self, clinic: str, event_id: str) -> str | None:
        """The visit of a ``patient.arrived`` event the projection has applied (None: not
        applied, so not on the floor topic up to where the projection has read)."""
        raw = await self.redis.get(self._arrival_event(clinic, event_id))
        return _text(raw) if raw else None

    @staticmethod
    def _claimed(answers: list[Any]) -> VisitClaim:
        holder, tried = answers[-2:]
        return VisitClaim(_text(holder) if holder else None, bool(tried))

    async def feed_visit(self, clinic: str, ehr_visit: str) -> str | None:
        raw = await self.redis.get(self._feed_visit(clinic, ehr_visit))
        return _text(raw) if raw else None

    async def set_feed_visit(self, clinic: str, ehr_visit: str, visit_id: str,
                             also: Also | None = None) -> None:
        """Our visit of an EHR visit, in one transaction with what ``also`` queues."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self._feed_visit(clinic, ehr_visit), visit_id, ex=KEEP_DAYS * 86400)
            if also is not None:
                also(pipe)
            await pipe.execute()

    async def forget_feed_visit(self, clinic: str, ehr_visit: str,
                                cancelled: str | None = None) -> None:
        """Drop our visit of an EHR visit; ``cancelled``: its arrival was cancelled (our
        visit id, kept so a later cancel or end of it says so: ``feed_cancelled``)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._feed_visit(clinic, ehr_visit))
            if cancelled is not None:
                pipe.set(self._feed_visit(clinic, ehr_visit) + ":cancelled", cancelled,
                         ex=KEEP_DAYS * 86400)
            await pipe.execute()

    async def feed_cancelled(self, clinic: str, ehr_visit: str) -> str | None:
        """Our visit of an EHR visit whose arrival was cancelled (None: never)."""
        raw = await self.redis.get(self._feed_visit(clinic, ehr_visit) + ":cancelled")
        return _text(raw) if raw else None

    # --------------------------------------------------------------- outbox

    @property
    def outbox_prefix(self) -> str:
        """Where the outbox lives (``Outbox(redis, store.outbox_prefix)``)."""
        return self.prefix


class VisitProjectionStore:
    """The projection's side of the store (``shared.projection.ProjectionStore``): the
    visits a batch touches, watched and read before it is planned, and the plan's
    changes queued inside the batch's transaction."""

    def __init__(self, store: CheckinStore) -> None:
        self.store = store

    def watched(self, records: Sequence[Inbound]) -> list[str]:
        """The keys of the visits the batch is about (another writer, a cancel at the
        desk say, makes the batch plan again), and of the arrivals its undos name."""
        store = self.store
        return ([store._visit(c, v) for c, v in visit_refs(list(records))]
                + [store._arrival_event(c, e) for c, e in undone_refs(list(records))])

    async def read(self, pipe: Any, records: Sequence[Inbound]) -> ProjectionState:
        """The stored visits among those the batch is about, and the visits of the
        arrival events its undos name (watched too, once known); with an undo or an
        arrival entered in error in the batch, the appointments of those visits and of
        the batch's arrivals (the ones it may free: ``freed_appointments``)."""
        store = self.store
        state = ProjectionState()
        refs = visit_refs(list(records))
        for clinic, event_id in undone_refs(list(records)):
            visit_id = await pipe.get(store._arrival_event(clinic, event_id))
            if visit_id:
                state.arrival_events[(clinic, event_id)] = _text(visit_id)
                ref = (clinic, _text(visit_id))
                if ref not in refs:
                    await pipe.watch(store._visit(*ref))
                    refs.append(ref)
        for ref in refs:
            raw_visit = await pipe.hgetall(store._visit(*ref))
            if raw_visit:
                state.visits[ref] = store._visit_of(_decode_hash(raw_visit))
        freed: dict[str, list[str]] = {}
        for clinic, appointment_id in freed_appointments(list(records), state.visits):
            freed.setdefault(clinic, []).append(appointment_id)
        for clinic, ids in freed.items():  # not watched: the sweep checks them again
            for appointment_id, appointment in (await store.appointments(clinic, ids)).items():
                state.appointments[(clinic, appointment_id)] = appointment
        return state

    def write(self, pipe: Any, changes: CheckinChanges) -> None:
        """Queue the visits, arrival marks and no-show marks (inside the MULTI)."""
        store = self.store
        for view in changes.visits.values():
            store._queue_visit(pipe, view)
        for clinic, event_id, visit_id, day in changes.arrival_events:
            pipe.set(store._arrival_event(clinic, event_id), visit_id, exat=store._until(day))
        for clinic, appointment_id in changes.arrived_off_list:
            pipe.zrem(store._pending(clinic), appointment_id)
        for clinic, appointment_id, visit_id, arrived in changes.arrivals:
            key = store._arrived(clinic, appointment_id)
            if arrived:
                pipe.set(key, visit_id, nx=True, ex=KEEP_DAYS * 86400)
                pipe.zrem(store._pending(clinic), appointment_id)
            else:
                pipe.eval(_RELEASE_IF_OURS, 1, key, visit_id)
                reopened = changes.reopened.get((clinic, appointment_id))
                if reopened is not None:
                    pipe.zadd(store._pending(clinic), {appointment_id: reopened.timestamp()})
        for clinic, appointment_id, scheduled_at, day in changes.no_shows:
            store._queue_no_show(pipe, clinic, appointment_id, scheduled_at, day)
            pipe.zrem(store._pending(clinic), appointment_id)
