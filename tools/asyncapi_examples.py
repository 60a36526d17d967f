"""One example of every event, as it travels on Kafka (the envelope with its data), for
the AsyncAPI document. Each is decoded by ``shared.events.decode`` in a test, so an
example that no longer matches its model fails the build rather than mislead a reader.
Identifiers are pseudonymous, as on the wire: no names, birth dates or phone numbers."""

from __future__ import annotations

import hashlib
from typing import Any

AT = "2026-03-02T15:04:05+00:00"
CLINIC = "north"

DATA: dict[str, dict[str, Any]] = {
    "appointment.scheduled": {
        "appointment_id": "apt-1042", "patient_ref": "pt-7f3a9c", "provider_id": "p1",
        "visit_type": "follow_up", "scheduled_at": "2026-03-02T15:15:00+00:00",
        "duration_minutes": 20, "status": "booked"},
    "patient.arrived": {
        "visit_id": "v-1042", "ticket_code": "A-17", "patient_ref": "pt-7f3a9c",
        "appointment_id": "apt-1042", "provider_id": "p1", "visit_type": "follow_up",
        "scheduled_at": "2026-03-02T15:15:00+00:00", "priority": "routine", "late": False},
    "arrival.cancelled": {"visit_id": "v-1042", "reason": "left_without_being_seen"},
    "patient.no_show": {"appointment_id": "apt-1043", "provider_id": "p2",
                        "scheduled_at": "2026-03-02T14:30:00+00:00"},
    "room.ready": {"room_id": "r3"},
    "room.out_of_service": {"room_id": "r4", "reason": "exam light broken"},
    "patient.roomed": {"visit_id": "v-1042", "room_id": "r3"},
    "provider.in": {"visit_id": "v-1042", "provider_id": "p1"},
    "delay.announced": {"provider_id": "p1", "minutes": 25, "reason": "emergency"},
    "delay.cleared": {"provider_id": "p1"},
    "patient.checked_out": {"visit_id": "v-1042", "cpt_codes": ["99213"],
                            "icd10_codes": ["J06.9"]},
    "action.undone": {"undone_event_id": "0b9f1c2d3e4f40a1b2c3d4e5f6a7b8c9",
                      "reason": "roomed the wrong ticket"},
    "wait.estimated": {"visit_id": "v-1042", "ticket_code": "A-17", "provider_id": "p1",
                       "position": 2, "wait_minutes": 14.5, "low": 8.0, "high": 24.0},
    "wait.told": {"visit_id": "v-1042", "ticket_code": "A-17", "channel": "kiosk",
                  "low": 8.0, "high": 24.0, "wait_minutes": 14.5, "provider_id": "p1",
                  "reference_minutes": 21.0},
    "directory.named": {"kind": "provider", "id": "dr-lee", "display": "Dr. Ada Lee",
                        "origin": "fhir"},
    "charge.posted": {
        "entry_id": "chg-v-1042", "reason": "checkout", "made_by": "desk-2",
        "visit_id": "v-1042", "patient_ref": "pt-7f3a9c",
        "checkout_event_id": "1c2d3e4f5a6b47c8d9e0f1a2b3c4d5e6",
        "lines": [{"cpt_code": "99213", "description": "Office visit, established",
                   "fee_cents": 12500}],
        "amount_cents": 12500},
    "coverage.recorded": {
        "entry_id": "cov-v-1042", "reason": "insurance card", "made_by": "desk-2",
        "visit_id": "v-1042", "patient_ref": "pt-7f3a9c", "copay_cents": 2500,
        "coinsurance_basis_points": 2000, "deductible_remaining_cents": 0,
        "self_pay": False},
    "patient_share.posted": {
        "entry_id": "shr-v-1042", "reason": "checkout", "made_by": "desk-2",
        "visit_id": "v-1042", "patient_ref": "pt-7f3a9c", "charge_entry_id": "chg-v-1042",
        "coverage_entry_id": "cov-v-1042", "amount_cents": 2500, "copay_cents": 2500,
        "deductible_cents": 0, "coinsurance_cents": 0},
    "payment.recorded": {
        "entry_id": "pay-9d8c7b", "reason": "copay", "made_by": "desk-2",
        "visit_id": "v-1042", "patient_ref": "pt-7f3a9c", "method": "card",
        "amount_cents": 2500, "reference": "auth 041932"},
    "payment.refunded": {
        "entry_id": "ref-1a2b3c", "reason": "charged twice at the terminal",
        "made_by": "manager-1", "visit_id": "v-1042", "patient_ref": "pt-7f3a9c",
        "payment_entry_id": "pay-9d8c7b", "method": "card", "amount_cents": 2500},
    "entry.voided": {
        "entry_id": "void-chg-v-1042", "reason": "checkout undone", "made_by": "manager-1",
        "voided_entry_id": "chg-v-1042", "voided_event_type": "charge.posted",
        "visit_id": "v-1042", "patient_ref": "pt-7f3a9c"},
    "ledger.drawer_counted": {
        "entry_id": "drawer-north-2026-03-02", "reason": "end of day", "made_by": "manager-1",
        "business_date": "2026-03-02", "cash_cents": 15000, "check_cents": 0,
        "card_cents": 87500},
    "notification.sent": {
        "notification_id": "n-5e6f7a", "kind": "delay_warning", "channel": "sms",
        "visit_id": "v-1042", "ticket_code": "A-17", "attempts": 1,
        "trigger_event_ids": ["2d3e4f5a6b7c48d9e0f1a2b3c4d5e6f7"]},
    "notification.failed": {
        "notification_id": "n-5e6f7b", "kind": "delay_warning", "channel": "email",
        "visit_id": "v-1042", "ticket_code": "A-17", "attempts": 5,
        "final_status": "failed", "may_have_been_delivered": False,
        "reason": "mail server refused the recipient"},
    "nurse_alert.raised": {
        "alert_id": "al-r3-v-1042", "room_id": "r3", "visit_id": "v-1042",
        "ticket_code": "A-17", "provider_id": "p1", "text": "Room 3 is ready for A-17"},
    "feedback.given": {"visit_id": "v-1042", "rating": 4, "wait": "longer",
                       "text_given": True},
    "complaint.logged": {"complaint_id": "cp-7a1e", "visit_id": "v-1042",
                         "category": "wait", "source": "low_rating",
                         "due_at": "2026-03-02T11:30:00-05:00"},
    "complaint.acknowledged": {"complaint_id": "cp-7a1e", "visit_id": "v-1042",
                               "category": "wait", "owner": "desk-2"},
    "complaint.resolved": {"complaint_id": "cp-7a1e", "visit_id": "v-1042",
                           "category": "wait", "owner": "desk-2"},
    "complaint.escalated": {"complaint_id": "cp-7a1e", "visit_id": "v-1042",
                            "category": "wait", "due_at": "2026-03-02T11:30:00-05:00"},
    "nurse_alert.withdrawn": {
        "alert_id": "al-r3-v-1042", "room_id": "r3", "visit_id": "v-1042",
        "ticket_code": "A-17", "reason": "room_taken"},
    "contact.recorded": {"visit_id": "v-1042", "recorded_by": "desk-2", "channel": "sms",
                         "expires_at": "2026-03-03T06:00:00+00:00"},
    "contact.read": {"visit_id": "v-1042", "reader": "notifications", "reader_role": "service",
                     "purpose": "send", "fields": ["phone"], "notification_id": "n-5e6f7a"},
    "contact.erased": {"visit_id": "v-1042", "erased_by": "desk-2"},
    "complaint_text.read": {"complaint_id": "cp-7a1e", "reader": "manager-1",
                            "reader_role": "manager"},
}


def example(event_type: str, version: int) -> dict[str, Any]:
    """The example envelope of one event type (KeyError: none written yet)."""
    return {
        # a ledger entry's event_id is its entry_id (billing refuses any other)
        "event_id": DATA[event_type].get("entry_id")
        or hashlib.sha256(event_type.encode()).hexdigest()[:32],
        "event_type": event_type,
        "schema_version": version,
        "occurred_at": AT,
        "clinic_id": CLINIC,
        "correlation_id": DATA[event_type].get("visit_id"),
        "source": event_type.split(".")[0],
        "data": DATA[event_type],
    }
