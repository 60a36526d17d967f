"""The rules a clinic sets for contacting people, and what each patient agreed to. Pure.

``Rules`` are one clinic's thresholds (``CLINICFLOW_NOTIFICATIONS_RULES``, read into a
``RuleBook``); ``Preferences`` are what the front desk recorded for a visit, without the
contact details themselves; ``backoff_seconds`` is how long to wait before trying a
channel again; ``contact_expiry``, ``contact_hold`` and ``contact_deleted_at`` say when
contact details are deleted: at the clinic's midnight, or later only while a message
deferred past it still waits to be sent to them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

PatientChannel = Literal["email", "sms", "log"]


class Rules(BaseModel):
    """One clinic's notification rules. Defaults suit a typical outpatient clinic."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    delay_warnings: bool = Field(True, description="warn waiting patients of delays")
    warn_after_growth_minutes: float = Field(
        15, ge=1, le=240,
        description="warn when the expected call time moved this much later than last told")
    announce_delays_from_minutes: int = Field(
        10, ge=1, le=600, description="announced delays shorter than this are not sent")
    min_minutes_between_messages: float = Field(
        20, ge=0, le=600, description="at most one delay warning per patient per window")
    wait_anywhere: bool = Field(True, description="'come back now' / 'we are ready for you'")
    come_back_lead_minutes: float = Field(
        15, ge=1, le=180, description="call back when the low end of the range reaches this")
    nurse_alerts: bool = Field(True, description="room-ready alerts to the nurse station")
    feedback_requests: bool = Field(True, description="after checkout, one message asking "
                                    "how the visit and the wait were (a signed form link)")
    quiet_hours: str | None = Field(
        "21:00-08:00", description="HH:MM-HH:MM on the clinic's clock (its zone, DST "
        "included): no delay warning is sent inside it and a feedback request waits for "
        "its end; 'come back now' and 'we are ready for you' are not held (the patient is "
        "at the clinic). null or '': none")
    patients_roomed_per_provider: int = Field(
        2, ge=1, le=10, description="a provider with this many patients roomed and waiting "
        "for them is not offered another room")
    settle_seconds: float = Field(
        5, ge=0, le=120, description="how long a warning waits for the rest of the story")
    max_message_age_minutes: float = Field(
        30, ge=1, le=1440, description="triggers older than this are not sent (replays)")
    # the clinic's names and zone belong in CLINICFLOW_CLINICS (shared/clinics.py): these
    # older rules only fill in what it leaves unsaid (texts.NameBook)
    clinic_name: str = Field("", max_length=60, description="older: the clinic's name in "
                             "messages when CLINICFLOW_CLINICS gives none")
    provider_names: dict[str, str] = Field(
        default_factory=dict, description='older: display names CLINICFLOW_CLINICS does not '
        'give, e.g. {"dr-lee": "Dr. Lee"}')
    timezone: str | None = Field(None, description="older: the clinic's zone when "
                                 "CLINICFLOW_CLINICS gives none (unset: "
                                 "CLINICFLOW_DEFAULT_TIMEZONE)")

    @field_validator("quiet_hours")
    @classmethod
    def _quiet_window(cls, value: str | None) -> str | None:
        if not value:
            return None
        parse_quiet_hours(value)
        return value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value


class RuleBook(BaseModel):
    """Default rules plus per-clinic overrides (``CLINICFLOW_NOTIFICATIONS_RULES``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    default: Rules = Field(default_factory=Rules)
    clinics: dict[str, Rules] = Field(default_factory=dict)

    @classmethod
    def parse(cls, document: dict[str, Any]) -> RuleBook:
        """Build from ``{"default": {...}, "clinics": {"north": {...}}}``; a clinic's
        overrides are merged over the defaults. Raises ``ValueError`` naming the bad rule."""
        try:
            base = Rules.model_validate(document.get("default", {}))
            unknown = set(document) - {"default", "clinics"}
            if unknown:
                raise ValueError(f"unknown keys {sorted(unknown)} (use 'default' and 'clinics')")
            clinics = {}
            for clinic_id, override in (document.get("clinics") or {}).items():
                merged = {**base.model_dump(), **override}
                if "provider_names" in override:
                    merged["provider_names"] = {**base.provider_names,
                                                **override["provider_names"]}
                try:
                    clinics[clinic_id] = Rules.model_validate(merged)
                except ValidationError as exc:
                    raise ValueError(f"clinics.{clinic_id}.{_first_error(exc)}") from None
            return cls(default=base, clinics=clinics)
        except ValidationError as exc:
            raise ValueError(f"default.{_first_error(exc)}") from None

    def for_clinic(self, clinic_id: str) -> Rules:
        return self.clinics.get(clinic_id, self.default)


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(p) for p in error["loc"]) or "(root)"
    return f"{where}: {error['msg']}"


@dataclass(frozen=True, slots=True)
class Preferences:
    """What the front desk recorded for a visit, minus the contact details themselves."""

    channel: PatientChannel | None = None  # None: no contact on file
    delay_updates: bool = True
    wait_anywhere: bool = False
    opted_out: bool = False

    @property
    def reachable(self) -> bool:
        return self.channel is not None and not self.opted_out

    def to_dict(self) -> dict[str, Any]:
        return {"channel": self.channel, "delay_updates": self.delay_updates,
                "wait_anywhere": self.wait_anywhere, "opted_out": self.opted_out}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preferences:
        return cls(data.get("channel"), bool(data.get("delay_updates", True)),
                   bool(data.get("wait_anywhere", False)), bool(data.get("opted_out", False)))


NO_CONTACT = Preferences()


def parse_quiet_hours(value: str) -> tuple[time, time]:
    """``"21:00-08:00"`` -> (21:00, 08:00). Raises ``ValueError`` saying what is wrong."""
    start, sep, end = value.partition("-")
    try:
        if not sep:
            raise ValueError
        first, last = time.fromisoformat(start.strip()), time.fromisoformat(end.strip())
    except ValueError:
        raise ValueError(f"quiet hours {value!r} are not HH:MM-HH:MM") from None
    if first == last:
        raise ValueError(f"quiet hours {value!r} start and end at the same time")
    return first.replace(second=0, microsecond=0), last.replace(second=0, microsecond=0)


def quiet_until(now: datetime, rules: Rules) -> datetime | None:
    """When the clinic's quiet hours that ``now`` falls in end (UTC), or None outside them
    (or with none set). The window is read on the clinic's wall clock (``rules.timezone``,
    which the plan fills with the clinic's zone; unset: UTC): 21:00-08:00 is from 21:00
    to the next 08:00 local, whatever the UTC offset does in between (a DST night is an
    hour longer or shorter). The start is inside, the end is not."""
    if not rules.quiet_hours:
        return None
    start, end = parse_quiet_hours(rules.quiet_hours)
    zone = ZoneInfo(rules.timezone) if rules.timezone else ZoneInfo("UTC")
    local = now.astimezone(zone)
    clock = local.time().replace(tzinfo=None)
    day = local.date()
    if start < end:  # within one day, e.g. 12:00-14:00
        inside, end_day = start <= clock < end, day
    elif clock >= start:  # across midnight, the evening part
        inside, end_day = True, day + timedelta(days=1)
    else:  # across midnight, the morning part
        inside, end_day = clock < end, day
    if not inside:
        return None
    return datetime.combine(end_day, end, zone).astimezone(UTC)


def quiet_reason(preference: Preferences) -> str:
    """Why a patient is not told (a decision's outcome in the metrics)."""
    if preference.opted_out:
        return "opted_out"
    if preference.channel is None:
        return "no_contact"
    return "declined"  # has a contact, but not for this kind of message


def stale(at: datetime, wall: datetime, rules: Rules) -> bool:
    """A trigger made at ``at`` and read at ``wall`` is too old to be news (a replay)."""
    return wall - at > timedelta(minutes=rules.max_message_age_minutes)


def backoff_seconds(attempt: int, base: float, cap: float) -> float:
    """Wait before retry number ``attempt`` (1-based): base, 2x, 4x, ... up to ``cap``."""
    return float(min(cap, base * (2 ** max(0, attempt - 1))))


def contact_expiry(now: datetime, timezone: str | ZoneInfo) -> datetime:
    """When contact details entered at ``now`` are deleted: the clinic's next local
    midnight (in its zone), and never sooner than an hour (a late patient keeps theirs
    for the visit)."""
    zone = timezone if isinstance(timezone, ZoneInfo) else ZoneInfo(timezone)
    local = now.astimezone(zone)
    midnight = datetime.combine(local.date() + timedelta(days=1), datetime.min.time(), zone)
    an_hour = now + timedelta(hours=1)
    if an_hour.microsecond:  # whole seconds, as stored: a repeat answers the same instant
        an_hour = an_hour.replace(microsecond=0) + timedelta(seconds=1)
    return max(midnight.astimezone(UTC), an_hour)


# what a deferred message's hold adds to the time its sends and retries can take: a sender
# that stopped is noticed and its claim recovered, an instance restarts, the tick comes round
CONTACT_HOLD_MARGIN = timedelta(hours=1)


def retry_span(max_attempts: int, retry_base: float, retry_max: float,
               send_timeout: float) -> timedelta:
    """The longest the sender can take over one message, from its first attempt to its
    last: every attempt up to its send timeout and the backoff before each retry
    (``backoff_seconds``: ``CLINICFLOW_NOTIFICATIONS_MAX_ATTEMPTS``, ``_RETRY_BASE_SECONDS``,
    ``_RETRY_MAX_SECONDS``, ``_SEND_TIMEOUT_SECONDS``)."""
    waits = sum(backoff_seconds(attempt, retry_base, retry_max)
                for attempt in range(1, max_attempts))
    return timedelta(seconds=max_attempts * send_timeout + waits)


def hold_span(max_attempts: int = 5, retry_base: float = 2.0, retry_max: float = 300.0,
              send_timeout: float = 10.0) -> timedelta:
    """How long after its due time a deferred message keeps its patient's contact: its
    whole retry schedule (``retry_span``, the sender's settings: the defaults are the
    settings' defaults) plus ``CONTACT_HOLD_MARGIN``, so that its last retry still finds
    the contact."""
    return retry_span(max_attempts, retry_base, retry_max, send_timeout) + CONTACT_HOLD_MARGIN


def contact_hold(due_at: datetime, span: timedelta) -> datetime:
    """Until when a message deferred to ``due_at`` (a feedback request held to the end of
    quiet hours) keeps the contact it is to go to: ``span`` (``hold_span``) after it is
    due, in whole seconds. A bound, not a promise: the hold ends sooner, when the message
    is sent, fails or is cancelled (``contact_deleted_at``)."""
    until = due_at + span
    if until.microsecond:
        until = until.replace(microsecond=0) + timedelta(seconds=1)
    return until.astimezone(UTC)


def contact_deleted_at(expires_at: datetime, holds: Iterable[datetime]) -> datetime:
    """When a contact may be deleted: its own expiry (``contact_expiry``: the clinic's
    midnight), or, while messages deferred past it are still pending, the latest of their
    holds (``contact_hold``). ``holds`` are those of the messages still pending only: once
    the last one is sent, failed or cancelled, a contact past its own expiry is deleted at
    once. (store.py's Lua applies this same rule to the holds it keeps on the contact.)"""
    return max((expires_at, *holds))
