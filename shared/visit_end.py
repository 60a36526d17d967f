"""One end per visit: the claim a cancel and a checkout race for (Redis).

Check-in's cancel and billing's checkout each check the floor and then publish, so a
checkout racing a cancel of the same visit could charge a cancelled visit (or cancel a
visit already charged). Whoever ends a visit first takes its *visit-end claim*, an
atomic ``SET NX`` of ``{prefix}:visit-end:{clinic}:{visit}`` holding the kind of end,
*before* publishing; the other finds the claim and refuses (409 naming the visit).

Flow holds the same key for the moment it publishes a rooming or a provider in (kind
``roomed`` / ``seen``, given back once published: services/flow/commands.py), so a
cancel or checkout in that moment finds that kind and is refused too.

``prefix`` is ``CLINICFLOW_REDIS_PREFIX`` itself (``settings.redis_prefix``, default
``cf``), not a service's own key prefix: every service sharing a Redis sees the same
key. A command whose publish fails gives its claim back (``release``), so a retry or
the other command may end the visit. Claims live ``TTL_SECONDS`` (longer than any clinic
day), then the floor's own state is the only guard left.

How each side calls it (``ends = VisitEnds(runtime.redis, settings.redis_prefix)``)::

    held = await ends.claim(clinic_id, visit_id, "checked_out")  # billing's checkout
    if held is not None:   # "cancelled": check-in cancelled it first
        raise Conflict(f"visit {visit_id!r} was cancelled at check-in: it cannot be "
                       "checked out", "visit_ended")
    try:
        ...publish patient.checked_out...
    except BaseException:
        await ends.release(clinic_id, visit_id, "checked_out")
        raise
"""

from __future__ import annotations

from typing import Literal, cast

from redis.asyncio import Redis

VisitEndKind = Literal["cancelled", "checked_out"]  # the ends; flow's holds: roomed, seen
TTL_SECONDS = 3 * 24 * 60 * 60

# KEYS[1] the claim; ARGV[1] the kind, ARGV[2] its lifetime: nil when taken (or already
# held by the same kind: a retry of the same command), else the kind that holds it
_CLAIM = """
local held = redis.call('GET', KEYS[1])
if not held then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return false
end
if held == ARGV[1] then return false end
return held
"""
# KEYS[1] the claim; ARGV[1] the kind: deleted only when that kind holds it
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def visit_end_key(prefix: str, clinic_id: str, visit_id: str) -> str:
    """The Redis key of a visit's end claim (``prefix``: ``CLINICFLOW_REDIS_PREFIX``)."""
    return f"{prefix}:visit-end:{clinic_id}:{visit_id}"


class VisitEnds:
    """The visit-end claims in one Redis (see the module's docstring)."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix

    async def claim(self, clinic_id: str, visit_id: str, kind: VisitEndKind) -> str | None:
        """Take the visit's end for ``kind``. None: it is this kind's now (taken, or
        already held by the same kind); else the kind of end that holds it."""
        held = await self._redis.eval(  # type: ignore[misc]
            _CLAIM, 1, visit_end_key(self._prefix, clinic_id, visit_id), kind,
            TTL_SECONDS)
        if not held:
            return None
        return held.decode() if isinstance(held, bytes) else cast(str, held)

    async def release(self, clinic_id: str, visit_id: str, kind: VisitEndKind) -> None:
        """Give the claim back (the command's publish failed); only ``kind``'s own."""
        await self._redis.eval(  # type: ignore[misc]
            _RELEASE, 1, visit_end_key(self._prefix, clinic_id, visit_id), kind)

    async def holder(self, clinic_id: str, visit_id: str) -> str | None:
        """The kind of end that holds the visit's claim, if any."""
        held = await self._redis.get(visit_end_key(self._prefix, clinic_id, visit_id))
        return held.decode() if isinstance(held, bytes) else held
