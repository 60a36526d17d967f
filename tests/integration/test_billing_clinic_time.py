"""Billing on each clinic's own clock, on the real broker and Redis: a Hawaiian clinic
(UTC-10) takes a payment at 23:30 on 2 March, which is 3 March in UTC; the receipt says
23:30 HST, the clinic's and the provider's names, and the business day 2 March; the
day's report (API as JSON, CSV and HTML, and `clinicflow billing reconcile`) counts it on
2 March; a drawer count for 3 March is refused until 3 March begins in Hawaii. An
Auckland clinic in December (UTC+13) counts a payment at 00:30 on 15 December (still the
14th in UTC) on the 15th. The service's clock is a FakeClock the test sets."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from tests.fakes import FakeClock
from tests.helpers import REPO
from tests.integration.test_billing_support import (
    BILLING,
    MANAGER,
    billing_env,
    check_in,
    keyed,
    running_billing,
)

__all__ = ["billing_env"]

CLINICS = {
    "hilo": {"name": "Hilo Family Clinic", "timezone": "Pacific/Honolulu",
             "providers": {"dr-kanoa": "Dr. Kanoa"}, "rooms": {"r1": "Lanai Room"}},
    "akl": {"name": "Ponsonby Medical", "timezone": "Pacific/Auckland",
            "providers": {"dr-ngata": "Dr. Ngata"}},
}
HALF_PAST_ELEVEN_IN_HAWAII = datetime(2026, 3, 3, 9, 30, tzinfo=UTC)  # 2 March, 23:30 HST
HALF_PAST_MIDNIGHT_IN_AUCKLAND = datetime(2026, 12, 14, 11, 30, tzinfo=UTC)  # 15 Dec NZDT
FEE_99213 = 12500  # the example schedule's line for every clinic


@pytest.mark.reliability(
    "a payment at 23:30 in a UTC-10 clinic (the next day in UTC), one at 00:30 in a "
    "UTC+13 clinic (the day before in UTC)",
    "each on its clinic's business day: receipt, API report (JSON, CSV, HTML), CLI",
)
async def test_a_payment_late_at_night_in_hawaii_counts_on_hawaiis_day(
    billing_env: dict[str, Any],
) -> None:
    env = {**billing_env, "clinics": json.dumps(CLINICS)}
    clock = FakeClock(HALF_PAST_ELEVEN_IN_HAWAII)
    await check_in(env, "hilo", "h1", patient_ref="p-h1", provider_id="dr-kanoa",
                   at=clock.now())
    await check_in(env, "akl", "a1", patient_ref="p-a1", provider_id="dr-ngata",
                   at=HALF_PAST_MIDNIGHT_IN_AUCKLAND)
    async with running_billing(env, clock=clock) as client:
        out = await client.post("/clinics/hilo/visits/h1/checkout", headers=BILLING,
                                json={"cpt_codes": ["99213"]})
        assert out.status_code == 202, out.text
        paid = await client.post("/clinics/hilo/visits/h1/payments", headers=keyed(BILLING),
                                 json={"method": "cash", "amount_cents": FEE_99213})
        assert paid.status_code == 201, paid.text
        receipt = paid.json()
        assert (receipt["made_at"], receipt["made_at_display"], receipt["business_date"]) == (
            "2026-03-02T23:30:00-10:00", "2026-03-02 23:30 HST", "2026-03-02")
        assert (receipt["clinic_name"], receipt["provider_name"]) == (
            "Hilo Family Clinic", "Dr. Kanoa")
        assert receipt["clinic_id"] == "hilo" and receipt["provider_id"] == "dr-kanoa"
        page = (await client.get(
            f"/clinics/hilo/visits/h1/receipts/{receipt['receipt_number']}?format=html",
            headers=BILLING)).text
        assert "Hilo Family Clinic" in page and "Seen by Dr. Kanoa" in page
        assert "2026-03-02 23:30 HST" in page
        assert "dr-kanoa" not in page and "09:30" not in page

        # 3 March has not begun in Hawaii: its drawer cannot be counted yet
        early = await client.post("/clinics/hilo/drawer-counts", headers=BILLING,
                                  json={"business_date": "2026-03-03", "cash_cents": 0})
        assert early.status_code == 422
        assert "has not begun at clinic hilo" in early.json()["detail"]
        counted = await client.post("/clinics/hilo/drawer-counts", headers=BILLING,
                                    json={"business_date": "2026-03-02",
                                          "cash_cents": FEE_99213})
        assert counted.status_code == 201, counted.text

        today = (await client.get("/clinics/hilo/reconciliation", headers=MANAGER)).json()
        assert (today["business_date"], today["timezone"], today["clinic_name"]) == (
            "2026-03-02", "Pacific/Honolulu", "Hilo Family Clinic")
        assert (today["starts_at"], today["ends_at"]) == (
            "2026-03-02T00:00:00-10:00", "2026-03-03T00:00:00-10:00")
        cash = next(m for m in today["methods"] if m["method"] == "cash")
        assert (cash["payments_cents"], cash["counted_cents"]) == (FEE_99213, FEE_99213)
        assert today["charges_cents"] == FEE_99213 and today["reconciled"] is True
        # the UTC day (3 March) has not begun in Hawaii: no reconciliation of it yet
        utc_day = await client.get("/clinics/hilo/reconciliation?date=2026-03-03",
                                   headers=MANAGER)
        assert (utc_day.status_code, utc_day.json()["code"]) == (422, "date_out_of_range")
        assert "to 2026-03-02 (clinic hilo's today" in utc_day.json()["detail"]
        csv = (await client.get("/clinics/hilo/reconciliation?date=2026-03-02&format=csv",
                                headers=MANAGER)).text
        assert ("day,hilo,2026-03-02,Pacific/Honolulu,,2026-03-02T00:00:00-10:00 to "
                "2026-03-03T00:00:00-10:00") in csv
        assert f"method,hilo,2026-03-02,cash,{FEE_99213}," in csv
        html = (await client.get("/clinics/hilo/reconciliation?date=2026-03-02&format=html",
                                 headers=MANAGER)).text
        assert "End of day: Hilo Family Clinic, 2026-03-02" in html
        assert "2026-03-02 00:00 HST to 2026-03-03 00:00 HST" in html

        # Auckland in December: 00:30 on the 15th is 11:30 on the 14th in UTC
        clock.set(HALF_PAST_MIDNIGHT_IN_AUCKLAND)
        kiwi = await client.post("/clinics/akl/visits/a1/payments", headers=keyed(BILLING),
                                 json={"method": "card", "amount_cents": 3000,
                                       "reference": "AUTH-7781"})
        assert kiwi.status_code == 201, kiwi.text
        assert (kiwi.json()["made_at_display"], kiwi.json()["business_date"]) == (
            "2026-12-15 00:30 NZDT", "2026-12-15")
        assert kiwi.json()["provider_name"] == "Dr. Ngata"
        on_the_15th = (await client.get("/clinics/akl/reconciliation", headers=MANAGER)).json()
        assert on_the_15th["business_date"] == "2026-12-15"
        card = next(m for m in on_the_15th["methods"] if m["method"] == "card")
        assert card["payments_cents"] == 3000
        assert on_the_15th["starts_at"] == "2026-12-15T00:00:00+13:00"
        the_14th = (await client.get("/clinics/akl/reconciliation?date=2026-12-14",
                                     headers=MANAGER)).json()
        assert the_14th["entries"] == 0

    # the CLI reads the ledger topic with the same clinics and cuts the same day
    cli_env = {**os.environ, **{f"CLINICFLOW_{k.upper()}": str(v) for k, v in env.items()}}
    cli = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tools.cli", "billing", "reconcile", "--clinic", "hilo",
        "--date", "2026-03-02", cwd=REPO, env=cli_env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(cli.communicate(), 60)
    assert cli.returncode == 0, stderr.decode()[-2000:]
    from_ledger = orjson.loads(stdout)
    assert (from_ledger["business_date"], from_ledger["timezone"]) == (
        "2026-03-02", "Pacific/Honolulu")
    assert from_ledger["clinic_name"] == "Hilo Family Clinic"
    assert from_ledger["collected_cents"] == FEE_99213 and from_ledger["reconciled"] is True
