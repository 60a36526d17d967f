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

from datetime import date
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Path, Query
from fastapi.responses import HTMLResponse, PlainTextResponse

from services.billing import views
from services.billing.desk import Desk, new_entry_id
from services.billing.schemas import (
    ID_PATTERN,
    Checkout,
    CoverageIn,
    DrawerCountIn,
    PaymentIn,
    RefundIn,
    VoidIn,
)
from shared.auth import Principal, require_role
from shared.errors import NotFound
from shared.refusals import REFUSALS

ClinicId = Annotated[str, Path(pattern=ID_PATTERN, examples=["north"])]
VisitId = Annotated[str, Path(pattern=ID_PATTERN, examples=["v-20260302-017"])]
EntryId = Annotated[str, Path(pattern=ID_PATTERN)]
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=200)]

desk_staff = require_role("billing", "front_desk", "manager")
billing_staff = require_role("billing")
managers = require_role("manager")
counters = require_role("billing", "manager")
readers = require_role("billing", "front_desk", "manager")


def make_router(desk: Desk) -> APIRouter:
    """The routes; a refusal the desk raises (``shared.errors``) is answered by the
    service's one handler (404, 409, 422 or 503 with ``{"detail", "code"}``)."""
    router = APIRouter(responses=REFUSALS)

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
        result = await desk.checkout(clinic_id, visit_id, cpt_codes=body.cpt_codes,
                                     icd10_codes=body.icd10_codes,
                                     patient_ref=body.patient_ref, made_by=principal.name)
        return {"event_id": result.checkout_event_id, "visit_id": visit_id,
                "outcome": result.outcome, "posted": list(result.entries),
                "replayed": result.outcome == "duplicate",
                "account": views.account_json(result.account)}

    @router.put("/clinics/{clinic_id}/visits/{visit_id}/coverage", tags=["coverage"],
                summary="Record the visit's coverage (copay, coinsurance, deductible)")
    async def coverage(clinic_id: ClinicId, visit_id: VisitId, body: CoverageIn,
                       idempotency_key: IdempotencyKey = None,
                       principal: Principal = Depends(desk_staff)) -> Any:
        principal.require_clinic(clinic_id)
        account, replayed = await desk.record_coverage(
            clinic_id, visit_id, entry_id=new_entry_id("cov", clinic_id, visit_id,
                                                       idempotency_key),
            patient_ref=body.patient_ref, copay_cents=body.copay_cents,
            coinsurance_basis_points=body.coinsurance_basis_points,
            deductible_remaining_cents=body.deductible_remaining_cents,
            self_pay=body.self_pay, made_by=principal.name)
        return {**views.account_json(account), "replayed": replayed}

    @router.post("/clinics/{clinic_id}/visits/{visit_id}/payments", status_code=201,
                 tags=["payments"], summary="Record a payment (cash, check, card reference)")
    async def pay(clinic_id: ClinicId, visit_id: VisitId, body: PaymentIn,
                  idempotency_key: IdempotencyKey = None,
                  principal: Principal = Depends(billing_staff)) -> Any:
        principal.require_clinic(clinic_id)
        receipt, replayed = await desk.pay(
            clinic_id, visit_id,
            entry_id=new_entry_id("pay", clinic_id, visit_id, idempotency_key),
            method=body.method, amount_cents=body.amount_cents, reference=body.reference,
            reason=body.reason, made_by=principal.name)
        return {**views.receipt_json(receipt), "replayed": replayed}

    @router.post("/clinics/{clinic_id}/visits/{visit_id}/payments/{payment_id}/refunds",
                 status_code=201, tags=["payments"], summary="Refund (part of) a payment")
    async def refund(clinic_id: ClinicId, visit_id: VisitId, payment_id: EntryId,
                     body: RefundIn, idempotency_key: IdempotencyKey = None,
                     principal: Principal = Depends(billing_staff)) -> Any:
        principal.require_clinic(clinic_id)
        receipt, replayed = await desk.refund(
            clinic_id, visit_id,
            entry_id=new_entry_id("rfd", clinic_id, visit_id, idempotency_key),
            payment_entry_id=payment_id, amount_cents=body.amount_cents,
            reason=body.reason, made_by=principal.name)
        return {**views.receipt_json(receipt), "replayed": replayed}

    @router.post("/clinics/{clinic_id}/visits/{visit_id}/entries/{entry_id}/void",
                 tags=["payments"], summary="Void an entry made in error (managers)")
    async def void(clinic_id: ClinicId, visit_id: VisitId, entry_id: EntryId, body: VoidIn,
                   idempotency_key: IdempotencyKey = None,
                   principal: Principal = Depends(managers)) -> Any:
        principal.require_clinic(clinic_id)
        account, replayed = await desk.void(
            clinic_id, visit_id, target_entry_id=entry_id,
            void_id=new_entry_id("void", clinic_id, visit_id, idempotency_key),
            reason=body.reason, made_by=principal.name)
        return {**views.account_json(account), "replayed": replayed}

    @router.post("/clinics/{clinic_id}/visits/{visit_id}/reprice", tags=["checkout"],
                 summary="Re-price the patient's share under the latest coverage")
    async def reprice(clinic_id: ClinicId, visit_id: VisitId, body: VoidIn,
                      idempotency_key: IdempotencyKey = None,
                      principal: Principal = Depends(counters)) -> Any:
        """Coverage recorded or corrected after checkout: the standing share is voided and
        posted again from the charge and the latest coverage."""
        principal.require_clinic(clinic_id)
        account, replayed = await desk.reprice(
            clinic_id, visit_id,
            command_id=new_entry_id("rep", clinic_id, visit_id, idempotency_key),
            reason=body.reason, made_by=principal.name)
        return {**views.account_json(account), "replayed": replayed}

    @router.get("/clinics/{clinic_id}/visits/{visit_id}/account", tags=["balances"],
                summary="A visit's charges, share, payments and balance")
    async def visit_account(clinic_id: ClinicId, visit_id: VisitId,
                            principal: Principal = Depends(readers)) -> Any:
        principal.require_clinic(clinic_id)
        account = await desk.account(clinic_id, visit_id)
        if not account.entries:
            raise NotFound(f"visit {visit_id} has nothing on the ledger of clinic {clinic_id}")
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
        found = await desk.receipt(clinic_id, visit_id, entry_id)
        if format == "html":
            return HTMLResponse(views.receipt_html(found))
        return views.receipt_json(found)

    @router.post("/clinics/{clinic_id}/drawer-counts", status_code=201, tags=["reports"],
                 summary="Declare the end-of-day count per method")
    async def count_drawer(clinic_id: ClinicId, body: DrawerCountIn,
                           idempotency_key: IdempotencyKey = None,
                           principal: Principal = Depends(counters)) -> Any:
        principal.require_clinic(clinic_id)
        entry_id = new_entry_id("cnt", clinic_id, body.business_date.isoformat(),
                                idempotency_key)
        replayed = await desk.count_drawer(clinic_id, entry_id=entry_id,
                                           business_date=body.business_date,
                                           counted={"cash": body.cash_cents,
                                                    "check": body.check_cents,
                                                    "card": body.card_cents},
                                           made_by=principal.name)
        return {"entry_id": entry_id, "replayed": replayed}

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
