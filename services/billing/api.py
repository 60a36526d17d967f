"""The billing service's HTTP API: checkout desk, coverage, payments, refunds, voids,
balances, receipts and end-of-day reconciliation. Routes are thin: the desk decides.

Roles: checkout and coverage by billing, front desk or manager; payments and refunds
by billing staff; voids and reports by managers; drawer counts and re-pricing by
billing or managers.

Every command honours ``Idempotency-Key`` on the ledger itself rather than with a
pending marker in Redis: the entry id derives from the key (the checkout's from the
visit), so a retry, even one after a crash, posts nothing twice and answers
``"replayed": true``; the same key for a different request is a 422.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import date
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query
from fastapi.responses import HTMLResponse, PlainTextResponse
from pydantic import BaseModel, Field

from services.billing import domain as d
from services.billing import views
from services.billing.desk import Desk, new_entry_id
from shared.auth import Principal, require_role
from shared.events_billing import CPT_PATTERN, MAX_CENTS, PaymentMethod
from shared.refusals import REFUSALS

_ID = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
ClinicId = Annotated[str, Path(pattern=_ID, examples=["north"])]
VisitId = Annotated[str, Path(pattern=_ID, examples=["v-20260302-017"])]
EntryId = Annotated[str, Path(pattern=_ID)]
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=200)]

desk_staff = require_role("billing", "front_desk", "manager")
billing_staff = require_role("billing")
managers = require_role("manager")
counters = require_role("billing", "manager")
readers = require_role("billing", "front_desk", "manager")


class Checkout(BaseModel):
    cpt_codes: list[Annotated[str, Field(pattern=CPT_PATTERN)]] = Field(
        default_factory=list, max_length=30, examples=[["99213"]])
    icd10_codes: list[Annotated[str, Field(pattern=d.ICD10_PATTERN)]] = Field(
        default_factory=list, max_length=30, examples=[["J06.9"]],
        description="format-checked; on the floor event only, never on the ledger")
    patient_ref: str | None = Field(default=None, pattern=_ID,
                                    description="pseudonymous; never a name or member id")


class CoverageIn(BaseModel):
    """Cost-sharing captured at check-in (no member ids, no plan names)."""

    patient_ref: str | None = Field(default=None, pattern=_ID)
    copay_cents: int = Field(default=0, ge=0, le=MAX_CENTS)
    coinsurance_basis_points: int = Field(default=0, ge=0, le=10_000,
                                          description="20% = 2000")
    deductible_remaining_cents: int = Field(default=0, ge=0, le=MAX_CENTS)
    self_pay: bool = False


class PaymentIn(BaseModel):
    method: PaymentMethod
    amount_cents: int = Field(gt=0, le=MAX_CENTS, examples=[2500])
    reference: str | None = Field(default=None, max_length=40,
                                  description="check number or card authorization reference")
    reason: str = Field(default="payment at the desk", min_length=1, max_length=200)


class RefundIn(BaseModel):
    amount_cents: int = Field(gt=0, le=MAX_CENTS)
    reason: str = Field(min_length=1, max_length=200, examples=["overpaid copay"])


class VoidIn(BaseModel):
    """Why (a void, a re-price): kept on the ledger entry."""

    reason: str = Field(min_length=1, max_length=200, examples=["keyed twice"])


class DrawerCountIn(BaseModel):
    business_date: date
    cash_cents: int | None = Field(default=None, ge=0, le=100 * MAX_CENTS)
    check_cents: int | None = Field(default=None, ge=0, le=100 * MAX_CENTS)
    card_cents: int | None = Field(default=None, ge=0, le=100 * MAX_CENTS)


Action = Callable[[], Awaitable[tuple[int, Any]]]


def make_router(desk: Desk) -> APIRouter:
    router = APIRouter(responses=REFUSALS)

    async def once(action: Action) -> Any:
        """Run a command; refusals become 4xx naming the problem."""
        try:
            return (await action())[1]
        except d.Refused as exc:
            raise HTTPException(exc.status, detail=exc.message) from None

    @router.post("/clinics/{clinic_id}/visits/{visit_id}/checkout", status_code=202,
                 tags=["checkout"], summary="Check a patient out: price the visit, end it")
    async def checkout(clinic_id: ClinicId, visit_id: VisitId, body: Checkout,
                       idempotency_key: IdempotencyKey = None,
                       principal: Principal = Depends(desk_staff)) -> Any:
        """Prices the visit from the clinic's fee schedule and its coverage, posts the charge
        and the patient's share on the ledger (once per visit, whatever the retries), then
        publishes ``patient.checked_out`` (its room goes to cleaning). Unknown CPT code: 422,
        nothing published."""
        principal.require_clinic(clinic_id)

        async def act() -> tuple[int, Any]:
            result = await desk.checkout(clinic_id, visit_id, cpt_codes=body.cpt_codes,
                                         icd10_codes=body.icd10_codes,
                                         patient_ref=body.patient_ref, made_by=principal.name)
            return 202, {"event_id": result.checkout_event_id, "visit_id": visit_id,
                         "outcome": result.outcome, "posted": list(result.entries),
                         "replayed": result.outcome == "duplicate",
                         "account": views.account_json(result.account)}

        return await once(act)

    @router.put("/clinics/{clinic_id}/visits/{visit_id}/coverage", tags=["coverage"],
                summary="Record the visit's coverage (copay, coinsurance, deductible)")
    async def coverage(clinic_id: ClinicId, visit_id: VisitId, body: CoverageIn,
                       idempotency_key: IdempotencyKey = None,
                       principal: Principal = Depends(desk_staff)) -> Any:
        principal.require_clinic(clinic_id)

        async def act() -> tuple[int, Any]:
            account, replayed = await desk.record_coverage(
                clinic_id, visit_id, entry_id=new_entry_id("cov", clinic_id, visit_id,
                                                           idempotency_key),
                patient_ref=body.patient_ref, copay_cents=body.copay_cents,
                coinsurance_basis_points=body.coinsurance_basis_points,
                deductible_remaining_cents=body.deductible_remaining_cents,
                self_pay=body.self_pay, made_by=principal.name)
            return 200, {**views.account_json(account), "replayed": replayed}

        return await once(act)

    @router.post("/clinics/{clinic_id}/visits/{visit_id}/payments", status_code=201,
                 tags=["payments"], summary="Record a payment (cash, check, card reference)")
    async def pay(clinic_id: ClinicId, visit_id: VisitId, body: PaymentIn,
                  idempotency_key: IdempotencyKey = None,
                  principal: Principal = Depends(billing_staff)) -> Any:
        principal.require_clinic(clinic_id)

        async def act() -> tuple[int, Any]:
            receipt, replayed = await desk.pay(
                clinic_id, visit_id,
                entry_id=new_entry_id("pay", clinic_id, visit_id, idempotency_key),
                method=body.method, amount_cents=body.amount_cents, reference=body.reference,
                reason=body.reason, made_by=principal.name)
            return 201, {**views.receipt_json(receipt), "replayed": replayed}

        return await once(act)

    @router.post("/clinics/{clinic_id}/visits/{visit_id}/payments/{payment_id}/refunds",
                 status_code=201, tags=["payments"], summary="Refund (part of) a payment")
    async def refund(clinic_id: ClinicId, visit_id: VisitId, payment_id: EntryId,
                     body: RefundIn, idempotency_key: IdempotencyKey = None,
                     principal: Principal = Depends(billing_staff)) -> Any:
        principal.require_clinic(clinic_id)

        async def act() -> tuple[int, Any]:
            receipt, replayed = await desk.refund(
                clinic_id, visit_id,
                entry_id=new_entry_id("rfd", clinic_id, visit_id, idempotency_key),
                payment_entry_id=payment_id, amount_cents=body.amount_cents,
                reason=body.reason, made_by=principal.name)
            return 201, {**views.receipt_json(receipt), "replayed": replayed}

        return await once(act)

    @router.post("/clinics/{clinic_id}/visits/{visit_id}/entries/{entry_id}/void",
                 tags=["payments"], summary="Void an entry made in error (managers)")
    async def void(clinic_id: ClinicId, visit_id: VisitId, entry_id: EntryId, body: VoidIn,
                   idempotency_key: IdempotencyKey = None,
                   principal: Principal = Depends(managers)) -> Any:
        principal.require_clinic(clinic_id)

        async def act() -> tuple[int, Any]:
            account, replayed = await desk.void(
                clinic_id, visit_id, target_entry_id=entry_id,
                void_id=new_entry_id("void", clinic_id, visit_id, idempotency_key),
                reason=body.reason, made_by=principal.name)
            return 200, {**views.account_json(account), "replayed": replayed}

        return await once(act)

    @router.post("/clinics/{clinic_id}/visits/{visit_id}/reprice", tags=["checkout"],
                 summary="Re-price the patient's share under the latest coverage")
    async def reprice(clinic_id: ClinicId, visit_id: VisitId, body: VoidIn,
                      idempotency_key: IdempotencyKey = None,
                      principal: Principal = Depends(counters)) -> Any:
        """Coverage recorded or corrected after checkout: the standing share is voided and
        posted again from the charge and the latest coverage."""
        principal.require_clinic(clinic_id)

        async def act() -> tuple[int, Any]:
            account, replayed = await desk.reprice(
                clinic_id, visit_id,
                command_id=new_entry_id("rep", clinic_id, visit_id, idempotency_key),
                reason=body.reason, made_by=principal.name)
            return 200, {**views.account_json(account), "replayed": replayed}

        return await once(act)

    @router.get("/clinics/{clinic_id}/visits/{visit_id}/account", tags=["balances"],
                summary="A visit's charges, share, payments and balance")
    async def visit_account(clinic_id: ClinicId, visit_id: VisitId,
                            principal: Principal = Depends(readers)) -> Any:
        principal.require_clinic(clinic_id)
        account = await desk.account(clinic_id, visit_id)
        if not account.entries:
            raise HTTPException(404, detail=f"visit {visit_id} has nothing on the ledger "
                                f"of clinic {clinic_id}")
        return views.account_json(account)

    @router.get("/clinics/{clinic_id}/patients/{patient_ref}/balance", tags=["balances"],
                summary="A pseudonymous patient's balance over their visits")
    async def patient_balance(clinic_id: ClinicId, patient_ref: EntryId,
                              principal: Principal = Depends(readers)) -> Any:
        principal.require_clinic(clinic_id)
        accounts = await desk.patient_accounts(clinic_id, patient_ref)
        return {"patient_ref": patient_ref,
                "balance_cents": sum(a.balance_cents for a in accounts),
                "visits": [{"visit_id": a.visit_id, "balance_cents": a.balance_cents}
                           for a in accounts]}

    @router.get("/clinics/{clinic_id}/visits/{visit_id}/receipts/{entry_id}",
                tags=["payments"], summary="Receipt for a payment or refund (JSON or HTML)",
                responses={200: {"content": {"application/json": {}, "text/html": {}}}})
    async def receipt(clinic_id: ClinicId, visit_id: VisitId, entry_id: EntryId,
                      format: Literal["json", "html"] = "json",
                      principal: Principal = Depends(readers)) -> Any:
        principal.require_clinic(clinic_id)
        try:
            found = await desk.receipt(clinic_id, visit_id, entry_id)
        except d.Refused as exc:
            raise HTTPException(exc.status, detail=exc.message) from None
        if format == "html":
            return HTMLResponse(views.receipt_html(found))
        return views.receipt_json(found)

    @router.post("/clinics/{clinic_id}/drawer-counts", status_code=201, tags=["reports"],
                 summary="Declare the end-of-day count per method")
    async def count_drawer(clinic_id: ClinicId, body: DrawerCountIn,
                           idempotency_key: IdempotencyKey = None,
                           principal: Principal = Depends(counters)) -> Any:
        principal.require_clinic(clinic_id)

        async def act() -> tuple[int, Any]:
            entry_id = new_entry_id("cnt", clinic_id, body.business_date.isoformat(),
                                    idempotency_key)
            replayed = await desk.count_drawer(clinic_id, entry_id=entry_id,
                                    business_date=body.business_date,
                                    counted={"cash": body.cash_cents,
                                             "check": body.check_cents,
                                             "card": body.card_cents},
                                    made_by=principal.name)
            return 201, {"entry_id": entry_id, "replayed": replayed}

        return await once(act)

    @router.get("/clinics/{clinic_id}/reconciliation", tags=["reports"],
                summary="End-of-day reconciliation (JSON, CSV or HTML)",
                responses={200: {"content": {"application/json": {}, "text/csv": {},
                                             "text/html": {}}}})
    async def reconciliation(clinic_id: ClinicId,
                             day: Annotated[date, Query(alias="date")],
                             format: Literal["json", "csv", "html"] = "json",
                             principal: Principal = Depends(managers)) -> Any:
        principal.require_clinic(clinic_id)
        report = await desk.reconciliation(clinic_id, day)
        if format == "csv":
            return PlainTextResponse(
                views.reconciliation_csv(report), media_type="text/csv",
                headers={"Content-Disposition":
                         f'attachment; filename="reconciliation-{clinic_id}-{day}.csv"'})
        if format == "html":
            return HTMLResponse(views.reconciliation_html(report))
        return views.reconciliation_json(report)

    return router
