"""Event models owned by the notifications service (registered with ``register_event``).

None of them carries contact details: patients appear as ``visit_id`` and
``ticket_code`` only, channels as their kind (``email``, ``sms``, ``log``,
``webhook``). ``notification.*`` and ``nurse_alert.*`` go on the notifications
topic; ``contact.*`` and ``complaint_text.read`` (who read or changed identifying data
or a patient's words, never the value) go on the audit topic.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from shared.events import Payload, register_event

NotificationKind = Literal[
    "delay_warning", "come_back_now", "ready_for_you", "nurse_page", "nurse_page_withdrawn",
    "feedback_request",
]
ChannelKind = Literal["email", "sms", "log", "webhook"]
_ID = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"


@register_event("notification.sent", 1)
class NotificationSent(Payload):
    """A message was handed to its channel (SMTP server, SMS gateway, pager, log)."""

    notification_id: str = Field(min_length=1, max_length=64)
    kind: NotificationKind
    channel: ChannelKind
    visit_id: str | None = Field(default=None, pattern=_ID, description="null for nurse pages")
    ticket_code: str | None = None
    attempts: int = Field(ge=1)
    trigger_event_ids: list[str] = Field(
        default_factory=list, description="the events that made this message necessary"
    )


@register_event("notification.failed", 1)
class NotificationFailed(Payload):
    """A message could not be delivered after its last attempt, or its fate is unknown.

    ``may_have_been_delivered`` is true when the service stopped while the
    channel had the message (``final_status`` "unconfirmed"): it is never sent
    again, so staff should check with the patient in person.
    """

    notification_id: str = Field(min_length=1, max_length=64)
    kind: NotificationKind
    channel: ChannelKind
    visit_id: str | None = Field(default=None, pattern=_ID)
    ticket_code: str | None = None
    attempts: int = Field(ge=0)
    final_status: Literal["failed", "unconfirmed"] = "failed"
    may_have_been_delivered: bool = False
    reason: str = Field(default="", max_length=300, description="contact details scrubbed")


@register_event("nurse_alert.raised", 1)
class NurseAlertRaised(Payload):
    """A room is ready and a patient waits for a provider who can take them."""

    alert_id: str = Field(min_length=1, max_length=64)
    room_id: str = Field(pattern=_ID)
    visit_id: str = Field(pattern=_ID)
    ticket_code: str
    provider_id: str | None = None
    text: str = Field(max_length=200, examples=["Room 4 ready: next is A-17 for Dr. Lee."])


@register_event("nurse_alert.withdrawn", 1)
class NurseAlertWithdrawn(Payload):
    """An alert no longer holds: the room was taken, or who is next changed."""

    alert_id: str = Field(min_length=1, max_length=64)
    room_id: str = Field(pattern=_ID)
    visit_id: str = Field(pattern=_ID)
    ticket_code: str
    reason: Literal[
        "room_taken", "room_unavailable", "next_patient_changed", "nobody_to_room", "alerts_off"
    ]


@register_event("contact.read", 1)
class ContactRead(Payload):
    """Someone (a person, or the sender at send time) read a patient's contact details."""

    visit_id: str = Field(pattern=_ID)
    reader: str = Field(max_length=80, description="credential name, or 'notifications-sender'")
    reader_role: str = Field(max_length=40)
    purpose: Literal["front_desk_view", "send"]
    fields: list[str] = Field(description="which fields were read, never their values")
    notification_id: str | None = None


@register_event("contact.recorded", 1)
class ContactRecorded(Payload):
    """The front desk recorded (or replaced) a patient's contact details, with consent."""

    visit_id: str = Field(pattern=_ID)
    recorded_by: str = Field(max_length=80)
    channel: ChannelKind
    expires_at: str = Field(description="when the details are deleted (end of the clinic day)")


@register_event("contact.erased", 1)
class ContactErased(Payload):
    """A patient's contact details were erased (opt-out or withdrawn consent)."""

    visit_id: str = Field(pattern=_ID)
    erased_by: str = Field(max_length=80)


@register_event("complaint_text.read", 1)
class ComplaintTextRead(Payload):
    """A manager read what a patient said in a complaint (the manager's view of one
    complaint): who, which complaint, when; never the words."""

    complaint_id: str = Field(pattern=_ID)
    reader: str = Field(max_length=80, description="credential name")
    reader_role: str = Field(max_length=40)


@register_event("feedback.given", 1)
class FeedbackGiven(Payload):
    """A patient answered the feedback form sent after their visit (once per visit). The
    free text, if any, stays in notifications' own store: the event says only whether
    there was some."""

    visit_id: str = Field(pattern=_ID)
    rating: int = Field(ge=1, le=5, description="1 (poor) to 5 (excellent)")
    wait: Literal["about_right", "longer", "shorter"] = Field(
        description="was the wait about what the patient was told?")
    text_given: bool = Field(description="the patient also wrote something (kept apart)")


ComplaintCategory = Literal["wait", "billing", "staff", "facility", "other"]
ComplaintSource = Literal["in_person", "phone", "low_rating"]


class _Complaint(Payload):
    """A complaint's event: ids, category and flags only. What the patient said stays in
    notifications' own store (manager only), never on an event."""

    complaint_id: str = Field(pattern=_ID)
    visit_id: str | None = Field(default=None, pattern=_ID,
                                 description="the visit it is about, when one is named")
    category: ComplaintCategory


@register_event("complaint.logged", 1)
class ComplaintLogged(_Complaint):
    """A complaint was logged by staff (in person, phone) or raised by a low rating (1-2)
    on the feedback form (once per visit)."""

    source: ComplaintSource
    due_at: str = Field(description="acknowledge by (ISO 8601, the clinic's offset)")


@register_event("complaint.acknowledged", 1)
class ComplaintAcknowledged(_Complaint):
    """Someone at the front office took the complaint on (its owner)."""

    owner: str = Field(max_length=80, description="the credential name of the owner")


@register_event("complaint.resolved", 1)
class ComplaintResolved(_Complaint):
    """The complaint was dealt with and closed."""

    owner: str = Field(max_length=80)


@register_event("complaint.escalated", 1)
class ComplaintEscalated(_Complaint):
    """Nobody acknowledged the complaint by its due time: the manager is told."""

    due_at: str
