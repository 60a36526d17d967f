"""Patients' answers to the feedback form: the one place that knows their Redis keys.

Keys (``P`` is ``CLINICFLOW_REDIS_PREFIX``)::

    P:notifications:feedback:{clinic}:{visit}   HASH rating, wait, text (the patient's free
                                                text, possibly health information: only
                                                here, never on an event, a log line or a
                                                screen), given_at; its existence is what
                                                makes a link single-use; EXPIRE the
                                                retention (``notifications_feedback_
                                                retention_days``)

An answer is taken once, atomically (one Lua call): the hash is written only if absent,
and the ``feedback.given`` event (rating, wait answer, whether text was given) is queued
on the service's outbox in the same call.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from redis.asyncio import Redis

from services.notifications.domain.ids import digest
from shared import events as ev
from shared.events_notifications import FeedbackGiven
from shared.outbox import Outbox, outbox_entry

WaitAnswer = Literal["about_right", "longer", "shorter"]

# KEYS[1] the answer's hash, KEYS[2] the outbox; ARGV: ttl seconds, outbox entry, then
# field/value pairs. Returns 1 when taken, 0 when an answer was already there.
_TAKE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('RPUSH', KEYS[2], ARGV[2])
return 1
"""


@dataclass(frozen=True, slots=True)
class Answer:
    """What a patient answered about one visit."""

    rating: int
    wait: WaitAnswer
    text: str  # "" when none was written


class FeedbackStore:
    """The answers, one per visit, and whether a visit's link was used."""

    def __init__(self, redis: Redis, prefix: str, outbox: Outbox, *,
                 retention_days: int) -> None:
        self.redis = redis
        self.prefix = prefix
        self.outbox = outbox
        self.retention_seconds = retention_days * 86_400
        self._take = redis.register_script(_TAKE)

    def _key(self, clinic_id: str, visit_id: str) -> str:
        return f"{self.prefix}:notifications:feedback:{clinic_id}:{visit_id}"

    async def given(self, clinic_id: str, visit_id: str) -> bool:
        """Whether the visit's feedback was already given (its link is used)."""
        return bool(await self.redis.exists(self._key(clinic_id, visit_id)))

    async def text(self, clinic_id: str, visit_id: str) -> str:
        """The free text a patient wrote about a visit ("" when none): for the manager's
        view of the complaint their low rating raised, nowhere else."""
        found = await self.redis.hget(self._key(clinic_id, visit_id), "text")
        return found.decode() if isinstance(found, bytes) else (found or "")

    async def take(self, clinic_id: str, visit_id: str, answer: Answer,
                   at: datetime) -> bool:
        """Keep the answer and queue ``feedback.given``, once per visit: False (nothing
        written) when the visit's feedback was already given."""
        event = ev.make_event(
            FeedbackGiven(visit_id=visit_id, rating=answer.rating, wait=answer.wait,
                          text_given=bool(answer.text)),
            clinic_id=clinic_id, source="notifications", occurred_at=at,
            correlation_id=visit_id, event_id="fb-" + digest(clinic_id, visit_id))
        entry = outbox_entry("notifications", clinic_id, ev.encode(event))
        fields = ["rating", str(answer.rating), "wait", answer.wait, "text", answer.text,
                  "given_at", at.isoformat()]
        taken = await self._take(keys=[self._key(clinic_id, visit_id), self.outbox.key],
                                 args=[self.retention_seconds, entry, *fields])
        return bool(taken)
