"""What the notifier asks the adapters to do after an event or a tick. Pure data."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from services.notifications.domain.alerts import Alert, WithdrawReason
from services.notifications.domain.notes import PatientKind
from services.notifications.domain.rules import PatientChannel
from services.notifications.domain.texts import Wording


@dataclass(frozen=True, slots=True)
class Message:
    """A patient message to queue: who (by visit), what (its ``wording``), and why."""

    notification_id: str
    visit_id: str
    ticket_code: str
    kind: PatientKind
    wording: Wording  # ids and numbers; made into words when sent or shown (texts.render)
    trigger_ids: tuple[str, ...]
    decided_at: datetime
    channel: PatientChannel
    not_before: datetime | None = None  # deferred: not sent before (quiet hours' end)


@dataclass(slots=True)
class Outcome:
    """What one event (or tick) asks the adapters to do."""

    messages: list[Message] = field(default_factory=list)
    raised: list[tuple[Alert, bool]] = field(default_factory=list)  # (alert, page the pager)
    withdrawn: list[tuple[Alert, WithdrawReason, bool]] = field(default_factory=list)
    cancelled: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)  # visit, ids
    decisions: list[tuple[str, str]] = field(default_factory=list)  # (kind, outcome): metrics

    def extend(self, other: Outcome) -> None:
        self.messages.extend(other.messages)
        self.raised.extend(other.raised)
        self.withdrawn.extend(other.withdrawn)
        self.cancelled.extend(other.cancelled)
        self.decisions.extend(other.decisions)
