"""Payments, refunds and voids: what each command posts on a visit's account, or why
the ledger cannot take it."""

from __future__ import annotations

import re

from services.billing.domain.accounts import Account, Posted
from services.billing.domain.money import format_cents, stable_id
from shared.errors import Conflict, NotFound, Rejected
from shared.events_billing import (
    PAYMENT_METHODS,
    VOIDABLE,
    ChargePosted,
    EntryVoided,
    PatientSharePosted,
    PaymentMethod,
    PaymentRecorded,
    PaymentRefunded,
)

_CARD_NUMBER = re.compile(r"[0-9][0-9 -]{10,}[0-9]")
_REFERENCE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 #./_-]{0,39}$")


def check_reference(method: PaymentMethod, reference: str | None) -> str | None:
    """The reference to keep for a payment; refuses a card number (never stored)."""
    reference = (reference or "").strip() or None
    if reference is not None:
        if _CARD_NUMBER.search(reference):
            raise Rejected("reference looks like a card number: keep only the terminal's "
                           "authorization reference or the last 4 digits")
        if not _REFERENCE.match(reference):
            raise Rejected("reference: 1-40 letters, digits, spaces or # . / _ -")
    if method in ("check", "card") and reference is None:
        what = "the check number" if method == "check" else "the card authorization reference"
        raise Rejected(f"a {method} payment needs a reference ({what})")
    return reference


def plan_payment(account: Account, *, entry_id: str, method: PaymentMethod, amount_cents: int,
                 reference: str | None, reason: str, made_by: str,
                 patient_ref: str | None = None) -> PaymentRecorded:
    """A payment for the visit. Paying before the visit is priced (a copay at check-in) or
    more than the balance is allowed: the excess shows as a credit to refund. Whose it is:
    the ledger's patient of the visit, else ``patient_ref`` (the arrival's)."""
    if method not in PAYMENT_METHODS:
        raise Rejected(f"unknown payment method {method!r}")
    if amount_cents <= 0:
        raise Rejected("amount_cents must be more than 0")
    return PaymentRecorded(entry_id=entry_id, visit_id=account.visit_id,
                           patient_ref=account.patient_ref or patient_ref, method=method,
                           amount_cents=amount_cents,
                           reference=check_reference(method, reference),
                           reason=reason, made_by=made_by)


def plan_refund(account: Account, *, entry_id: str, payment_entry_id: str, amount_cents: int,
                reason: str, made_by: str) -> PaymentRefunded:
    """A refund of (part of) one payment, by that payment's method."""
    posted = account.find(payment_entry_id)
    if posted is None or not isinstance(posted.entry, PaymentRecorded):
        raise NotFound(f"no payment {payment_entry_id} on visit {account.visit_id}")
    view = next(v for v in account.payments() if v.posted.entry_id == payment_entry_id)
    if view.voided:
        raise Conflict(f"payment {payment_entry_id} was voided: there is nothing to refund")
    if amount_cents <= 0:
        raise Rejected("amount_cents must be more than 0")
    if amount_cents > view.refundable_cents:
        raise Conflict(f"refund of {format_cents(amount_cents)} is more than the "
                       f"{format_cents(view.refundable_cents)} left to refund on payment "
                       f"{payment_entry_id}")
    return PaymentRefunded(entry_id=entry_id, visit_id=account.visit_id,
                           patient_ref=account.patient_ref, payment_entry_id=payment_entry_id,
                           method=view.payment.method, amount_cents=amount_cents,
                           reason=reason, made_by=made_by)


def plan_void(account: Account, *, target_entry_id: str, void_id: str, reason: str,
              made_by: str) -> list[EntryVoided]:
    """The voids that take ``target_entry_id`` out (a charge takes its share with it)."""
    target = account.find(target_entry_id)
    if target is None:
        raise NotFound(f"no entry {target_entry_id} on visit {account.visit_id}")
    if target.event_type not in VOIDABLE:
        raise Rejected(f"{target.event_type} entries cannot be voided "
                       "(record coverage again, or count the drawer again)")
    if not account.is_active(target):
        raise Conflict(f"entry {target_entry_id} is already voided")
    if isinstance(target.entry, PaymentRecorded):
        view = next(v for v in account.payments() if v.posted.entry_id == target_entry_id)
        if view.refunded_cents:
            raise Conflict(f"payment {target_entry_id} has refunds standing: void them first")
    return [_void(account, target, void_id, reason, made_by),
            *finish_void(account, target_entry_id=target_entry_id, void_id=void_id,
                         reason=reason, made_by=made_by)]


def finish_void(account: Account, *, target_entry_id: str, void_id: str, reason: str,
                made_by: str) -> list[EntryVoided]:
    """What a charge's void takes with it that still stands: its patient shares (the
    same void ids as ``plan_void`` gives them, so nothing is voided twice)."""
    target = account.find(target_entry_id)
    if target is None or not isinstance(target.entry, ChargePosted):
        return []
    return [_void(account, share, stable_id("void", void_id, share.entry_id), reason,
                  made_by)
            for share in account.active(PatientSharePosted)
            if share.entry.charge_entry_id == target_entry_id]  # type: ignore[attr-defined]


def _void(account: Account, target: Posted, void_id: str, reason: str,
          made_by: str) -> EntryVoided:
    return EntryVoided(entry_id=void_id, voided_entry_id=target.entry_id,
                       voided_event_type=target.event_type, visit_id=account.visit_id,
                       patient_ref=account.patient_ref, reason=reason, made_by=made_by)
