"""Claims that keep two floor commands from passing the same board check at once.

A command is checked against the clinic's board, then published; the board shows its
event only once flow has applied it. Two commands on one room (two roomings, a rooming
and a "room ready" or "out of service") or one visit (roomed into two rooms) sent at the
same moment both pass the check, both were answered 202, and the floor refused the
later one as a dead letter. So before its check every command that changes a room or a
visit takes a claim on them in Redis, and holds it until its event is on the board:

- room ready, out of service: ``room:{room}``;
- rooming: ``room:{room}`` and ``visit:{visit}``; provider in: ``visit:{visit}``;
- undo (its event may restore any room or visit): the whole clinic (``undo``); it waits
  for every claim held, and every other claim waits for it.

The claims of a clinic are one Redis hash, ``P:flow:claims:{clinic}`` (field: what is
claimed; value: ``{expires ms}|{event id}|{partition:offset once published}|{what}``),
changed only by Lua scripts, so taking several claims is all or nothing. A claim
lapses after ``CLAIM_SECONDS`` (a process that died holding it). A claim found held is
*done* (and may be taken over, after the command is checked against the board read
then) once its event is on the board: it is in the board's undo list, or flow's
checkpoint has passed its offset (read before the board, so the board read has it).
Otherwise the command is refused, 409, naming what holds it.

A rooming or a provider in racing check-in's cancel or billing's checkout of the visit
would be a dead letter if the end came first. Those take the visit's end claim
(``shared/visit_end.py``) before they publish; so a rooming or provider in holds the same
key for the moment of its publish (kind ``roomed`` / ``seen``, ``VISIT_END_HOLD_SECONDS``,
given back once published): a visit whose end is claimed is 409 ``visit_ended``, and a
cancel or checkout during that moment is refused by its own service ("being roomed").
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from services.flow.store import FlowStore
from shared.errors import Conflict
from shared.visit_end import visit_end_key

CLAIM_SECONDS = 10.0
UNDO = "undo"
VISIT_END_HOLD_SECONDS = 10.0  # lapses by itself if a process dies holding it

# KEYS: the clinic's claims; ARGV: the claim's milliseconds, the value after its expiry,
# the command's event id, "all" (an undo: every claim held conflicts) or "some", the
# number of fields, the fields, then the event ids of holders found done (replaceable).
# Returns the conflicting holders (field, value, ...), empty when the claim is taken.
_CLAIM = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local own, mode, n = ARGV[3], ARGV[4], tonumber(ARGV[5])
local replace = {}
for i = 6 + n, #ARGV do replace[ARGV[i]] = true end
local held = redis.call('HGETALL', KEYS[1])
local live = {}
for i = 1, #held, 2 do
  local value = held[i + 1]
  local sep = string.find(value, '|', 1, true)
  if tonumber(string.sub(value, 1, sep - 1)) <= now then
    redis.call('HDEL', KEYS[1], held[i])
  else
    local rest = string.sub(value, sep + 1)
    live[held[i]] = {string.sub(rest, 1, string.find(rest, '|', 1, true) - 1), value}
  end
end
local wanted = {}
if mode == 'all' then
  for field, _ in pairs(live) do wanted[#wanted + 1] = field end
  table.sort(wanted)
else
  for i = 6, 5 + n do wanted[#wanted + 1] = ARGV[i] end
  wanted[#wanted + 1] = 'undo'
end
local conflicts = {}
for _, field in ipairs(wanted) do
  local holder = live[field]
  if holder and holder[1] ~= own and not replace[holder[1]] then
    conflicts[#conflicts + 1] = field
    conflicts[#conflicts + 1] = holder[2]
  end
end
if #conflicts > 0 then return conflicts end
if mode == 'all' then
  for field, holder in pairs(live) do
    if holder[1] ~= own then redis.call('HDEL', KEYS[1], field) end
  end
end
local value = tostring(now + tonumber(ARGV[1])) .. '|' .. ARGV[2]
for i = 6, 5 + n do redis.call('HSET', KEYS[1], ARGV[i], value) end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return {}
"""
# KEYS: the visit's end claim; ARGV: the kind, its milliseconds: nothing when held now,
# else the kind that holds it
_HOLD_END = """
local held = redis.call('GET', KEYS[1])
if held then return held end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
"""
# KEYS: the visit's end claim; ARGV: the kind that must still hold it
_LET_GO_END = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""
# KEYS: the clinic's claims; ARGV: the event id, its "partition:offset" ("" : release)
_STAMP = """
local held = redis.call('HGETALL', KEYS[1])
for i = 1, #held, 2 do
  local value = held[i + 1]
  local a = string.find(value, '|', 1, true)
  local b = string.find(value, '|', a + 1, true)
  local c = string.find(value, '|', b + 1, true)
  if string.sub(value, a + 1, b - 1) == ARGV[1] then
    if ARGV[2] == '' then
      redis.call('HDEL', KEYS[1], held[i])
    else
      redis.call('HSET', KEYS[1], held[i],
                 string.sub(value, 1, b) .. ARGV[2] .. string.sub(value, c))
    end
  end
end
return 0
"""


@dataclass(frozen=True, slots=True)
class Holder:
    """A claim held by another command: the field it holds, its event and what it does."""

    field: str
    event_id: str
    offset: tuple[int, int] | None  # (partition, offset) once published
    what: str

    @classmethod
    def parse(cls, field: str, value: str) -> Holder:
        _expires, event_id, offset, what = value.split("|", 3)
        partition, _, at = offset.partition(":")
        return cls(field, event_id, (int(partition), int(at)) if at else None, what)


@dataclass(frozen=True, slots=True)
class Claim:
    """What a command claims: ``fields`` (``room:r1``, ``visit:v1``, or ``undo`` for the
    whole clinic) and, for a refusal's words, ``what`` it does (``rooming visit v1 into
    r1``)."""

    fields: tuple[str, ...]
    what: str
    # (visit, kind): the visit's end claim held while the command is published
    visit_end: tuple[str, str] | None = None

    @property
    def whole_clinic(self) -> bool:
        return self.fields == (UNDO,)


def room_claim(room_id: str, what: str, visit_id: str | None = None) -> Claim:
    if visit_id is None:
        return Claim((f"room:{room_id}",), what)
    return Claim((f"room:{room_id}", f"visit:{visit_id}"), what, (visit_id, "roomed"))


class FloorClaims:
    """The claims of floor commands (module docstring), in flow's Redis."""

    def __init__(self, redis: Redis, store: FlowStore, floor_topic: str) -> None:
        self.store = store
        self.floor_topic = floor_topic
        self.prefix = store.prefix
        # visit-end claims are keyed by CLINICFLOW_REDIS_PREFIX itself (every service's)
        self.redis_prefix = store.prefix.removesuffix(":flow")
        self._claim = redis.register_script(_CLAIM)
        self._stamp = redis.register_script(_STAMP)
        self._hold_end = redis.register_script(_HOLD_END)
        self._let_go_end = redis.register_script(_LET_GO_END)

    async def hold_visit_end(self, clinic_id: str, claim: Claim) -> None:
        """Hold the visit's end claim for the command's publish (``Claim.visit_end``), or
        refuse it: 409 ``visit_ended`` when a cancel or checkout holds it."""
        if claim.visit_end is None:
            return
        visit_id, kind = claim.visit_end
        held = await self._hold_end(
            keys=[visit_end_key(self.redis_prefix, clinic_id, visit_id)],
            args=[kind, int(VISIT_END_HOLD_SECONDS * 1000)])
        if held is None:
            return
        holder = held.decode() if isinstance(held, bytes) else str(held)
        if holder in ("cancelled", "checked_out"):
            raise Conflict(f"visit {visit_id} is being {holder.replace('_', ' ')} (or already "
                           f"is) at clinic {clinic_id}: {claim.what} no longer applies",
                           code="visit_ended")
        raise Conflict(f"visit {visit_id} is being {holder} right now; try again in a "
                       "moment", code="visit_busy")

    async def let_go_visit_end(self, clinic_id: str, claim: Claim) -> None:
        """Give the visit's end claim back: the command is published (or failed)."""
        if claim.visit_end is not None:
            visit_id, kind = claim.visit_end
            await self._let_go_end(
                keys=[visit_end_key(self.redis_prefix, clinic_id, visit_id)], args=[kind])

    def key(self, clinic_id: str) -> str:
        return f"{self.prefix}:claims:{clinic_id}"

    async def take(self, clinic_id: str, claim: Claim, event_id: str,
                   replacing: tuple[str, ...] = ()) -> list[Holder]:
        """Take the claim for ``event_id``: [] when it is the command's now, else the
        holders in its way (those of ``replacing`` excepted)."""
        raw = await self._claim(
            keys=[self.key(clinic_id)],
            args=[int(CLAIM_SECONDS * 1000), f"{event_id}||{claim.what}", event_id,
                  "all" if claim.whole_clinic else "some", len(claim.fields), *claim.fields,
                  *replacing])
        values = [v.decode() if isinstance(v, bytes) else str(v) for v in raw or []]
        return [Holder.parse(values[i], values[i + 1]) for i in range(0, len(values), 2)]

    async def done(self, holders: list[Holder],
                   read_board: Callable[[], Awaitable[dict[str, Any]]]
                   ) -> tuple[list[Holder], dict[str, Any]]:
        """Which ``holders`` still wait for their event to reach the board, and the board
        read to decide it (after the checkpoint offsets: a board read later than a
        checkpoint shows what the checkpoint covers)."""
        applied: dict[int, int] = {}
        for holder in holders:
            if holder.offset is not None and holder.offset[0] not in applied:
                at = await self.store.applied_offset(self.floor_topic, holder.offset[0])
                applied[holder.offset[0]] = -1 if at is None else at
        board = await read_board()
        on_board = {a["event_id"] for a in board.get("undo", [])}
        pending = [h for h in holders if h.event_id not in on_board
                   and (h.offset is None or applied[h.offset[0]] < h.offset[1])]
        return pending, board

    async def stamp(self, clinic_id: str, event_id: str, partition: int, offset: int) -> None:
        """The command's event is published at ``offset`` of ``partition``."""
        await self._stamp(keys=[self.key(clinic_id)], args=[event_id, f"{partition}:{offset}"])

    async def release(self, clinic_id: str, event_id: str) -> None:
        """Give back the command's claims (refused, or not published)."""
        await self._stamp(keys=[self.key(clinic_id)], args=[event_id, ""])


def refusal(clinic_id: str, claim: Claim, holder: Holder, board: dict[str, Any]) -> Conflict:
    """The 409 for a command whose claim ``holder`` holds, in the words of the thing held."""
    kind, _, name = holder.field.partition(":")
    if holder.field == UNDO:
        return Conflict(f"an undo is being applied at clinic {clinic_id} right now (event "
                        f"{holder.event_id}); try again in a moment", code="undo_in_progress")
    if claim.whole_clinic:
        return Conflict(f"{holder.what} is being applied at clinic {clinic_id} right now "
                        f"(event {holder.event_id}); undo again in a moment",
                        code="floor_busy")
    if kind == "room" and holder.what.startswith("rooming"):
        visit = holder.what.split()[2]
        waiting = next((w for w in board.get("waiting", []) if w["visit_id"] == visit), None)
        patient = f" (patient {waiting['ticket_code']})" if waiting else ""
        return Conflict(f"room {name} is being given to visit {visit}{patient} right now; "
                        "choose another room", code="room_occupied")
    if kind == "room":
        return Conflict(f"room {name} is being changed right now ({holder.what}); try again "
                        "in a moment", code="room_busy")
    return Conflict(f"visit {name} is being changed right now ({holder.what}); try again in "
                    "a moment", code="visit_busy")
