"""How accounts, receipts and reconciliations are shown: JSON documents, a CSV export and
printable HTML pages. Pure functions of the domain's objects (amounts stay integer cents;
the ``*_display`` strings are for people).

Times are shown on the clinic's own clock: ISO 8601 with the clinic's UTC offset in JSON
(the same instant, read as the clinic reads it), and ``2026-03-02 23:30 HST`` (the zone's
abbreviation, or its offset where it has none) on paper. Ids stay as they are; the
clinic's and the provider's names come from ``CLINICFLOW_CLINICS``."""

from __future__ import annotations

import csv
import io
from datetime import datetime
from html import escape
from typing import Any
from zoneinfo import ZoneInfo

from services.billing.domain.accounts import Account
from services.billing.domain.money import format_cents
from services.billing.domain.receipts import Receipt, clock_text
from services.billing.domain.reconciliation import Reconciliation


def local_iso(at: datetime, timezone: str) -> str:
    """An instant in ISO 8601 with the clinic's offset (``2026-03-02T23:30:00-10:00``)."""
    return at.astimezone(ZoneInfo(timezone)).isoformat()


def account_json(account: Account, timezone: str = "UTC") -> dict[str, Any]:
    return {
        "visit_id": account.visit_id,
        "patient_ref": account.patient_ref,
        "priced": account.priced,
        "lines": [line.model_dump() for line in account.lines],
        "charges_cents": account.charges_cents,
        "patient_share_cents": account.patient_share_cents,
        "insurance_cents": account.insurance_cents,
        "paid_cents": account.paid_cents,
        "refunded_cents": account.refunded_cents,
        "balance_cents": account.balance_cents,
        "balance": format_cents(account.balance_cents),
        "timezone": timezone,
        "entries": [
            {"entry_id": p.entry_id, "event_type": p.event_type,
             "occurred_at": local_iso(p.occurred_at, timezone),
             "amount_cents": p.amount_cents,
             "voided": not account.is_active(p), "reason": p.entry.reason,
             "made_by": p.entry.made_by}
            for p in account.entries
        ],
    }


def receipt_json(receipt: Receipt) -> dict[str, Any]:
    return {
        "receipt_number": receipt.receipt_number,
        "kind": receipt.kind,
        "clinic_id": receipt.clinic_id,
        "clinic_name": receipt.clinic_name,
        "visit_id": receipt.visit_id,
        "patient_ref": receipt.patient_ref,
        "provider_id": receipt.provider_id,
        "provider_name": receipt.provider_name,
        "method": receipt.method,
        "amount_cents": receipt.amount_cents,
        "amount": format_cents(receipt.amount_cents),
        "reference": receipt.reference,
        "made_at": receipt.made_at.isoformat(),
        "made_at_display": clock_text(receipt.made_at),
        "timezone": receipt.timezone,
        "business_date": receipt.business_date.isoformat(),
        "made_by": receipt.made_by,
        "reason": receipt.reason,
        "voided": receipt.voided,
        "refunds_payment": receipt.refunds_payment,
        "lines": [line.model_dump() for line in receipt.lines],
        "charges_cents": receipt.charges_cents,
        "patient_share_cents": receipt.patient_share_cents,
        "insurance_cents": receipt.insurance_cents,
        "paid_cents": receipt.paid_cents,
        "refunded_cents": receipt.refunded_cents,
        "balance_cents": receipt.balance_cents,
        "balance": format_cents(receipt.balance_cents),
    }


def reconciliation_json(report: Reconciliation, clinic_name: str | None = None
                        ) -> dict[str, Any]:
    """The day's report; its bounds and the drawer count's time on the clinic's clock."""
    zone = report.timezone
    return {
        "clinic_id": report.clinic_id,
        "clinic_name": clinic_name or report.clinic_id,
        "business_date": report.business_date.isoformat(),
        "timezone": zone,
        "starts_at": local_iso(report.starts_at, zone),
        "ends_at": local_iso(report.ends_at, zone),
        "source": report.source,
        "entries": report.entries,
        "visits_charged": report.visits_charged,
        "charges_cents": report.charges_cents,
        "charges_voided_cents": report.charges_voided_cents,
        "net_charges_cents": report.net_charges_cents,
        "patient_share_cents": report.patient_share_cents,
        "insurance_expected_cents": report.insurance_expected_cents,
        "collected_cents": report.collected_cents,
        "open_balance_cents": report.open_balance_cents,
        "credit_balance_cents": report.credit_balance_cents,
        "methods": [
            {"method": t.method, "payments_cents": t.payments_cents,
             "payment_count": t.payment_count, "refunds_cents": t.refunds_cents,
             "refund_count": t.refund_count, "voided_cents": t.voided_cents,
             "net_cents": t.net_cents, "counted_cents": t.counted_cents,
             "difference_cents": t.difference_cents}
            for t in report.methods
        ],
        "drawer_count": None if report.drawer_count is None else {
            "entry_id": report.drawer_count.entry_id,
            "counted_at": local_iso(report.drawer_count.counted_at, zone),
            "made_by": report.drawer_count.made_by,
            "cents": report.drawer_count.cents,
        },
        "open_balances": [
            {"visit_id": b.visit_id, "patient_ref": b.patient_ref,
             "charges_cents": b.charges_cents, "patient_share_cents": b.patient_share_cents,
             "paid_cents": b.paid_cents, "refunded_cents": b.refunded_cents,
             "balance_cents": b.balance_cents, "carried_over": b.carried_over}
            for b in report.open_balances
        ],
        "discrepancies": [
            {"kind": x.kind, "message": x.message, "amount_cents": x.amount_cents,
             "method": x.method, "visit_id": x.visit_id, "entry_id": x.entry_id}
            for x in report.discrepancies
        ],
        "reconciled": report.reconciled,
    }


def reconciliation_csv(report: Reconciliation) -> str:
    """One CSV with a ``section`` column: the day (the clinic's zone and where its day
    starts and ends), totals by method, open balances, discrepancies."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["section", "clinic", "date", "key", "amount_cents", "detail"])
    c, day = report.clinic_id, report.business_date.isoformat()
    writer.writerow(["day", c, day, report.timezone, "",
                     f"{local_iso(report.starts_at, report.timezone)} to "
                     f"{local_iso(report.ends_at, report.timezone)}"])
    for name, cents in (("charges", report.charges_cents),
                        ("charges_voided", report.charges_voided_cents),
                        ("patient_share", report.patient_share_cents),
                        ("insurance_expected", report.insurance_expected_cents),
                        ("collected", report.collected_cents),
                        ("open_balance", report.open_balance_cents),
                        ("credit_balance", report.credit_balance_cents)):
        writer.writerow(["total", c, day, name, cents, ""])
    for t in report.methods:
        writer.writerow(["method", c, day, t.method, t.net_cents,
                         f"payments={t.payments_cents} ({t.payment_count}) "
                         f"refunds={t.refunds_cents} ({t.refund_count}) "
                         f"voided={t.voided_cents} counted={t.counted_cents}"])
    for b in report.open_balances:
        writer.writerow(["open_balance", c, day, b.visit_id, b.balance_cents,
                         f"share={b.patient_share_cents} paid={b.paid_cents} "
                         f"refunded={b.refunded_cents}"
                         f"{' carried over' if b.carried_over else ''}"])
    for x in report.discrepancies:
        writer.writerow(["discrepancy", c, day, x.kind, "" if x.amount_cents is None
                         else x.amount_cents, x.message])
    return out.getvalue()


_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:42rem;margin:2rem auto}}
table{{border-collapse:collapse;width:100%}}td,th{{border-bottom:1px solid #ccc;
padding:.25rem .5rem;text-align:left}}td.n{{text-align:right}}
@media print{{body{{margin:0}}}}</style></head><body>{body}</body></html>"""


def _money(cents: int | None) -> str:
    return "" if cents is None else escape(format_cents(cents))


def receipt_html(receipt: Receipt) -> str:
    rows = "".join(f"<tr><td>{escape(line.cpt_code)}</td><td>{escape(line.description)}</td>"
                   f"<td class=n>{_money(line.fee_cents)}</td></tr>" for line in receipt.lines)
    title = f"Receipt {receipt.receipt_number}"
    seen_by = (f"<br>Seen by {escape(receipt.provider_name)}" if receipt.provider_name
               else "")
    body = (
        f"<h1>{escape(receipt.clinic_name)}</h1>"
        f"<h2>{'Refund' if receipt.kind == 'refund' else 'Payment'} receipt</h2>"
        f"<p>Visit {escape(receipt.visit_id)} · receipt {escape(receipt.receipt_number)}"
        f"{seen_by}<br><time datetime=\"{escape(receipt.made_at.isoformat())}\">"
        f"{escape(clock_text(receipt.made_at))}</time>"
        f"{' · <strong>VOIDED</strong>' if receipt.voided else ''}</p>"
        f"<p><strong>{escape(receipt.method)}</strong> {_money(receipt.amount_cents)}"
        f"{' · ref ' + escape(receipt.reference) if receipt.reference else ''}</p>"
        f"<table><tr><th>Code</th><th>Service</th><th>Fee</th></tr>{rows}</table>"
        "<table>"
        f"<tr><td>Charges</td><td class=n>{_money(receipt.charges_cents)}</td></tr>"
        f"<tr><td>Insurance</td><td class=n>{_money(receipt.insurance_cents)}</td></tr>"
        f"<tr><td>Your share</td><td class=n>{_money(receipt.patient_share_cents)}</td></tr>"
        f"<tr><td>Paid</td><td class=n>{_money(receipt.paid_cents)}</td></tr>"
        f"<tr><td>Refunded</td><td class=n>{_money(receipt.refunded_cents)}</td></tr>"
        f"<tr><th>Balance</th><th class=n>{_money(receipt.balance_cents)}</th></tr></table>"
    )
    return _PAGE.format(title=escape(title), body=body)


def reconciliation_html(report: Reconciliation, clinic_name: str | None = None) -> str:
    methods = "".join(
        f"<tr><td>{escape(t.method)}</td><td class=n>{_money(t.payments_cents)}</td>"
        f"<td class=n>{_money(t.refunds_cents)}</td><td class=n>{_money(t.voided_cents)}</td>"
        f"<td class=n>{_money(t.net_cents)}</td><td class=n>{_money(t.counted_cents)}</td>"
        f"<td class=n>{_money(t.difference_cents)}</td></tr>" for t in report.methods)
    balances = "".join(
        f"<tr><td>{escape(b.visit_id)}{' (earlier day)' if b.carried_over else ''}</td>"
        f"<td class=n>{_money(b.patient_share_cents)}</td>"
        f"<td class=n>{_money(b.paid_cents - b.refunded_cents)}</td>"
        f"<td class=n>{_money(b.balance_cents)}</td></tr>" for b in report.open_balances)
    problems = "".join(f"<li>{escape(x.message)}</li>" for x in report.discrepancies)
    zone = ZoneInfo(report.timezone)
    body = (
        f"<h1>End of day: {escape(clinic_name or report.clinic_id)}, "
        f"{report.business_date.isoformat()}</h1>"
        f"<p>The clinic's day: {escape(clock_text(report.starts_at.astimezone(zone)))} to "
        f"{escape(clock_text(report.ends_at.astimezone(zone)))} ({escape(report.timezone)})"
        "</p>"
        f"<p>{'Reconciled' if report.reconciled else 'Not reconciled'} · "
        f"{report.visits_charged} visits charged · net charges "
        f"{_money(report.net_charges_cents)} · patient share "
        f"{_money(report.patient_share_cents)} · collected {_money(report.collected_cents)}</p>"
        "<h2>By method</h2><table><tr><th>Method</th><th>Payments</th><th>Refunds</th>"
        f"<th>Voided</th><th>Ledger</th><th>Counted</th><th>Difference</th></tr>{methods}"
        "</table><h2>Open balances</h2><table><tr><th>Visit</th><th>Share</th><th>Paid</th>"
        f"<th>Balance</th></tr>{balances}</table>"
        f"<h2>Discrepancies</h2><ul>{problems or '<li>none</li>'}</ul>"
    )
    return _PAGE.format(title=escape(f"Reconciliation {report.clinic_id}"), body=body)
