"""The request bodies of billing's HTTP API (pydantic: a bad field is a 422 naming it).
Amounts and flags are strict: ``"1000"`` for an amount or ``"true"`` for a flag is a 422
naming the field, never read as a number or a yes."""

from __future__ import annotations

from datetime import date
from typing import Annotated

from pydantic import BaseModel, Field

from services.billing.domain.pricing import ICD10_PATTERN
from shared.events_billing import CPT_PATTERN, MAX_CENTS, PaymentMethod

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"


class Checkout(BaseModel):
    """What the visit is charged for (its diagnosis codes go on the floor event only)."""

    cpt_codes: list[Annotated[str, Field(pattern=CPT_PATTERN)]] = Field(
        default_factory=list, max_length=30, examples=[["99213"]])
    icd10_codes: list[Annotated[str, Field(pattern=ICD10_PATTERN)]] = Field(
        default_factory=list, max_length=30, examples=[["J06.9"]],
        description="format-checked; on the floor event only, never on the ledger")
    patient_ref: str | None = Field(default=None, pattern=ID_PATTERN,
                                    description="pseudonymous; never a name or member id")


class CoverageIn(BaseModel):
    """Cost-sharing captured at check-in (no member ids, no plan names)."""

    patient_ref: str | None = Field(default=None, pattern=ID_PATTERN)
    copay_cents: int = Field(default=0, strict=True, ge=0, le=MAX_CENTS)
    coinsurance_basis_points: int = Field(default=0, strict=True, ge=0, le=10_000,
                                          description="20% = 2000")
    deductible_remaining_cents: int = Field(default=0, strict=True, ge=0, le=MAX_CENTS)
    self_pay: bool = Field(default=False, strict=True)


class PaymentIn(BaseModel):
    method: PaymentMethod
    amount_cents: int = Field(strict=True, gt=0, le=MAX_CENTS, examples=[2500])
    reference: str | None = Field(default=None, max_length=40,
                                  description="check number or card authorization reference")
    reason: str = Field(default="payment at the desk", min_length=1, max_length=200)


class RefundIn(BaseModel):
    amount_cents: int = Field(strict=True, gt=0, le=MAX_CENTS)
    reason: str = Field(min_length=1, max_length=200, examples=["overpaid copay"])


class VoidIn(BaseModel):
    """Why (a void, a re-price): kept on the ledger entry."""

    reason: str = Field(min_length=1, max_length=200, examples=["keyed twice"])


class DrawerCountIn(BaseModel):
    business_date: date
    cash_cents: int | None = Field(default=None, strict=True, ge=0, le=100 * MAX_CENTS)
    check_cents: int | None = Field(default=None, strict=True, ge=0, le=100 * MAX_CENTS)
    card_cents: int | None = Field(default=None, strict=True, ge=0, le=100 * MAX_CENTS)
