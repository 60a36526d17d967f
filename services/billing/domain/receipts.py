"""Receipts: a payment or refund with the visit's account after it, the payment
reference masked to its last four characters, as the patient reads it: the clinic's
name, who saw them, and the time on the clinic's own clock (its zone's abbreviation or
UTC offset printed with it), the business day it counts on."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Literal
from zoneinfo import ZoneInfo

from services.billing.domain.accounts import Account
from shared.errors import NotFound
from shared.events_billing import ChargeLine, PaymentMethod, PaymentRecorded, PaymentRefunded


@dataclass(frozen=True)
class ReceiptHeading:
    """Who the receipt is from, in the clinic's words, and whose clock it reads."""

    clinic_name: str
    timezone: str  # IANA
    provider_id: str | None = None
    provider_name: str | None = None


@dataclass(frozen=True)
class Receipt:
    """A payment or refund, with the visit's account after it."""

    receipt_number: str
    kind: Literal["payment", "refund"]
    clinic_id: str
    clinic_name: str
    visit_id: str
    patient_ref: str | None
    provider_id: str | None
    provider_name: str | None
    method: PaymentMethod
    amount_cents: int
    reference: str | None
    made_at: datetime  # on the clinic's clock (aware)
    timezone: str
    business_date: date  # the clinic's day the entry counts on
    made_by: str
    reason: str
    voided: bool
    refunds_payment: str | None
    lines: tuple[ChargeLine, ...]
    charges_cents: int
    patient_share_cents: int
    insurance_cents: int
    paid_cents: int
    refunded_cents: int
    balance_cents: int


def mask_reference(reference: str | None) -> str | None:
    """Show only the last four characters of a payment reference on paper."""
    if reference is None:
        return None
    return reference if len(reference) <= 4 else "•" * (len(reference) - 4) + reference[-4:]


def zone_label(at: datetime) -> str:
    """The abbreviation of an aware time's zone (``HST``, ``CST``), or its UTC offset
    (``UTC+13:00``) where the zone has no letters for it (``+13``)."""
    name = at.tzname() or ""
    if name.isalpha():
        return name
    offset = at.utcoffset()
    minutes = int(offset.total_seconds() // 60) if offset is not None else 0
    sign = "-" if minutes < 0 else "+"
    hours, rest = divmod(abs(minutes), 60)
    return f"UTC{sign}{hours:02d}:{rest:02d}"


def clock_text(at: datetime) -> str:
    """An aware time as a receipt prints it: ``2026-03-02 23:30 HST``."""
    return f"{at:%Y-%m-%d %H:%M} {zone_label(at)}"


def receipt(clinic_id: str, account_: Account, entry_id: str,
            heading: ReceiptHeading | None = None) -> Receipt:
    """The receipt for a payment or refund entry of ``account_`` (``NotFound`` naming the
    entry and the visit otherwise). ``heading``: the clinic's name, zone and the visit's
    provider (default: the clinic id, UTC, no provider)."""
    heading = heading or ReceiptHeading(clinic_id, "UTC")
    posted = account_.find(entry_id)
    if posted is None or not isinstance(posted.entry, PaymentRecorded | PaymentRefunded):
        raise NotFound(f"no payment or refund {entry_id} on visit {account_.visit_id} of "
                       f"clinic {clinic_id}")
    entry = posted.entry
    local = posted.occurred_at.astimezone(ZoneInfo(heading.timezone))
    return Receipt(
        receipt_number=entry_id,
        kind="payment" if isinstance(entry, PaymentRecorded) else "refund",
        clinic_id=clinic_id, clinic_name=heading.clinic_name, visit_id=account_.visit_id,
        patient_ref=account_.patient_ref, provider_id=heading.provider_id,
        provider_name=heading.provider_name,
        method=entry.method, amount_cents=entry.amount_cents,
        reference=mask_reference(entry.reference) if isinstance(entry, PaymentRecorded)
        else None,
        made_at=local, timezone=heading.timezone, business_date=local.date(),
        made_by=entry.made_by, reason=entry.reason,
        voided=not account_.is_active(posted),
        refunds_payment=entry.payment_entry_id if isinstance(entry, PaymentRefunded) else None,
        lines=tuple(account_.lines), charges_cents=account_.charges_cents,
        patient_share_cents=account_.patient_share_cents,
        insurance_cents=account_.insurance_cents, paid_cents=account_.paid_cents,
        refunded_cents=account_.refunded_cents, balance_cents=account_.balance_cents)
