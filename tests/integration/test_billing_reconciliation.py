"""A clinic's day of 50 visits reconciles to the cent; its Redis projection is flushed,
rebuilt from the ledger topic, and reconciles to the same cents; the CLI, reading the
ledger topic itself, agrees."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest

from tests.helpers import REPO, eventually
from tests.integration.test_billing_support import (
    BILLING,
    FRONT_DESK,
    MANAGER,
    billing_env,
    check_in,
    keyed,
    running_billing,
    store_of,
)

__all__ = ["billing_env"]

# the example fee schedule, as the clinic "north" sees it (its own 99213 line wins)
FEES = {"99213": 13000, "99214": 18500, "36415": 1200, "81002": 850, "87880": 2775,
        "90471": 2800, "90686": 3240, "93000": 5500}


def share_of(charge: int, copay: int, basis_points: int, deductible: int) -> int:
    """The patient's share, worked out here independently of the service's code."""
    copay = min(copay, charge)
    rest = charge - copay
    deductible = min(deductible, rest)
    rest -= deductible
    whole, remainder = divmod(rest * basis_points, 10_000)
    return copay + deductible + whole + (1 if remainder * 2 >= 10_000 else 0)


async def _visit(client: httpx.AsyncClient, rng: random.Random, n: int,
                 expected: dict[str, Any]) -> None:
    visit = f"v{n:03}"
    codes = rng.sample(sorted(FEES), rng.randint(1, 3))
    charge = sum(FEES[c] for c in codes)
    if rng.random() < 0.2:
        share = charge
        await client.put(f"/clinics/north/visits/{visit}/coverage", headers=FRONT_DESK,
                         json={"patient_ref": f"p{n}", "self_pay": True})
    else:
        copay, bp, deductible = (rng.choice([0, 1500, 2500, 4000]),
                                 rng.choice([0, 1000, 2000, 3333]),
                                 rng.choice([0, 777, 5000]))
        share = share_of(charge, copay, bp, deductible)
        answer = await client.put(
            f"/clinics/north/visits/{visit}/coverage", headers=FRONT_DESK,
            json={"patient_ref": f"p{n}", "copay_cents": copay,
                  "coinsurance_basis_points": bp, "deductible_remaining_cents": deductible})
        assert answer.status_code == 200, answer.text
    checkout = await client.post(f"/clinics/north/visits/{visit}/checkout", headers=BILLING,
                                 json={"cpt_codes": codes})
    assert checkout.status_code == 202, checkout.text
    expected["charges"] += charge
    expected["share"] += share
    # pay all of it, part of it (in one or two goes), or nothing yet
    plan = rng.choice(["all", "all", "part", "split", "none"])
    amounts = {"all": [share], "part": [share // 2], "split": [share - share // 3, share // 3],
               "none": []}[plan]
    paid = 0
    for amount in amounts:
        if amount <= 0:
            continue
        method = rng.choice(["cash", "check", "card"])
        reference = None if method == "cash" else f"R{n}-{amount}"
        answer = await client.post(f"/clinics/north/visits/{visit}/payments",
                                   headers=keyed(BILLING),
                                   json={"method": method, "amount_cents": amount,
                                         "reference": reference})
        assert answer.status_code == 201, answer.text
        receipt = answer.json()
        paid += amount
        expected[method] += amount
        if n % 10 == 3:  # a refund of part of a payment
            refunded = min(amount, 500)
            refund = await client.post(
                f"/clinics/north/visits/{visit}/payments/{receipt['receipt_number']}/refunds",
                headers=keyed(BILLING), json={"amount_cents": refunded, "reason": "goodwill"})
            assert refund.status_code == 201, refund.text
            paid -= refunded
            expected[method] -= refunded
        elif n % 10 == 7:  # keyed by mistake: a manager voids it, it is taken again
            void = await client.post(
                f"/clinics/north/visits/{visit}/entries/{receipt['receipt_number']}/void",
                headers=MANAGER, json={"reason": "keyed on the wrong visit"})
            assert void.status_code == 200, void.text
            again = await client.post(f"/clinics/north/visits/{visit}/payments",
                                      headers=keyed(BILLING),
                                      json={"method": "cash", "amount_cents": amount})
            assert again.status_code == 201, again.text
            expected[method] -= amount
            expected["cash"] += amount
    if share - paid:
        expected["open"][visit] = share - paid


def _money_view(report: dict[str, Any]) -> dict[str, Any]:
    return {key: report[key] for key in (
        "entries", "visits_charged", "charges_cents", "charges_voided_cents",
        "patient_share_cents", "insurance_expected_cents", "collected_cents",
        "open_balance_cents", "credit_balance_cents", "methods", "open_balances",
        "discrepancies", "reconciled")}


@pytest.mark.reliability(
    "billing's Redis projection flushed and rebuilt",
    "the day reconciles to the same cents",
)
async def test_a_day_of_fifty_visits_reconciles_to_the_cent_before_and_after_a_rebuild(
    billing_env: dict[str, Any],
) -> None:
    rng = random.Random(20260302)
    expected: dict[str, Any] = {"charges": 0, "share": 0, "cash": 0, "check": 0, "card": 0,
                                "open": {}}
    today = datetime.now(UTC).date().isoformat()
    await check_in(billing_env, "north", *(f"v{n:03}" for n in range(1, 51)))
    async with running_billing(billing_env) as client:
        for start in range(1, 51, 10):  # ten desks at a time
            await asyncio.gather(*[_visit(client, rng, n, expected)
                                   for n in range(start, start + 10)])
        counted = await client.post(
            "/clinics/north/drawer-counts", headers=BILLING,
            json={"business_date": today, "cash_cents": expected["cash"],
                  "check_cents": expected["check"], "card_cents": expected["card"]})
        assert counted.status_code == 201, counted.text
        answer = await client.get(f"/clinics/north/reconciliation?date={today}",
                                  headers=MANAGER)
        assert answer.status_code == 200, answer.text
        before = answer.json()
        assert before["visits_charged"] == 50
        assert before["charges_cents"] == expected["charges"]
        assert before["patient_share_cents"] == expected["share"]
        nets = {m["method"]: m["net_cents"] for m in before["methods"]}
        assert nets == {m: expected[m] for m in ("cash", "check", "card")}
        assert {b["visit_id"]: b["balance_cents"] for b in before["open_balances"]} == (
            expected["open"])
        assert before["discrepancies"] == [] and before["reconciled"] is True
        csv = await client.get(f"/clinics/north/reconciliation?date={today}&format=csv",
                               headers=MANAGER)
        assert f"total,north,{today},charges,{expected['charges']}," in csv.text
        assert (await client.get(f"/clinics/north/reconciliation?date={today}",
                                 headers=BILLING)).status_code == 403
        far = await client.get("/clinics/north/reconciliation?date=9999-12-31",
                               headers=MANAGER)  # its day's end cannot be computed
        assert (far.status_code, far.json()["code"]) == (422, "date_out_of_range"), far.text
        assert "date 9999-12-31 is out of range" in far.json()["detail"]
        # the window of drawer counts: from 366 days before the clinic's today to today
        for day in ("1900-01-01", "2999-06-01"):
            outside = await client.get(f"/clinics/north/reconciliation?date={day}",
                                       headers=MANAGER)
            assert (outside.status_code, outside.json()["code"]) == (
                422, "date_out_of_range"), outside.text
            assert f"date {day} is out of range" in outside.json()["detail"]
            assert "a reconciliation is for a day from" in outside.json()["detail"]
        # Redis loses the projection
        assert await store_of(client).forget_everything() > 0
        emptied = (await client.get(f"/clinics/north/reconciliation?date={today}",
                                    headers=MANAGER)).json()
        assert emptied["charges_cents"] == 0

    async with running_billing(billing_env) as client:  # restarted: rebuilds from the ledger
        async def rebuilt() -> dict[str, Any] | None:
            report: dict[str, Any] = (await client.get(
                f"/clinics/north/reconciliation?date={today}", headers=MANAGER)).json()
            return report if report["entries"] == before["entries"] else None

        after = await eventually(rebuilt, timeout=30)
        assert _money_view(after) == _money_view(before)

    # the CLI reads the ledger topic itself and agrees to the cent
    env = {**os.environ, **{f"CLINICFLOW_{k.upper()}": str(v) for k, v in billing_env.items()}}
    cli = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tools.cli", "billing", "reconcile", "--clinic", "north",
        "--date", today, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(cli.communicate(), 60)
    assert cli.returncode == 0, stderr.decode()[-2000:]
    from_ledger = orjson.loads(stdout)
    assert from_ledger["source"] == "ledger topic"
    assert _money_view(from_ledger) == _money_view(before)
