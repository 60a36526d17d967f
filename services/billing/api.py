"""The billing service's HTTP API: checkout desk, coverage, payments, refunds, voids,
balances, receipts and end-of-day reconciliation. Routes are thin: the desk decides.

Roles: checkout and coverage by billing, front desk or manager; payments and refunds
by billing staff; voids and reports by managers; drawer counts and re-pricing by
billing or managers.

No retry moves money twice (README, "Retries"). Payments and refunds require an
``Idempotency-Key`` (428 without one: two identical payments are two payments, so only
the key tells a retry from a second one); the entry id derives from the key, so a retry,
even one after a crash, posts nothing twice and answers ``"replayed": true``, and the
same key for a different request is a 422. The other commands are deduplicated on their
natural key (the visit, the entry voided, the standing coverage, the day's count) and
need no key.

Every command names what exists: a visit of another clinic or not checked in, an entry
or payment not on the visit, a day that has not begun is refused (404, 409, 422) before
anything is published.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Path, Query
from fastapi.responses import HTMLResponse, PlainTextResponse

from services.billing import views
from services.billing.desk import Desk, keyed_entry_id, required_key
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
from shared.refusals import REFUSALS, Refused

ClinicId = Annotated[str, Path(pattern=ID_PATTERN, examples=["north"])]
VisitId = Annotated[str, Path(pattern=ID_PATTERN, examples=["v-20260302-017"])]
EntryId = Annotated[str, Path(pattern=ID_PATTERN)]
KEY_HELP = ("a unique key per payment or refund (a UUID), sent again unchanged when the "
            "request is retried: the retry posts nothing and answers the first result")
# documented by hand on the routes that require it (428 rather than FastAPI's 422)
RequiredKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=200,
                                           include_in_schema=False)]
REQUIRED_KEY_DOC: dict[str, Any] = {"parameters": [{
    "name": "Idempotency-Key", "in": "header", "required": True, "description": KEY_HELP,
    "schema": {"type": "string", "minLength": 1, "maxLength": 200},
    "example": "3f6c2a1e-9b7d-4c1a-8e2f-0d5b6a7c8e91"}]}
KEY_REFUSALS: dict[int | str, dict[str, Any]] = {428: {
    "model": Refused, "description": "no Idempotency-Key header: nothing was recorded; "
    "send the request again with a new unique key"}}

desk_staff = require_role("billing", "front_desk", "manager")
billing_staff = require_role("billing")
managers = require_role("manager")
counters = require_role("billing", "manager")
readers = require_role("billing", "front_desk", "manager")


def make_router(desk: Desk) -> APIRouter:
    """The routes; a refusal the desk raises (``shared.errors``) is answered by the
    service's one handler (404, 409, 422, 428 or 503 with ``{"detail", "code"}``)."""
    router = APIRouter(responses=REFUSALS)

    def zone(clinic_id: str) -> str:
        return desk.clinic(clinic_id).zone.key

    @router.post("/clinics/{clinic_id}/visits/{visit_id}/checkout", status_code=202,
                 tags=["checkout"], summary="Check a patient out: price the visit, end it")
    async def checkout(clinic_id: ClinicId, visit_id: VisitId, body: Checkout,
                       principal: Principal = Depends(desk_staff)) -> Any:
        """Prices the visit from the clinic's fee schedule and its coverage, posts the charge
        and the patient's share on the ledger (once per visit, whatever the retries: the
        visit is the natural key, no Idempotency-Key needed), then publishes
        ``patient.checked_out`` while the floor has the visit open (its room goes to
        cleaning). Unknown CPT code: 422; a visit not checked in at the clinic: 404; a visit
        cancelled or left: 409; nothing published."""
        principal.require_clinic(clinic_id)
        result = await desk.checkout(clinic_id, visit_id, cpt_codes=body.cpt_codes,
                                     icd10_codes=body.icd10_codes,
                                     patient_ref=body.patient_ref, made_by=principal.name)
        return {"event_id": result.checkout_event_id, "visit_id": visit_id,
                "outcome": result.outcome, "posted": list(result.entries),
                "replayed": result.outcome == "duplicate",
                "ended_on_floor": result.ended_on_floor,
                "account": views.account_json(result.account, zone(clinic_id))}

    @router.put("/clinics/{clinic_id}/visits/{visit_id}/coverage", tags=["coverage"],
                summary="Record the visit's coverage (copay, coinsurance, deductible)")
    async def coverage(clinic_id: ClinicId, visit_id: VisitId, body: CoverageIn,
                       principal: Principal = Depends(desk_staff)) -> Any:
        """The latest coverage counts; the same terms as the standing coverage post nothing
        (``"replayed": true``; the natural key: no Idempotency-Key needed)."""
        principal.require_clinic(clinic_id)
        account, replayed = await desk.record_coverage(
            clinic_id, visit_id, patient_ref=body.patient_ref, copay_cents=body.copay_cents,
            coinsurance_basis_points=body.coinsurance_basis_points,
            deductible_remaining_cents=body.deductible_remaining_cents,
            self_pay=body.self_pay, made_by=principal.name)
        return {**views.account_json(account, zone(clinic_id)), "replayed": replayed}

    @router.post("/clinics/{clinic_id}/visits/{visit_id}/payments", status_code=201,
                 tags=["payments"], summary="Record a payment (cash, check, card reference)",
                 openapi_extra=REQUIRED_KEY_DOC, responses=KEY_REFUSALS)
    async def pay(clinic_id: ClinicId, visit_id: VisitId, body: PaymentIn,
                  idempotency_key: RequiredKey = None,
                  principal: Principal = Depends(billing_staff)) -> Any:
        """Requires ``Idempotency-Key`` (428 without it). The receipt shows the time on the
        clinic's clock and the business day the payment counts on."""
        principal.require_clinic(clinic_id)
        key = required_key(idempotency_key, "payment")
        receipt, replayed = await desk.pay(
            clinic_id, visit_id, entry_id=keyed_entry_id("pay", clinic_id, visit_id, key),
            method=body.method, amount_cents=body.amount_cents, reference=body.reference,
            reason=body.reason, made_by=principal.name)
        return {**views.receipt_json(receipt), "replayed": replayed}

    @router.post("/clinics/{clinic_id}/visits/{visit_id}/payments/{payment_id}/refunds",
                 status_code=201, tags=["payments"], summary="Refund (part of) a payment",
                 openapi_extra=REQUIRED_KEY_DOC, responses=KEY_REFUSALS)
    async def refund(clinic_id: ClinicId, visit_id: VisitId, payment_id: EntryId,
                     body: RefundIn, idempotency_key: RequiredKey = None,
                     principal: Principal = Depends(billing_staff)) -> Any:
        """Requires ``Idempotency-Key`` (428 without it); never more than is left on the
        payment (409), a payment not on the visit: 404."""
        principal.require_clinic(clinic_id)
        key = required_key(idempotency_key, "refund")
        receipt, replayed = await desk.refund(
            clinic_id, visit_id, entry_id=keyed_entry_id("rfd", clinic_id, visit_id, key),
            payment_entry_id=payment_id, amount_cents=body.amount_cents,
            reason=body.reason, made_by=principal.name)
        return {**views.receipt_json(receipt), "replayed": replayed}

    @router.post("/clinics/{clinic_id}/visits/{visit_id}/entries/{entry_id}/void",
                 tags=["payments"], summary="Void an entry made in error (managers)")
    async def void(clinic_id: ClinicId, visit_id: VisitId, entry_id: EntryId, body: VoidIn,
                   principal: Principal = Depends(managers)) -> Any:
        """An entry is voided once (the natural key: no Idempotency-Key needed): a void of
        an entry already voided posts nothing (``"replayed": true``). An entry not on the
        visit: 404."""
        principal.require_clinic(clinic_id)
        account, replayed = await desk.void(clinic_id, visit_id, target_entry_id=entry_id,
                                            reason=body.reason, made_by=principal.name)
        return {**views.account_json(account, zone(clinic_id)), "replayed": replayed}

    @router.post("/clinics/{clinic_id}/visits/{visit_id}/reprice", tags=["checkout"],
                 summary="Re-price the patient's share under the latest coverage")
    async def reprice(clinic_id: ClinicId, visit_id: VisitId, body: VoidIn,
                      principal: Principal = Depends(counters)) -> Any:
        """Coverage recorded or corrected after checkout: the standing share is voided and
        posted again from the charge and the latest coverage. A share priced under the
        latest coverage already posts nothing (``"replayed": true``; the natural key: no
        Idempotency-Key needed); no charge standing: 409."""
        principal.require_clinic(clinic_id)
        account, replayed = await desk.reprice(clinic_id, visit_id, reason=body.reason,
                                               made_by=principal.name)
        return {**views.account_json(account, zone(clinic_id)), "replayed": replayed}

    @router.get("/clinics/{clinic_id}/visits/{visit_id}/account", tags=["balances"],
                summary="A visit's charges, share, payments and balance")
    async def visit_account(clinic_id: ClinicId, visit_id: VisitId,
                            principal: Principal = Depends(readers)) -> Any:
        """A visit checked in at the clinic (nothing on the ledger yet: zero) or on its
        ledger; any other: 404 naming it."""
        principal.require_clinic(clinic_id)
        account = await desk.visit_account(clinic_id, visit_id)
        return views.account_json(account, zone(clinic_id))

    @router.get("/clinics/{clinic_id}/patients/{patient_ref}/balance", tags=["balances"],
                summary="A pseudonymous patient's balance over their visits")
    async def patient_balance(clinic_id: ClinicId, patient_ref: EntryId,
                              principal: Principal = Depends(readers)) -> Any:
        """A patient with no visit on the clinic's ledger: 404 naming them."""
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
        """The clinic's name, the provider who saw the patient, the time on the clinic's
        clock (with its zone's abbreviation or offset) and the business day."""
        principal.require_clinic(clinic_id)
        found = await desk.receipt(clinic_id, visit_id, entry_id)
        if format == "html":
            return HTMLResponse(views.receipt_html(found))
        return views.receipt_json(found)

    @router.post("/clinics/{clinic_id}/drawer-counts", status_code=201, tags=["reports"],
                 summary="Declare the end-of-day count per method")
    async def count_drawer(clinic_id: ClinicId, body: DrawerCountIn,
                           principal: Principal = Depends(counters)) -> Any:
        """The latest count of a day is used; the same amounts as the day's standing count
        post nothing (``"replayed": true``; the natural key: no Idempotency-Key needed). A
        day that has not begun at the clinic: 422."""
        principal.require_clinic(clinic_id)
        counted = await desk.count_drawer(clinic_id, business_date=body.business_date,
                                          counted={"cash": body.cash_cents,
                                                   "check": body.check_cents,
                                                   "card": body.card_cents},
                                          made_by=principal.name)
        return {"entry_id": counted.entry_id, "replayed": counted.replayed}

    @router.get("/clinics/{clinic_id}/reconciliation", tags=["reports"],
                summary="End-of-day reconciliation (JSON, CSV or HTML)",
                responses={200: {"content": {"application/json": {}, "text/csv": {},
                                             "text/html": {}}}})
    async def reconciliation(clinic_id: ClinicId,
                             day: Annotated[date | None, Query(
                                 alias="date", description="the clinic's business day "
                                 "(default: its today, on its own clock)")] = None,
                             format: Literal["json", "csv", "html"] = "json",
                             principal: Principal = Depends(managers)) -> Any:
        """The clinic's business day, cut at its own midnights (its zone in
        ``CLINICFLOW_CLINICS``)."""
        principal.require_clinic(clinic_id)
        report = await desk.reconciliation(clinic_id, day)
        name = desk.clinic(clinic_id).display_name
        if format == "csv":
            return PlainTextResponse(
                views.reconciliation_csv(report), media_type="text/csv",
                headers={"Content-Disposition": 'attachment; filename="reconciliation-'
                         f'{clinic_id}-{report.business_date}.csv"'})
        if format == "html":
            return HTMLResponse(views.reconciliation_html(report, name))
        return views.reconciliation_json(report, name)

    return router
