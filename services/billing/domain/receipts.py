"""Receipts: a payment or refund with the visit's account after it, the payment
reference masked to its last four characters."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from services.billing.domain.accounts import Account
from shared.errors import NotFound
from shared.events_billing import ChargeLine, PaymentMethod, PaymentRecorded, PaymentRefunded


@dataclass(frozen=True)
class Receipt:
    """A payment or refund, with the visit's account after it."""

    receipt_number: str
    kind: Literal["payment", "refund"]
    clinic_id: str
    visit_id: str
    patient_ref: str | None
    method: PaymentMethod
    amount_cents: int
    reference: str | None
    made_at: datetime
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


def receipt(clinic_id: str, account_: Account, entry_id: str) -> Receipt:
    """The receipt for a payment or refund entry of ``account_``."""
    posted = account_.find(entry_id)
    if posted is None or not isinstance(posted.entry, PaymentRecorded | PaymentRefunded):
        raise NotFound(f"no payment or refund {entry_id} on visit {account_.visit_id}")
    entry = posted.entry
    return Receipt(
        receipt_number=entry_id,
        kind="payment" if isinstance(entry, PaymentRecorded) else "refund",
        clinic_id=clinic_id, visit_id=account_.visit_id, patient_ref=account_.patient_ref,
        method=entry.method, amount_cents=entry.amount_cents,
        reference=mask_reference(entry.reference) if isinstance(entry, PaymentRecorded)
        else None,
        made_at=posted.occurred_at, made_by=entry.made_by, reason=entry.reason,
        voided=not account_.is_active(posted),
        refunds_payment=entry.payment_entry_id if isinstance(entry, PaymentRefunded) else None,
        lines=tuple(account_.lines), charges_cents=account_.charges_cents,
        patient_share_cents=account_.patient_share_cents,
        insurance_cents=account_.insurance_cents, paid_cents=account_.paid_cents,
        refunded_cents=account_.refunded_cents, balance_cents=account_.balance_cents)
