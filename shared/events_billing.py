"""Ledger events owned by the billing service (registered with ``register_event``).

Every fact about money is one entry on the ledger topic (``clinicflow.ledger.v1``,
keyed by ``clinic_id`` so a clinic's money stays in order on one partition).
Entries are never edited: a mistake is corrected by a compensating entry (a
refund, a void). Each entry carries

* ``entry_id``: its identity; the envelope's ``event_id`` is the same value, and
  the ledger projection applies an id once, whatever the number of copies;
* ``reason``: why it was made, in the clinic's words;
* ``made_by``: the credential that made it (a credential name, never a person's
  name), or ``system:billing`` for entries the service derives itself;
* amounts in integer cents.

Patients appear only as the pseudonymous ``patient_ref``. No member ids, plan
names or diagnosis codes are kept on the ledger (it is retained for ever).
"""

from __future__ import annotations

from datetime import date
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.events import Payload, register_event

PaymentMethod = Literal["cash", "check", "card"]
PAYMENT_METHODS: tuple[PaymentMethod, ...] = ("cash", "check", "card")

_ID = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
CPT_PATTERN = r"^[0-9]{4}[0-9A-Z]$"
MAX_CENTS = 100_000_000  # one million dollars: far above any one entry at a clinic desk
MAX_CHARGE_LINES = 30  # services priced on one charge
SYSTEM = "system:billing"


class LedgerEntry(Payload):
    """What every ledger entry has: its id, why it was made and who made it."""

    entry_id: str = Field(pattern=_ID, description="unique; equals the envelope's event_id")
    reason: str = Field(min_length=1, max_length=200)
    made_by: str = Field(
        min_length=1, max_length=80, description="credential name, or system:billing"
    )


class ChargeLine(BaseModel):
    """One service rendered, priced from the clinic's fee schedule."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    cpt_code: str = Field(pattern=CPT_PATTERN)
    description: str = Field(default="", max_length=120)
    fee_cents: int = Field(ge=0, le=MAX_CENTS)


@register_event("charge.posted", 1)
class ChargePosted(LedgerEntry):
    """A visit's services, priced at checkout: the gross charge (payer + patient)."""

    visit_id: str = Field(pattern=_ID)
    patient_ref: str | None = Field(default=None, pattern=_ID)
    checkout_event_id: str = Field(min_length=1, max_length=64)
    lines: list[ChargeLine] = Field(min_length=1, max_length=MAX_CHARGE_LINES)
    amount_cents: int = Field(ge=0, le=MAX_CHARGE_LINES * MAX_CENTS)

    @model_validator(mode="after")
    def _amount_is_the_sum_of_lines(self) -> ChargePosted:
        total = sum(line.fee_cents for line in self.lines)
        if total != self.amount_cents:
            raise ValueError(f"amount_cents {self.amount_cents} is not the sum of lines {total}")
        return self


@register_event("patient_share.posted", 1)
class PatientSharePosted(LedgerEntry):
    """What the patient owes for a charge after coverage (the rest is the payer's)."""

    visit_id: str = Field(pattern=_ID)
    patient_ref: str | None = Field(default=None, pattern=_ID)
    charge_entry_id: str = Field(pattern=_ID)
    coverage_entry_id: str | None = Field(default=None, pattern=_ID, description="null: self-pay")
    amount_cents: int = Field(ge=0, le=30 * MAX_CENTS)
    copay_cents: int = Field(default=0, ge=0)
    deductible_cents: int = Field(default=0, ge=0)
    coinsurance_cents: int = Field(default=0, ge=0)


@register_event("coverage.recorded", 1)
class CoverageRecorded(LedgerEntry):
    """The patient's cost-sharing for a visit, captured at check-in (no member ids)."""

    visit_id: str = Field(pattern=_ID)
    patient_ref: str | None = Field(default=None, pattern=_ID)
    copay_cents: int = Field(default=0, ge=0, le=MAX_CENTS)
    coinsurance_basis_points: int = Field(
        default=0, ge=0, le=10_000, description="coinsurance in 1/100 of a percent: 20% = 2000"
    )
    deductible_remaining_cents: int = Field(default=0, ge=0, le=MAX_CENTS)
    self_pay: bool = Field(default=False, description="no coverage: the patient pays it all")


@register_event("payment.recorded", 1)
class PaymentRecorded(LedgerEntry):
    """Money taken at the desk for a visit."""

    visit_id: str = Field(pattern=_ID)
    patient_ref: str | None = Field(default=None, pattern=_ID)
    method: PaymentMethod
    amount_cents: int = Field(gt=0, le=MAX_CENTS)
    reference: str | None = Field(
        default=None, max_length=40, description="check number or card authorization reference"
    )


@register_event("payment.refunded", 1)
class PaymentRefunded(LedgerEntry):
    """Money given back, against one payment, by the payment's method."""

    visit_id: str = Field(pattern=_ID)
    patient_ref: str | None = Field(default=None, pattern=_ID)
    payment_entry_id: str = Field(pattern=_ID)
    method: PaymentMethod
    amount_cents: int = Field(gt=0, le=MAX_CENTS)


@register_event("entry.voided", 1)
class EntryVoided(LedgerEntry):
    """An earlier entry made in error no longer counts (it stays on the ledger)."""

    voided_entry_id: str = Field(pattern=_ID)
    voided_event_type: str = Field(min_length=1, max_length=64)
    visit_id: str | None = Field(default=None, pattern=_ID)
    patient_ref: str | None = Field(default=None, pattern=_ID)


@register_event("ledger.drawer_counted", 1)
class DrawerCounted(LedgerEntry):
    """Totals counted at the end of a clinic's day, per method (null: not counted).

    Cash is the drawer, checks the checks in hand, card the terminal's batch total.
    The latest count for a day is the one reconciliation uses.
    """

    business_date: date
    cash_cents: int | None = Field(default=None, ge=0, le=100 * MAX_CENTS)
    check_cents: int | None = Field(default=None, ge=0, le=100 * MAX_CENTS)
    card_cents: int | None = Field(default=None, ge=0, le=100 * MAX_CENTS)


LEDGER_EVENT_TYPES: frozenset[str] = frozenset(
    {
        "charge.posted",
        "patient_share.posted",
        "coverage.recorded",
        "payment.recorded",
        "payment.refunded",
        "entry.voided",
        "ledger.drawer_counted",
    }
)
# entries a manager may void (coverage is replaced by recording it again; a count by recounting)
VOIDABLE: frozenset[str] = frozenset(
    {"charge.posted", "patient_share.posted", "payment.recorded", "payment.refunded"}
)
