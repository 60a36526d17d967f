"""The event envelope and every event clinicflow publishes, versioned.

Events are plain JSON, readable by any Kafka client (kcat too)::

    {
      "event_id": "0b6c...",             unique, used for de-duplication
      "event_type": "patient.arrived",   stable name, never a Python class path
      "schema_version": 1,               bumped on a breaking change (with an upcaster)
      "occurred_at": "2026-03-02T13:14:00Z",   UTC
      "clinic_id": "north",              the Kafka key of floor events
      "correlation_id": "v-7f3a...",     follows one visit through every service
      "source": "checkin",               the service that published it
      "data": {...}                      the payload model for (event_type, schema_version)
    }

Rules (style.md, conventions 2-3): one model per fact, past tense; adding an
optional field keeps the version; changing a field's meaning is a new version
plus an upcaster in ``UPCASTERS``. Consumers ignore fields they do not know.
No names, birth dates or phone numbers: patients appear only as pseudonymous
``patient_ref`` values and visits as ``visit_id`` / ``ticket_code``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator

Priority = Literal["routine", "urgent"]
CancelReason = Literal["left_without_being_seen", "cancelled", "rescheduled", "entered_in_error"]
Money = int  # integer cents, always

_ID = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"


class Payload(BaseModel):
    """Base of every event payload: unknown fields are ignored, values are frozen."""

    model_config = ConfigDict(extra="ignore", frozen=True)


# --------------------------------------------------------------------- floor


class AppointmentScheduled(Payload):
    """An appointment on today's schedule (imported by checkin). Re-imports are updates."""

    appointment_id: str = Field(pattern=_ID)
    patient_ref: str = Field(pattern=_ID, description="pseudonymous patient reference")
    provider_id: str = Field(pattern=_ID)
    visit_type: str = Field(min_length=1, max_length=40)
    scheduled_at: AwareDatetime
    duration_minutes: int | None = Field(default=None, ge=1, le=480)
    status: Literal["booked", "cancelled"] = "booked"


class PatientArrived(Payload):
    """A patient checked in (scheduled or walk-in) and is waiting."""

    visit_id: str = Field(pattern=_ID)
    ticket_code: str = Field(pattern=r"^[A-Z]-?[0-9]{1,4}$")
    patient_ref: str | None = Field(default=None, pattern=_ID)
    appointment_id: str | None = Field(default=None, pattern=_ID)
    provider_id: str | None = Field(default=None, pattern=_ID, description="null: first available")
    visit_type: str = Field(min_length=1, max_length=40)
    scheduled_at: AwareDatetime | None = Field(default=None, description="null for a walk-in")
    priority: Priority = "routine"
    late: bool = False


class ArrivalCancelled(Payload):
    """A waiting patient left, was cancelled, or the arrival was entered in error."""

    visit_id: str = Field(pattern=_ID)
    reason: CancelReason = "cancelled"


class PatientNoShow(Payload):
    """No arrival within the configured time after the appointment."""

    appointment_id: str = Field(pattern=_ID)
    provider_id: str = Field(pattern=_ID)
    scheduled_at: AwareDatetime


class RoomReady(Payload):
    """A room is clean and can take the next patient."""

    room_id: str = Field(pattern=_ID)


class RoomOutOfService(Payload):
    """A room cannot be used until it is marked ready again."""

    room_id: str = Field(pattern=_ID)
    reason: str = Field(default="", max_length=200)


class PatientRoomed(Payload):
    """A patient was called from the waiting room into a room: the wait ends."""

    visit_id: str = Field(pattern=_ID)
    room_id: str = Field(pattern=_ID)


class ProviderIn(Payload):
    """The provider started seeing the patient."""

    visit_id: str = Field(pattern=_ID)
    provider_id: str | None = Field(default=None, pattern=_ID)


class DelayAnnounced(Payload):
    """A provider (or the whole clinic, ``provider_id`` null) runs late. 0 minutes clears."""

    provider_id: str | None = Field(default=None, pattern=_ID)
    minutes: int = Field(ge=0, le=600)
    reason: str = Field(default="", max_length=200)


class DelayCleared(Payload):
    """A delay is over."""

    provider_id: str | None = Field(default=None, pattern=_ID)


class PatientCheckedOut(Payload):
    """The visit is finished; its room needs cleaning. Published by billing's checkout desk."""

    visit_id: str = Field(pattern=_ID)
    cpt_codes: list[str] = Field(default_factory=list)
    icd10_codes: list[str] = Field(default_factory=list)


class ActionUndone(Payload):
    """Corrects a mistaken floor action (wrong patient roomed, early checkout).

    History is never rewritten: this event names the event it reverses.
    """

    undone_event_id: str = Field(min_length=1, max_length=64)
    reason: str = Field(default="", max_length=200)


# --------------------------------------------------------------- estimates


class WaitEstimated(Payload):
    """Flow's estimate for one waiting visit: minutes until roomed and an 80% interval."""

    visit_id: str = Field(pattern=_ID)
    ticket_code: str
    provider_id: str | None = None
    position: int = Field(ge=1)
    wait_minutes: float = Field(ge=0)
    low: float = Field(ge=0)
    high: float = Field(ge=0)


# ---------------------------------------------------------------------- told

ToldChannel = Literal["kiosk", "status", "tv", "sms", "email", "next", "log"]


class WaitTold(Payload):
    """What one patient was told about their wait, where and when (``occurred_at``): the
    range and the point it was read from. Scored against the truth when the visit is
    roomed (notifications' accuracy projection). Visit ids and ticket codes only.

    ``channel``: kiosk (the check-in answer), status (a status lookup), tv (the waiting
    room screen), sms / email (a delay warning), next ("please come back now": you're
    next), log (a delay warning on development's log channel). ``reference_minutes``: the
    rolling average of recent waits shown at that moment, when the teller knew it."""

    visit_id: str = Field(pattern=_ID)
    ticket_code: str | None = Field(default=None, pattern=r"^[A-Z]-?[0-9]{1,4}$")
    channel: ToldChannel
    low: float = Field(ge=0, le=1440)
    high: float = Field(ge=0, le=1440)
    wait_minutes: float = Field(ge=0, le=1440, description="the point estimate")
    provider_id: str | None = Field(default=None, pattern=_ID, description="null: unknown "
                                    "or first available")
    reference_minutes: float | None = Field(default=None, ge=0, le=1440)


# ----------------------------------------------------------------- directory

DirectoryKind = Literal["provider", "room"]


class DirectoryNamed(Payload):
    """A clinic's provider or room and the display name its people know it by, as an
    import or an EHR feed brought it (published by checkin when the name is new or
    changed). Staff and place names only, never a patient's. ``origin``: where checkin
    learned it (fhir: a Practitioner / Location or a participant's display; hl7: an
    AIP / AIL segment)."""

    kind: DirectoryKind
    id: str = Field(pattern=_ID, description="the provider_id or room_id events carry")
    display: str = Field(min_length=1, max_length=80, description="how staff and patients "
                         "call it (FHIR's display), e.g. \"Dr. Ada Lee\", \"Exam 5\"")
    origin: Literal["fhir", "hl7", "csv", "desk"] = "fhir"


# ----------------------------------------------------------------- envelope


class Envelope(BaseModel):
    """The one envelope around every event; ``data`` is validated per event type."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    event_id: str = Field(default_factory=lambda: uuid.uuid4().hex, min_length=1, max_length=64)
    event_type: str = Field(min_length=1, max_length=64)
    schema_version: int = Field(default=1, ge=1)
    occurred_at: AwareDatetime = Field(default_factory=lambda: datetime.now(UTC))
    clinic_id: str = Field(pattern=_ID)
    correlation_id: str | None = Field(default=None, max_length=64)
    source: str = Field(min_length=1, max_length=40)
    data: dict[str, Any]

    @field_validator("occurred_at")
    @classmethod
    def _to_utc(cls, value: datetime) -> datetime:
        return value.astimezone(UTC)


# (event_type, schema_version) -> payload model
EVENT_TYPES: dict[tuple[str, int], type[Payload]] = {
    ("appointment.scheduled", 1): AppointmentScheduled,
    ("patient.arrived", 1): PatientArrived,
    ("arrival.cancelled", 1): ArrivalCancelled,
    ("patient.no_show", 1): PatientNoShow,
    ("room.ready", 1): RoomReady,
    ("room.out_of_service", 1): RoomOutOfService,
    ("patient.roomed", 1): PatientRoomed,
    ("provider.in", 1): ProviderIn,
    ("delay.announced", 1): DelayAnnounced,
    ("delay.cleared", 1): DelayCleared,
    ("patient.checked_out", 1): PatientCheckedOut,
    ("action.undone", 1): ActionUndone,
    ("wait.estimated", 1): WaitEstimated,
    ("wait.told", 1): WaitTold,
    ("directory.named", 1): DirectoryNamed,
}
EVENT_TYPE_OF: dict[type[Payload], tuple[str, int]] = {v: k for k, v in EVENT_TYPES.items()}

# (event_type, old_version) -> function turning old data into the next version's data.
# Empty today: every type is at version 1. A breaking change adds an entry here.
UPCASTERS: dict[tuple[str, int], Callable[[dict[str, Any]], dict[str, Any]]] = {}


def register_event(event_type: str, version: int) -> Callable[[type[Payload]], type[Payload]]:
    """Class decorator for services that declare their own event models (billing, notifications)."""

    def decorate(model: type[Payload]) -> type[Payload]:
        EVENT_TYPES[(event_type, version)] = model
        EVENT_TYPE_OF[model] = (event_type, version)
        return model

    return decorate


class InvalidEvent(ValueError):
    """An event that cannot be read; ``reason`` says why, for the dead-letter record."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Event:
    """An envelope together with its validated payload."""

    envelope: Envelope
    payload: Payload

    @property
    def event_type(self) -> str:
        return self.envelope.event_type

    @property
    def clinic_id(self) -> str:
        return self.envelope.clinic_id

    @property
    def occurred_at(self) -> datetime:
        return self.envelope.occurred_at


def make_event(
    payload: Payload,
    *,
    clinic_id: str,
    source: str,
    occurred_at: datetime | None = None,
    correlation_id: str | None = None,
    event_id: str | None = None,
) -> Event:
    """Wrap a payload in a fresh envelope."""
    event_type, version = EVENT_TYPE_OF[type(payload)]
    fields: dict[str, Any] = {
        "event_type": event_type,
        "schema_version": version,
        "clinic_id": clinic_id,
        "source": source,
        "correlation_id": correlation_id,
        "data": payload.model_dump(mode="json"),
    }
    if occurred_at is not None:
        fields["occurred_at"] = occurred_at
    if event_id is not None:
        fields["event_id"] = event_id
    return Event(envelope=Envelope(**fields), payload=payload)


def encode(event: Event) -> bytes:
    """The event as the JSON bytes that go on Kafka."""
    return orjson.dumps(event.envelope.model_dump(mode="json"))


MAX_EVENT_BYTES = 64 * 1024  # a floor fact is a few hundred bytes; nothing needs more


def decode(raw: bytes | str) -> Event:
    """Parse and validate an event from Kafka bytes.

    Raises ``InvalidEvent`` with a reason fit for a dead-letter record when the
    bytes are not JSON, the envelope is malformed, the type or version is unknown,
    or the payload fails validation. Old versions are upcast first.
    """
    if len(raw) > MAX_EVENT_BYTES:
        raise InvalidEvent(f"too large: {len(raw)} bytes, over the {MAX_EVENT_BYTES}-byte "
                           "limit for one event")
    # The models' validators are called directly: the keyword arguments that
    # model_validate_json and model_validate pass on cost about 0.8 of decode's 6.5 µs.
    try:
        envelope: Envelope = Envelope.__pydantic_validator__.validate_json(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        if error["type"] == "json_invalid":
            raise InvalidEvent(f"not valid JSON: {error['msg']}") from None
        if error["type"] == "model_type":
            raise InvalidEvent("event is not a JSON object") from None
        raise InvalidEvent(f"bad envelope: {_first_error(exc)}") from None
    model = EVENT_TYPES.get((envelope.event_type, envelope.schema_version))
    if model is None:
        return _decode_old_version(envelope)
    try:
        payload: Payload = model.__pydantic_validator__.validate_python(envelope.data)
    except ValidationError as exc:
        raise InvalidEvent(f"bad {envelope.event_type} data: {_first_error(exc)}") from None
    return _new_event(envelope, payload)


def _decode_old_version(envelope: Envelope) -> Event:
    """Upcast an envelope whose (type, version) has no model, or say why it cannot be read."""
    key = (envelope.event_type, envelope.schema_version)
    data = envelope.data
    while key not in EVENT_TYPES and key in UPCASTERS:
        data = UPCASTERS[key](data)
        key = (key[0], key[1] + 1)
    model = EVENT_TYPES.get(key)
    if model is None:
        known = sorted({t for t, _ in EVENT_TYPES})
        if envelope.event_type in known:
            raise InvalidEvent(
                f"unknown schema_version {envelope.schema_version} for {envelope.event_type}"
            )
        raise InvalidEvent(f"unknown event_type {envelope.event_type!r}")
    try:
        payload = model.model_validate(data)
    except ValidationError as exc:
        raise InvalidEvent(f"bad {envelope.event_type} data: {_first_error(exc)}") from None
    envelope = envelope.model_copy(update={"schema_version": key[1], "data": data})
    return Event(envelope=envelope, payload=payload)


# Event(envelope, payload) for decode, setting the two slots directly: the frozen
# dataclass's __init__ goes through object.__setattr__ and takes twice as long.
_new_event_object = object.__new__
_set_event_envelope = Event.__dict__["envelope"].__set__
_set_event_payload = Event.__dict__["payload"].__set__


def _new_event(envelope: Envelope, payload: Payload) -> Event:
    event: Event = _new_event_object(Event)
    _set_event_envelope(event, envelope)
    _set_event_payload(event, payload)
    return event


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"]) or "(root)"
    return f"{where}: {error['msg']}"


def envelope_json_schema() -> dict[str, Any]:
    """JSON Schema of the envelope, for docs and for consumers in other languages."""
    return Envelope.model_json_schema()


# Services' own event models register themselves when shared.events is imported.
from shared import events_billing as events_billing  # noqa: E402
from shared import events_notifications as events_notifications  # noqa: E402
