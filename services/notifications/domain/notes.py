"""What the notifier remembers about one waiting patient: flow's latest estimate, what
they were last told, the warning waiting to go out, and the messages decided for them.
Plain data and its snapshot form (JSON-ready lists and dictionaries). Pure."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

PatientKind = Literal["delay_warning", "come_back_now", "ready_for_you", "feedback_request"]


@dataclass(slots=True)
class WaitQuote:
    """A wait as flow estimated it: minutes from ``at`` until roomed, its 80% range, and
    the patient's place in the queue."""

    at: datetime
    wait: float
    low: float
    high: float
    position: int = 0

    def expected_call(self) -> datetime:
        return self.at + timedelta(minutes=self.wait)

    def aged(self, now: datetime) -> WaitQuote:
        """The same quote seen from ``now``: the clock ran down since it was made."""
        gone = max(0.0, (now - self.at).total_seconds() / 60.0)
        return WaitQuote(now, max(0.0, self.wait - gone), max(0.0, self.low - gone),
                         max(0.0, self.high - gone), self.position)

    def to_list(self) -> list[Any]:
        return [self.at.isoformat(), self.wait, self.low, self.high, self.position]

    @classmethod
    def from_list(cls, values: list[Any] | None) -> WaitQuote | None:
        if values is None:
            return None
        at, wait, low, high, position = values
        return cls(datetime.fromisoformat(at), wait, low, high, position)


@dataclass(slots=True)
class PendingWarning:
    """A delay warning waiting to go out (settling, or held by the rate limit)."""

    reason: Literal["delay", "estimate"]
    trigger_ids: tuple[str, ...]
    armed_at: datetime
    due_at: datetime
    expires_at: datetime
    delay_minutes: int = 0
    delay_provider: str | None = None  # whose delay (None: the clinic's)
    fresh: bool = False  # flow's estimate made after the delay has arrived

    def to_dict(self) -> dict[str, Any]:
        return {"reason": self.reason, "triggers": list(self.trigger_ids),
                "armed_at": self.armed_at.isoformat(), "due_at": self.due_at.isoformat(),
                "expires_at": self.expires_at.isoformat(),
                "delay_minutes": self.delay_minutes, "delay_provider": self.delay_provider,
                "fresh": self.fresh}

    @classmethod
    def from_dict(cls, p: dict[str, Any]) -> PendingWarning:
        return cls(p["reason"], tuple(p["triggers"]), datetime.fromisoformat(p["armed_at"]),
                   datetime.fromisoformat(p["due_at"]), datetime.fromisoformat(p["expires_at"]),
                   p["delay_minutes"], p["delay_provider"], p["fresh"])


@dataclass(slots=True)
class PatientNotes:
    """What the notifier remembers about one waiting patient."""

    visit_id: str
    ticket_code: str
    provider_id: str | None
    told: WaitQuote | None = None
    estimate: WaitQuote | None = None
    last_message_at: datetime | None = None
    pending: PendingWarning | None = None
    come_back_sent: bool = False
    ready_sent: bool = False
    intents: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "visit_id": self.visit_id, "ticket_code": self.ticket_code,
            "provider_id": self.provider_id,
            "told": None if self.told is None else self.told.to_list(),
            "estimate": None if self.estimate is None else self.estimate.to_list(),
            "last_message_at": _text(self.last_message_at),
            "come_back_sent": self.come_back_sent, "ready_sent": self.ready_sent,
            "intents": self.intents,
            "pending": None if self.pending is None else self.pending.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PatientNotes:
        pending = None if d["pending"] is None else PendingWarning.from_dict(d["pending"])
        return cls(d["visit_id"], d["ticket_code"], d["provider_id"],
                   WaitQuote.from_list(d["told"]), WaitQuote.from_list(d["estimate"]),
                   _time(d["last_message_at"]), pending, d["come_back_sent"], d["ready_sent"],
                   list(d["intents"]))


def _text(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)
