"""The notifications service's HTTP schemas: the request and answer models of every route,
their examples (shown in the OpenAPI document; a unit test checks each is valid), and the
refusals each route documents. Times in answers are on the clinic's clock (its UTC
offset); no answer but the audited contact read carries a contact detail.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from shared.refusals import Invalid

ID_TEXT = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
NOTIFICATION_ID_TEXT = r"^[a-z]-[0-9a-f]{24}$"
TOLD_KINDS = ("delay_warning", "come_back_now", "ready_for_you")

_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]{2,}$")
_PHONE = re.compile(r"^\+[1-9][0-9]{7,14}$")


# ------------------------------------------------------------------ requests


class ContactIn(BaseModel):
    """A patient's contact details and what they agreed to, entered by the front desk."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"channel": "sms", "address": "+15551234567", "consent": True, "wait_anywhere": True},
        {"channel": "email", "address": "patient@example.org", "consent": True},
    ]})

    channel: Literal["email", "sms", "log"] = Field(
        description="how to reach the patient: 'email' (needs CLINICFLOW_SMTP_HOST), 'sms' "
        "(needs CLINICFLOW_SMS_GATEWAY_URL); 'log' is for development: messages go to "
        "the service log", examples=["sms"])
    address: str = Field("", max_length=254, examples=["+15551234567"],
                         description="e-mail address, or phone number in E.164 (+15551234567)")
    # strict booleans (true/false, never "true", "yes" or 1): 422 naming the field
    consent: bool = Field(description="the patient agreed to be contacted today (must be true)",
                          examples=[True], strict=True)
    wait_anywhere: bool = Field(False, description="waits outside: 'come back now' notices",
                                strict=True)
    delay_updates: bool = Field(True, description="wants to hear of delays", strict=True)

    @field_validator("consent")
    @classmethod
    def _consented(cls, value: bool) -> bool:
        if not value:
            raise ValueError("the patient must agree to be contacted (consent: true); "
                             "nothing was stored")
        return value

    @field_validator("address")
    @classmethod
    def _address_fits_channel(cls, value: str, info: ValidationInfo) -> str:
        channel = info.data.get("channel")
        value = value.strip()
        if channel == "email" and not _EMAIL.match(value):
            raise ValueError("not an e-mail address")
        if channel == "sms":
            value = re.sub(r"[\s().-]", "", value)
            if not _PHONE.match(value):
                raise ValueError("not a phone number in international form (+15551234567)")
        return value


CONTACT_EXAMPLES: dict[str, Any] = {
    "sms": {"summary": "By text message, waiting in the car",
            "value": {"channel": "sms", "address": "+15551234567", "consent": True,
                      "wait_anywhere": True}},
    "email": {"summary": "By e-mail, delays only",
              "value": {"channel": "email", "address": "patient@example.org",
                        "consent": True}},
}


class PreferencesPatch(BaseModel):
    """What the patient wants to hear now; a field left out keeps its value."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"wait_anywhere": True}]})

    wait_anywhere: bool | None = Field(None, description="waits outside: 'come back now'",
                                       examples=[True], strict=True)
    delay_updates: bool | None = Field(None, description="wants to hear of delays",
                                       examples=[False], strict=True)


PATCH_EXAMPLES: dict[str, Any] = {
    "outside": {"summary": "The patient goes to wait in the car",
                "value": {"wait_anywhere": True}},
    "quiet": {"summary": "No more delay updates", "value": {"delay_updates": False}},
}


# ------------------------------------------------------------------- answers


class ContactSaved(BaseModel):
    """What was kept (the address itself is not echoed). ``replayed``: the same contact
    and preferences were already on file for the visit (or the same Idempotency-Key was
    used before), and nothing was written or audited again."""

    visit_id: str = Field(examples=["v-20260302-017"])
    channel: str = Field(examples=["sms"])
    address_hint: str = Field(examples=["+1•••••••567"])
    wait_anywhere: bool
    delay_updates: bool
    expires_at: datetime = Field(description="when the details are deleted: the clinic's "
                                 "next midnight, on its clock")
    replayed: bool = False


class ContactView(BaseModel):
    """A contact as the front desk reads it back (this read is audited)."""

    visit_id: str = Field(examples=["v-20260302-017"])
    channel: str = Field(examples=["sms"])
    address: str = Field(examples=["+15551234567"])
    wait_anywhere: bool
    delay_updates: bool
    recorded_by: str = Field(examples=["desk-2"])
    recorded_at: datetime = Field(description="on the clinic's clock")
    expires_at: datetime | None = Field(description="on the clinic's clock")


class NotificationSummary(BaseModel):
    """One line of "who has been told": never a contact detail."""

    notification_id: str = Field(examples=["n-3f2a9c0d1e4b5a6978877665"])
    visit_id: str | None = Field(None, examples=["v-20260302-017"])
    ticket_code: str | None = Field(None, examples=["A-17"])
    kind: str = Field(examples=["delay_warning"], description="delay_warning, come_back_now, "
                      "ready_for_you, nurse_page, nurse_page_withdrawn, feedback_request")
    channel: str = Field(examples=["sms"])
    status: str = Field(examples=["sent"], description="pending, sending, retrying, sent, "
                        "failed, unconfirmed (may have been delivered), cancelled")
    created_at: datetime = Field(description="on the clinic's clock")
    sent_at: datetime | None = Field(None, description="on the clinic's clock")


class NotificationList(BaseModel):
    clinic_id: str = Field(examples=["north"])
    notifications: list[NotificationSummary]


class NotificationStatus(NotificationSummary):
    """A notification's delivery, in full (still no contact details). ``text`` is what
    was sent, or what will be sent, in the clinic's words as configured now."""

    subject: str = Field("", examples=["North Family Practice: your wait is longer"])
    text: str = Field("", examples=["Dr. Okafor is running about 40 minutes behind; your new "
                                    "estimated wait is 45\u201355 minutes."])
    attempts: int = Field(examples=[1])
    next_attempt_at: datetime | None = None
    finished_at: datetime | None = None
    last_error: str = ""
    trigger_event_ids: list[str] = Field(default_factory=list,
                                         examples=[["0b6c3e1f9a8d4c2b"]])


class Told(BaseModel):
    ticket_code: str = Field(examples=["A-17"])
    kind: Literal["delay_warning", "come_back_now", "ready_for_you"]
    at: datetime = Field(description="when it went (or was decided), on the clinic's clock")


class ToldAnswer(BaseModel):
    """The latest message each ticket was sent (delivered or on its way): no visit id, no
    channel, no contact detail, no text."""

    clinic_id: str = Field(examples=["north"])
    told: list[Told]


class AlertView(BaseModel):
    """A room-ready alert: ids as events carry them, names as the clinic calls them."""

    alert_id: str = Field(examples=["9a1c2e4f6b8d0a1c2e4f6b8d"])
    room_id: str = Field(examples=["r5"])
    room_name: str = Field(examples=["Exam 5"])
    visit_id: str = Field(examples=["v-20260302-017"])
    ticket_code: str = Field(examples=["A-17"])
    provider_id: str | None = Field(examples=["p1"])
    provider_name: str = Field(examples=["Dr. Okafor"])
    text: str = Field(examples=["Exam 5 is ready for A-17 (Dr. Okafor)."])
    raised_at: datetime = Field(description="on the clinic's clock")


class AlertsAnswer(BaseModel):
    clinic_id: str = Field(examples=["north"])
    alerts: list[AlertView]


class EstimateRow(BaseModel):
    """Flow's latest estimate for a waiting visit: minutes until roomed, 80% range."""

    visit_id: str = Field(examples=["v-20260302-017"])
    ticket_code: str = Field(examples=["A-17"])
    provider_id: str | None = Field(None, examples=["p1"])
    position: int = Field(examples=[2])
    wait_minutes: float = Field(examples=[22.5])
    low: float = Field(examples=[15.0])
    high: float = Field(examples=[30.0])
    estimated_at: datetime | None = Field(
        None, description="when flow made it, on the clinic's clock (its UTC offset)",
        examples=["2026-03-02T09:41:00-05:00"])


class EstimatesAnswer(BaseModel):
    clinic_id: str = Field(examples=["north"])
    estimates: list[EstimateRow]


class RulesAnswer(BaseModel):
    """The rules in force at a clinic, with the name, provider names and zone its
    messages use (CLINICFLOW_CLINICS, the older rules filling in)."""

    model_config = ConfigDict(extra="allow")

    clinic_id: str = Field(examples=["north"])
    clinic_name: str = Field(examples=["North Family Practice"])
    provider_names: dict[str, str] = Field(examples=[{"p1": "Dr. Okafor"}])
    timezone: str = Field(examples=["America/Chicago"])


class RefusalAnswer(BaseModel):
    """Why a request was refused, in words; ``code`` names the refusal's kind (present
    for refusals of the clinic's rules: not_found, visit_ended, channel_unavailable, ...)."""

    detail: str = Field(examples=["no visit v-9 on the floor of clinic north"])
    code: str | None = Field(None, examples=["unknown_visit"])


# ---------------------------------------------------------- answer examples

CONTACT_SAVED_EXAMPLE: dict[str, Any] = {
    "visit_id": "v-20260302-017", "channel": "sms", "address_hint": "+1•••••••567",
    "wait_anywhere": True, "delay_updates": True,
    "expires_at": "2026-03-03T00:00:00-06:00", "replayed": False}
CONTACT_VIEW_EXAMPLE: dict[str, Any] = {
    "visit_id": "v-20260302-017", "channel": "sms", "address": "+15551234567",
    "wait_anywhere": True, "delay_updates": True, "recorded_by": "desk-2",
    "recorded_at": "2026-03-02T09:41:07-06:00", "expires_at": "2026-03-03T00:00:00-06:00"}
SUMMARY_EXAMPLE: dict[str, Any] = {
    "notification_id": "n-3f2a9c0d1e4b5a6978877665", "visit_id": "v-20260302-017",
    "ticket_code": "A-17", "kind": "delay_warning", "channel": "sms", "status": "sent",
    "created_at": "2026-03-02T10:12:03-06:00", "sent_at": "2026-03-02T10:12:04-06:00"}
LIST_EXAMPLE: dict[str, Any] = {"clinic_id": "north", "notifications": [SUMMARY_EXAMPLE]}
STATUS_EXAMPLE: dict[str, Any] = {
    **SUMMARY_EXAMPLE, "subject": "North Family Practice: your wait is longer",
    "text": "North Family Practice: Dr. Okafor is running about 40 minutes behind; your "
            "new estimated wait is 45\u201355 minutes.",
    "attempts": 1, "next_attempt_at": None, "finished_at": "2026-03-02T10:12:04-06:00",
    "last_error": "", "trigger_event_ids": ["0b6c3e1f9a8d4c2b", "7d2e9f1a3b5c4d6e"]}
TOLD_EXAMPLE: dict[str, Any] = {"clinic_id": "north", "told": [
    {"ticket_code": "A-17", "kind": "come_back_now", "at": "2026-03-02T10:31:40-06:00"}]}
ALERT_EXAMPLE: dict[str, Any] = {
    "alert_id": "9a1c2e4f6b8d0a1c2e4f6b8d", "room_id": "r5", "room_name": "Exam 5",
    "visit_id": "v-20260302-017", "ticket_code": "A-17", "provider_id": "p1",
    "provider_name": "Dr. Okafor", "text": "Exam 5 is ready for A-17 (Dr. Okafor).",
    "raised_at": "2026-03-02T10:40:12-06:00"}
ALERTS_EXAMPLE: dict[str, Any] = {"clinic_id": "north", "alerts": [ALERT_EXAMPLE]}
ESTIMATES_EXAMPLE: dict[str, Any] = {"clinic_id": "north", "estimates": [
    {"visit_id": "v-20260302-017", "ticket_code": "A-17", "provider_id": "p1",
     "position": 2, "wait_minutes": 22.5, "low": 15.0, "high": 30.0}]}
RULES_EXAMPLE: dict[str, Any] = {
    "clinic_id": "north", "delay_warnings": True, "warn_after_growth_minutes": 15,
    "announce_delays_from_minutes": 10, "min_minutes_between_messages": 20,
    "wait_anywhere": True, "come_back_lead_minutes": 15, "nurse_alerts": True,
    "patients_roomed_per_provider": 2, "settle_seconds": 5, "max_message_age_minutes": 30,
    "clinic_name": "North Family Practice", "provider_names": {"p1": "Dr. Okafor"},
    "timezone": "America/Chicago"}
STREAM_EXAMPLE = (
    'event: alerts\ndata: {"clinic_id": "north", "alerts": []}\n\n'
    "event: alert.raised\nid: 9a1c2e4f6b8d0a1c2e4f6b8d\n"
    'data: {"alert_id": "9a1c2e4f6b8d0a1c2e4f6b8d", "room_id": "r5", "room_name": "Exam 5", '
    '"text": "Exam 5 is ready for A-17 (Dr. Okafor).", ...}\n\n'
    'event: alert.withdrawn\ndata: {"alert_id": "9a1c2e4f6b8d0a1c2e4f6b8d", '
    '"reason": "room_taken", ...}\n\n')


# ---------------------------------------------------------------- refusals


def refusal(when: str, detail: str, code: str | None = None) -> dict[str, Any]:
    """A documented refusal: when it happens, and an example of its body."""
    example: dict[str, Any] = {"detail": detail}
    if code is not None:
        example["code"] = code
    return {"model": RefusalAnswer, "description": when,
            "content": {"application/json": {"example": example}}}


# every route may answer these (authentication, limits, validation, Redis away)
COMMON_ERRORS: dict[int | str, dict[str, Any]] = {
    400: refusal("the body cannot be read (not UTF-8)", "There was an error parsing the body"),
    401: refusal("no bearer token, or an unknown one", "unknown or revoked token"),
    403: refusal("the credential's role may not do this, or it does not open the clinic",
                 "role 'nurse' may not do this (allowed: front_desk)"),
    413: refusal("the body is larger than CLINICFLOW_MAX_BODY_BYTES",
                 "request body larger than 262144 bytes"),
    422: {"model": Invalid, "description": "invalid request: ``detail`` names each field",
          "content": {"application/json": {"example": {
              "detail": "invalid request: body.address: Value error, not an e-mail address",
              "errors": [{"type": "value_error", "loc": ["body", "address"],
                          "msg": "Value error, not an e-mail address"}]}}}},
    503: refusal("Redis (or Kafka, for a command that must first read the floor) is "
                 "unavailable; nothing was recorded, try again",
                 "Redis is unreachable or busy; try again shortly"),
}

UNKNOWN_VISIT = ("the visit is not on the clinic's floor as notifications knows it (never "
                 "checked in at this clinic: another clinic's visit, a mistyped id)",
                 "no visit v-9 on the floor of clinic north (not checked in there, or "
                 "another clinic's)", "unknown_visit")
NO_CONTACT = ("no contact details on file for the visit (never given, erased, or expired)",
              "no contact details for visit v-20260302-017 at clinic north (never given, "
              "erased, or expired)", "not_found")
VISIT_ENDED = ("the visit has ended (checked out, left, cancelled): nothing more is sent "
               "to it; or a request with the same Idempotency-Key is still running",
               "visit v-20260302-017 at clinic north has ended: no message goes to it any "
               "more", "visit_ended")


def answer(status: int, example: Any, description: str, *,
           refusals: dict[int, tuple[str, str, str]] | None = None,
           media: str = "application/json") -> dict[int | str, dict[str, Any]]:
    """A route's documented answers: the success one with its example, and the refusals
    that route adds to ``COMMON_ERRORS`` (status -> (when, example detail, code))."""
    documented: dict[int | str, dict[str, Any]] = {
        status: {"description": description, "content": {media: {"example": example}}}}
    if status == 204:
        documented[status] = {"description": description}
    for code, (when, detail, kind) in (refusals or {}).items():
        documented[code] = refusal(when, detail, kind)
    return documented
