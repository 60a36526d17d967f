"""Checkout pricing: the charge and patient share a checkout posts (ids derived from the
visit, so a retry posts the same ids), re-pricing under new coverage, and the voids of a
checkout undone on the floor."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from services.billing.domain.accounts import Account, Posted, account_with
from services.billing.domain.coverage import patient_share
from services.billing.domain.fee_schedule import FeeSchedule, UnknownServices
from services.billing.domain.money import stable_id
from shared.errors import Conflict
from shared.events_billing import (
    SYSTEM,
    ChargePosted,
    EntryVoided,
    LedgerEntry,
    PatientSharePosted,
)

ICD10_PATTERN = r"^[A-TV-Z][0-9][0-9A-Z](\.[0-9A-Z]{1,4})?$"


def share_entry(account: Account, charge: Posted, *, entry_id: str, reason: str,
                made_by: str) -> PatientSharePosted:
    """The patient's share of ``charge`` under the visit's latest coverage."""
    coverage = account.current_coverage()
    split = patient_share(charge.amount_cents, coverage)
    return PatientSharePosted(
        entry_id=entry_id, visit_id=account.visit_id, patient_ref=account.patient_ref,
        charge_entry_id=charge.entry_id,
        coverage_entry_id=coverage.entry_id if coverage and not coverage.self_pay else None,
        amount_cents=split.amount_cents, copay_cents=split.copay_cents,
        deductible_cents=split.deductible_cents, coinsurance_cents=split.coinsurance_cents,
        reason=reason, made_by=made_by)


def plan_reprice(account: Account, *, command_id: str, reason: str,
                 made_by: str) -> list[LedgerEntry]:
    """Void the visit's standing shares and post them again under its latest coverage."""
    charges = account.active(ChargePosted)
    if not charges:
        raise Conflict(f"visit {account.visit_id} has no charge standing: nothing to re-price")
    out: list[LedgerEntry] = []
    for share in account.active(PatientSharePosted):
        out.append(EntryVoided(
            entry_id=stable_id("void", command_id, share.entry_id),
            voided_entry_id=share.entry_id, voided_event_type=share.event_type,
            visit_id=account.visit_id, patient_ref=account.patient_ref,
            reason=reason, made_by=made_by))
    for charge in charges:
        out.append(share_entry(account, charge, entry_id=stable_id("shr", command_id,
                                                                   charge.entry_id),
                               reason=reason, made_by=made_by))
    return out


# ---------------------------------------------------------------- pricer


@dataclass(frozen=True)
class CheckoutDecision:
    """What a checkout does to the ledger: ``entries`` to post, or why nothing."""

    outcome: Literal["priced", "completed", "duplicate", "nothing_to_charge", "unpriceable"]
    entries: tuple[LedgerEntry, ...] = ()
    reason: str = ""


def charge_id_of(checkout_event_id: str) -> str:
    return stable_id("chg", checkout_event_id)


def share_id_of(checkout_event_id: str) -> str:
    return stable_id("shr", checkout_event_id)


def checkout_key(account: Account) -> str:
    """What a visit's next checkout derives its entry ids from: the visit itself, plus how
    many of its charges were voided (a visit re-checked-out after a void is charged anew).
    The same ledger state gives the same key, so a retried checkout posts the same ids."""
    voided_charges = sum(1 for p in account.entries
                         if isinstance(p.entry, ChargePosted) and not account.is_active(p))
    return account.visit_id if voided_charges == 0 else f"{account.visit_id}:{voided_charges}"


def price_checkout(schedule: FeeSchedule, account: Account, *, clinic_id: str,
                   checkout_event_id: str, cpt_codes: Sequence[str],
                   patient_ref: str | None, made_by: str = SYSTEM,
                   key: str | None = None) -> CheckoutDecision:
    """The charge and patient share a checkout posts, with ids derived from ``key``
    (default: the checkout's event id): posting them again (a duplicate request, a
    redelivery, a restart after a crash) posts the same ids, which the ledger applies once.

    ``account`` is the visit as the ledger stands. A checkout already on the ledger
    posts only what is missing of its pair; a visit already charged by another
    checkout is not charged again (undo that checkout first)."""
    charge_id = charge_id_of(key or checkout_event_id)
    share_id = share_id_of(key or checkout_event_id)
    mine = account.find(charge_id)
    if mine is not None:
        if account.find(share_id) is not None or not account.is_active(mine):
            return CheckoutDecision("duplicate", reason=f"checkout already priced ({charge_id})")
        share = share_entry(account, mine, entry_id=share_id, reason="checkout",
                            made_by=made_by)
        return CheckoutDecision("completed", (share,), "patient share was missing")
    standing = account.active(ChargePosted)
    if standing:
        return CheckoutDecision("duplicate", reason=(
            f"visit {account.visit_id} is already charged ({standing[0].entry_id}); "
            "undo that checkout or void its charge first"))
    if not cpt_codes:
        return CheckoutDecision("nothing_to_charge", reason="no services on the checkout")
    try:
        lines = schedule.lines(clinic_id, cpt_codes)
    except UnknownServices as exc:
        return CheckoutDecision("unpriceable", reason=exc.message)
    charge = ChargePosted(entry_id=charge_id, visit_id=account.visit_id,
                          patient_ref=patient_ref or account.patient_ref,
                          checkout_event_id=checkout_event_id, lines=lines,
                          amount_cents=sum(line.fee_cents for line in lines),
                          reason="checkout", made_by=made_by)
    posted = Posted(charge, "charge.posted", datetime.min, 1 << 62)
    with_charge = account_with(account, posted)
    share = share_entry(with_charge, posted, entry_id=share_id, reason="checkout",
                        made_by=made_by)
    return CheckoutDecision("priced", (charge, share))


def undo_checkout(account: Account, *, undone_event_id: str, undo_event_id: str,
                  made_by: str = SYSTEM) -> list[EntryVoided]:
    """Voids for a checkout that was undone on the floor: its charge and standing shares.
    Ids derive from the undo's event id, so a replayed undo voids nothing twice. The charge
    is looked for voided or not: an undo cut after its charge's void and before its share's
    (an instance that died between the two) voids the share when it is read again."""
    charge = next((p for p in account.entries if isinstance(p.entry, ChargePosted)
                   and p.entry.checkout_event_id == undone_event_id), None)
    if charge is None:
        return []
    targets = ([charge] if account.is_active(charge) else []) + [
        p for p in account.active(PatientSharePosted)
        if p.entry.charge_entry_id == charge.entry_id]  # type: ignore[attr-defined]
    return [EntryVoided(entry_id=stable_id("void", undo_event_id, p.entry_id),
                        voided_entry_id=p.entry_id, voided_event_type=p.event_type,
                        visit_id=account.visit_id, patient_ref=account.patient_ref,
                        reason="checkout undone on the floor", made_by=made_by)
            for p in targets]
