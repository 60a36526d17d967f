"""Domain outputs -> stored notification records and events. Pure: no I/O.

Event ids are derived from the notification or alert they report, so an event
published twice (the outbox is at least once) is recognisably the same event.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import orjson
from pydantic import ValidationError

from services.notifications.domain import (
    Alert,
    Message,
    Names,
    WithdrawReason,
    Wording,
    alert_text,
    page_id,
    render,
)
from services.notifications.domain.texts import shown_range
from shared import events as ev
from shared import events_notifications as nev
from shared.kafka import dead_letter_record
from shared.outbox import outbox_entry

SOURCE = "notifications"
SENDER = "notifications-sender"


@dataclass(slots=True)
class NewNotification:
    """A notification record to create (if absent) with the batch that decided it."""

    notification_id: str
    clinic_id: str
    due_at: float
    created_at: float
    fields: dict[str, str]


def message_record(message: Message, clinic_id: str, now: datetime) -> NewNotification:
    """The record of a patient message, due at once (or, deferred, at its ``not_before``:
    the sender does not claim it before)."""
    due = now if message.not_before is None else max(now, message.not_before)
    return NewNotification(
        notification_id=message.notification_id,
        clinic_id=clinic_id,
        due_at=due.timestamp(),
        created_at=now.timestamp(),
        fields={
            "notification_id": message.notification_id,
            "clinic_id": clinic_id,
            "visit_id": message.visit_id,
            "ticket_code": message.ticket_code,
            "kind": message.kind,
            "audience": "patient",
            "channel": message.channel,
            "status": "pending",
            "attempts": "0",
            "created_at": now.isoformat(),
            "decided_at": message.decided_at.isoformat(),
            "next_attempt_at": str(due.timestamp()),
            # ids and numbers: the words are made when it is sent or shown (``words``)
            "wording": orjson.dumps(message.wording.to_dict()).decode(),
            "trigger_ids": orjson.dumps(list(message.trigger_ids)).decode(),
        },
    )


def page_record(alert: Alert, action: Literal["raised", "withdrawn"], clinic_id: str,
                now: datetime, reason: WithdrawReason | None = None) -> NewNotification:
    """The record of a pager webhook for an alert raised or withdrawn."""
    notification_id = page_id(alert, action)
    payload: dict[str, Any] = {"type": f"nurse_alert.{action}", "clinic_id": clinic_id,
                               "alert": alert.to_dict()}
    if reason is not None:
        payload["reason"] = reason
    return NewNotification(
        notification_id=notification_id,
        clinic_id=clinic_id,
        due_at=now.timestamp(),
        created_at=now.timestamp(),
        fields={
            "notification_id": notification_id,
            "clinic_id": clinic_id,
            "visit_id": alert.visit_id,
            "ticket_code": alert.ticket_code,
            "kind": "nurse_page" if action == "raised" else "nurse_page_withdrawn",
            "audience": "nurses",
            "channel": "webhook",
            "status": "pending",
            "attempts": "0",
            "created_at": now.isoformat(),
            "decided_at": alert.raised_at.isoformat(),
            "next_attempt_at": str(now.timestamp()),
            "trigger_ids": orjson.dumps([alert.alert_id]).decode(),
            "payload": orjson.dumps(payload).decode(),
        },
    )


def alert_view(alert: dict[str, Any], names: Names) -> dict[str, Any]:
    """A stored alert (ids) as nurses see it: with the room's and the provider's names,
    the text, and the time on the clinic's clock."""
    raised_at = datetime.fromisoformat(alert["raised_at"])
    shown = {k: v for k, v in alert.items() if k != "raised_by"}  # ours, not the nurses'
    return {**shown, "raised_at": names.local(raised_at).isoformat(),
            "room_name": names.room(alert["room_id"]),
            "provider_name": names.provider(alert.get("provider_id")),
            "text": alert_text(alert["room_id"], alert["ticket_code"],
                               alert.get("provider_id"), names)}


def words(record: dict[str, str], names: Names,
          link: str | None = None) -> tuple[str, str, dict[str, Any]]:
    """(subject, text, webhook payload) of a stored notification, in the clinic's words
    as configured now (``link``: a feedback request's signed form link, when sent). A
    record stored by a version before keeps the words it has."""
    payload: dict[str, Any] = orjson.loads(record["payload"]) if record.get("payload") else {}
    if record.get("wording"):
        return (*render(Wording.from_dict(orjson.loads(record["wording"])), names, link),
                payload)
    if payload.get("alert") is not None:
        payload["alert"] = alert_view(payload["alert"], names)
        text = payload["alert"]["text"]
        withdrawn = payload.get("type") == "nurse_alert.withdrawn"
        return text, f"Withdrawn: {text}" if withdrawn else text, payload
    return record.get("subject", ""), record.get("text", ""), payload


def alert_raised(alert: Alert, clinic_id: str, names: Names) -> bytes:
    event = ev.make_event(
        nev.NurseAlertRaised(alert_id=alert.alert_id, room_id=alert.room_id,
                             visit_id=alert.visit_id, ticket_code=alert.ticket_code,
                             provider_id=alert.provider_id,
                             text=alert_text(alert.room_id, alert.ticket_code,
                                             alert.provider_id, names)[:200]),
        clinic_id=clinic_id, source=SOURCE, occurred_at=alert.raised_at,
        correlation_id=alert.visit_id, event_id=f"{alert.raise_id}.raised")
    return outbox_entry("notifications", clinic_id, ev.encode(event))


def alert_withdrawn(alert: Alert, reason: WithdrawReason, clinic_id: str,
                    at: datetime) -> bytes:
    event = ev.make_event(
        nev.NurseAlertWithdrawn(alert_id=alert.alert_id, room_id=alert.room_id,
                                visit_id=alert.visit_id, ticket_code=alert.ticket_code,
                                reason=reason),
        clinic_id=clinic_id, source=SOURCE, occurred_at=at, correlation_id=alert.visit_id,
        event_id=f"{alert.raise_id}.withdrawn")
    return outbox_entry("notifications", clinic_id, ev.encode(event))


def live_message(kind: Literal["raised", "withdrawn"], alert: Alert,
                 reason: WithdrawReason | None = None) -> bytes:
    """What nurse stations receive over SSE (via Redis pub/sub)."""
    document: dict[str, Any] = {"type": kind, "alert": alert.to_dict()}
    if reason is not None:
        document["reason"] = reason
    return orjson.dumps(document)


def sent_event(record: dict[str, str], channel: str, at: datetime) -> bytes:
    event = ev.make_event(
        nev.NotificationSent(
            notification_id=record["notification_id"], kind=record["kind"],  # type: ignore[arg-type]
            channel=channel,  # type: ignore[arg-type]
            visit_id=record.get("visit_id") or None,
            ticket_code=record.get("ticket_code") or None,
            attempts=max(1, int(record.get("attempts", "1"))),
            trigger_event_ids=orjson.loads(record.get("trigger_ids", "[]"))),
        clinic_id=record["clinic_id"], source=SOURCE, occurred_at=at,
        correlation_id=record.get("visit_id") or None,
        event_id=f"{record['notification_id']}.sent")
    return outbox_entry("notifications", record["clinic_id"], ev.encode(event))


def told_event(record: dict[str, str], channel: str, at: datetime) -> bytes | None:
    """``wait.told`` for a patient message that quoted a wait, sent at ``at`` on
    ``channel``: a delay warning (its channel: sms, email, log) or "please come back now"
    (channel ``next``), with the range as the patient read it (to five minutes) and the
    estimate it was made around; None for a message that quoted none."""
    kind = record.get("kind")
    if kind not in ("delay_warning", "come_back_now") or not record.get("wording"):
        return None
    wording = Wording.from_dict(orjson.loads(record["wording"]))
    if wording.low is None or wording.high is None:
        return None
    told_channel = "next" if kind == "come_back_now" else channel
    if told_channel not in ("sms", "email", "log", "next"):
        return None
    low, high = shown_range(wording.low, wording.high)
    point = wording.wait if wording.wait is not None else (low + high) / 2
    try:
        told = ev.WaitTold(visit_id=record["visit_id"],
                           ticket_code=record.get("ticket_code") or None,
                           channel=told_channel,  # type: ignore[arg-type]
                           low=float(low), high=float(high),
                           wait_minutes=round(min(max(0.0, point), 1440.0), 1),
                           provider_id=wording.provider_id)
    except ValidationError:  # nothing a patient was told is worth failing a sent message
        return None
    event = ev.make_event(
        told, clinic_id=record["clinic_id"], source=SOURCE, occurred_at=at,
        correlation_id=record.get("visit_id") or None,
        event_id=f"{record['notification_id']}.told")
    return outbox_entry("told", record["clinic_id"], ev.encode(event))


def told_events(record: dict[str, str], channel: str, at: datetime) -> list[bytes]:
    """``told_event`` as a list (empty: the message quoted no wait)."""
    told = told_event(record, channel, at)
    return [] if told is None else [told]


def failed_events(record: dict[str, str], channel: str, at: datetime, reason: str,
                  final_status: Literal["failed", "unconfirmed"],
                  notifications_topic: str) -> list[bytes]:
    """``notification.failed`` for the notifications topic, and its dead-letter record."""
    event = ev.make_event(
        nev.NotificationFailed(
            notification_id=record["notification_id"], kind=record["kind"],  # type: ignore[arg-type]
            channel=channel,  # type: ignore[arg-type]
            visit_id=record.get("visit_id") or None,
            ticket_code=record.get("ticket_code") or None,
            attempts=int(record.get("attempts", "0")), final_status=final_status,
            may_have_been_delivered=final_status == "unconfirmed", reason=reason[:300]),
        clinic_id=record["clinic_id"], source=SOURCE, occurred_at=at,
        correlation_id=record.get("visit_id") or None,
        event_id=f"{record['notification_id']}.{final_status}")
    raw = ev.encode(event)
    letter = dead_letter_record(
        raw=raw, reason=f"notification {final_status}: {reason}"[:500], consumer=SOURCE,
        source_topic=notifications_topic, partition=None, offset=None,
        key=record["clinic_id"].encode())
    return [outbox_entry("notifications", record["clinic_id"], raw),
            outbox_entry("deadletter", record["clinic_id"], letter)]


def contact_read(clinic_id: str, visit_id: str, *, reader: str, role: str,
                 purpose: Literal["front_desk_view", "send"], at: datetime,
                 notification_id: str | None = None) -> bytes:
    """The audit event of one read of identifying data: who, what, when; not the value."""
    event = ev.make_event(
        nev.ContactRead(visit_id=visit_id, reader=reader, reader_role=role, purpose=purpose,
                        fields=["channel", "address"], notification_id=notification_id),
        clinic_id=clinic_id, source=SOURCE, occurred_at=at, correlation_id=visit_id,
        event_id=uuid.uuid4().hex)
    return outbox_entry("audit", clinic_id, ev.encode(event))


def contact_recorded(clinic_id: str, visit_id: str, *, by: str, channel: str, at: datetime,
                     expires_at: datetime) -> bytes:
    event = ev.make_event(
        nev.ContactRecorded(visit_id=visit_id, recorded_by=by,
                            channel=channel,  # type: ignore[arg-type]
                            expires_at=expires_at.isoformat()),
        clinic_id=clinic_id, source=SOURCE, occurred_at=at, correlation_id=visit_id)
    return outbox_entry("audit", clinic_id, ev.encode(event))


def contact_erased(clinic_id: str, visit_id: str, *, by: str, at: datetime) -> bytes:
    event = ev.make_event(nev.ContactErased(visit_id=visit_id, erased_by=by),
                          clinic_id=clinic_id, source=SOURCE, occurred_at=at,
                          correlation_id=visit_id)
    return outbox_entry("audit", clinic_id, ev.encode(event))
