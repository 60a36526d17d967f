"""Asking a patient about their visit once it is over: one message per visit, after
checkout, with a link to a one-page form (``feedback_link`` signs it when the message is
sent). Pure: every call takes the time.

Quiet hours (the rule ``quiet_hours``, on the clinic's clock): a checkout read inside
them decides the message at once, with its id, but it is not sent before they end (the
record's first attempt is then; the link is signed when it is sent).

Respected as for delay warnings: the clinic's rule (``feedback_requests``), the patient's
consent (a contact on file) and opt-out, and the age of the trigger (a checkout read long
after it happened, a replay, is not news). At most one per visit: the message's id is the
visit's, whatever checkout (or a checkout undone and done again) asked for it, and the
store refuses a second record with the same id.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from services.notifications.domain.ids import notification_id
from services.notifications.domain.outcome import Message
from services.notifications.domain.rules import (
    Preferences,
    Rules,
    quiet_reason,
    quiet_until,
    stale,
)
from services.notifications.domain.texts import Wording

KIND: Literal["feedback_request"] = "feedback_request"


def feedback_request(clinic_id: str, visit_id: str, ticket_code: str, *, trigger_id: str,
                     at: datetime, wall: datetime, rules: Rules,
                     preference: Preferences) -> tuple[Message | None, str]:
    """The feedback message for a visit checked out at ``at`` (read at ``wall``), or None,
    and the decision's outcome for the metrics (``queued``; ``deferred``: decided inside
    the clinic's quiet hours, it is not sent before they end; ``disabled``, ``stale`` or
    why the patient is not told: ``opted_out``, ``no_contact``)."""
    if not rules.feedback_requests:
        return None, "disabled"
    if not preference.reachable or preference.channel is None:
        return None, quiet_reason(preference)
    if stale(at, wall, rules):
        return None, "stale"
    message = Message(
        notification_id=notification_id(clinic_id, visit_id, KIND, ()),
        visit_id=visit_id, ticket_code=ticket_code, kind=KIND,
        wording=Wording(KIND, ticket_code), trigger_ids=(trigger_id,) if trigger_id else (),
        decided_at=at, channel=preference.channel, not_before=quiet_until(wall, rules))
    return message, "queued" if message.not_before is None else "deferred"
