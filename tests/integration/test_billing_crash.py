"""A billing service killed with -9 in the middle of a burst of checkouts, then of
payments, restarted, and retried by every desk: one charge and one payment per visit,
and the day still adds up to the cent."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import ServiceProcess
from tests.integration.test_billing_support import (
    BILLING,
    MANAGER,
    billing_env,
    check_in,
    ledger,
    of_type,
)

__all__ = ["billing_env"]

FEE_99214 = 18500  # the example schedule


async def _until_answered(client: httpx.AsyncClient, url: str, body: dict[str, Any],
                          headers: dict[str, str]) -> dict[str, Any]:
    """What a desk does: send the same request again until the service answers it."""
    for _attempt in range(400):
        try:
            answer = await client.post(url, headers=headers, json=body, timeout=5)
        except httpx.HTTPError:
            await asyncio.sleep(0.1)
            continue
        if answer.status_code in (201, 202):
            done: dict[str, Any] = answer.json()
            return done
        assert answer.status_code in (409, 503), answer.text  # busy visit, not ready yet
        await asyncio.sleep(0.1)
    raise AssertionError(f"{url} never answered")


async def _check_out_until_done(client: httpx.AsyncClient, service: ServiceProcess,
                                visit: str) -> str:
    answer = await _until_answered(client, f"{service.url}/clinics/north/visits/{visit}/checkout",
                                   {"cpt_codes": ["99214"]}, BILLING)
    outcome: str = answer["outcome"]
    return outcome


async def _pay_until_done(client: httpx.AsyncClient, service: ServiceProcess,
                          visit: str) -> bool:
    answer = await _until_answered(
        client, f"{service.url}/clinics/north/visits/{visit}/payments",
        {"method": "cash", "amount_cents": FEE_99214 // 2},
        {**BILLING, "Idempotency-Key": f"desk-2-{visit}"})
    replayed: bool = answer["replayed"]
    return replayed


async def _some_answered(tasks: list[asyncio.Task[Any]], count: int) -> None:
    """Returns once ``count`` of ``tasks`` have their answer (the others still going)."""
    pending = set(tasks)
    while len(tasks) - len(pending) < count:
        _done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)


@pytest.mark.reliability(
    "billing killed with -9 mid-checkouts, then mid-payments, requests retried",
    "one charge and one payment per visit; the day adds up",
)
async def test_a_service_killed_mid_checkouts_and_retried_charges_each_visit_once(
    billing_env: dict[str, Any], tmp_path: Path,
) -> None:
    env = {f"CLINICFLOW_{k.upper()}": str(v) for k, v in billing_env.items()}
    service = ServiceProcess("billing", env, tmp_path / "billing.log")
    visits = [f"v{n:02}" for n in range(1, 31)]
    await check_in(billing_env, "north", *visits)
    service.start()
    try:
        await service.wait_ready()
        async with httpx.AsyncClient() as client:
            for visit in visits[:5]:  # checked out and answered before the burst
                assert await _check_out_until_done(client, service, visit) == "priced"
            desks = [asyncio.create_task(_check_out_until_done(client, service, v))
                     for v in visits]
            await _some_answered(desks, 10)  # the five done before, five new, more going
            service.kill()
            service.start()  # same port: the desks' retries reach the new process
            outcomes = await asyncio.gather(*desks)
            await service.wait_ready()
            assert outcomes[:5] == ["duplicate"] * 5
            assert set(outcomes) <= {"priced", "duplicate", "completed"}
            events = await ledger(billing_env)
            charges: dict[str, set[str]] = defaultdict(set)
            for event in of_type(events, "charge.posted"):
                charges[event.payload.visit_id].add(  # type: ignore[attr-defined]
                    event.envelope.event_id)
            assert {v: len(ids) for v, ids in charges.items()} == dict.fromkeys(visits, 1)
            today = datetime.now(UTC).date().isoformat()
            report = (await client.get(
                f"{service.url}/clinics/north/reconciliation?date={today}",
                headers=MANAGER)).json()
            assert report["visits_charged"] == 30
            assert report["charges_cents"] == 30 * FEE_99214
            assert report["patient_share_cents"] == 30 * FEE_99214
            assert report["open_balance_cents"] == 30 * FEE_99214

            # the same with payments, each sent with its Idempotency-Key until answered
            tills = [asyncio.create_task(_pay_until_done(client, service, v)) for v in visits]
            await _some_answered(tills, 5)  # some payments taken, the others going
            service.kill()
            service.start()
            await asyncio.gather(*tills)
            await service.wait_ready()
            payments: dict[str, set[str]] = defaultdict(set)
            for event in of_type(await ledger(billing_env), "payment.recorded"):
                payments[event.payload.visit_id].add(  # type: ignore[attr-defined]
                    event.envelope.event_id)
            assert {v: len(ids) for v, ids in payments.items()} == dict.fromkeys(visits, 1)
            report = (await client.get(
                f"{service.url}/clinics/north/reconciliation?date={today}",
                headers=MANAGER)).json()
            cash = next(m for m in report["methods"] if m["method"] == "cash")
            assert (cash["payment_count"], cash["net_cents"]) == (30, 30 * (FEE_99214 // 2))
            assert report["open_balance_cents"] == 30 * (FEE_99214 - FEE_99214 // 2)
    finally:
        service.stop()
