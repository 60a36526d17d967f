"""Checkout on the real broker and Redis: one charge per visit whatever the duplicates,
retries and redeliveries; bad input refused with a clear message and nothing published."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from services.billing.domain.money import stable_id
from shared import events as ev
from shared.events_billing import ChargePosted
from shared.topics import LEDGER, topic_name
from tests.helpers import eventually, producer
from tests.integration.test_billing_support import (
    BILLING,
    FRONT_DESK,
    MANAGER,
    barrier_of,
    billing_env,
    dead_letters,
    floor,
    ledger,
    of_type,
    relay_of,
    running_billing,
    store_of,
)

__all__ = ["billing_env"]


@pytest.mark.reliability(
    "duplicated checkout requests",
    "one charge and one patient share per visit",
)
async def test_duplicated_checkouts_post_one_charge_and_one_share(
    billing_env: dict[str, Any],
) -> None:
    async with running_billing(billing_env) as client:
        coverage = await client.put("/clinics/north/visits/v1/coverage", headers=FRONT_DESK,
                                    json={"patient_ref": "p-77", "copay_cents": 2500,
                                          "coinsurance_basis_points": 2000,
                                          "deductible_remaining_cents": 1000})
        assert coverage.status_code == 200, coverage.text
        body = {"cpt_codes": ["99213", "36415"], "icd10_codes": ["J06.9"]}
        # the desk double-clicks, a proxy retries, a second terminal sends it too
        answers = await asyncio.gather(*[
            client.post("/clinics/north/visits/v1/checkout", headers=BILLING, json=body)
            for _ in range(6)])
        answers.append(await client.post("/clinics/north/visits/v1/checkout",
                                         headers={**FRONT_DESK, "Idempotency-Key": "k1"},
                                         json=body))
        assert all(a.status_code == 202 for a in answers), [a.text for a in answers]
        outcomes = sorted(a.json()["outcome"] for a in answers)
        assert outcomes.count("priced") == 1, outcomes
        account = (await client.get("/clinics/north/visits/v1/account",
                                    headers=BILLING)).json()
        # north's 99213 is 130.00, venipuncture 12.00: 142.00; copay 25.00, deductible
        # 10.00, 20% of the remaining 107.00 = 21.40 -> the patient owes 56.40
        assert account["charges_cents"] == 14200
        assert account["patient_share_cents"] == 5640
        assert account["balance_cents"] == 5640
        assert account["patient_ref"] == "p-77"
        events = await ledger(billing_env, expect=3)
        charges = of_type(events, "charge.posted")
        assert [c.envelope.event_id for c in charges] == [stable_id("chg", "v1")]
        assert len(of_type(events, "patient_share.posted")) == 1
        assert isinstance(charges[0].payload, ChargePosted)
        assert charges[0].payload.made_by == "dev billing"  # the credential, not a person
        # the visit ends on every screen (each copy carries the same event id)
        checkouts = of_type(await floor(billing_env, expect=1), "patient.checked_out")
        assert {c.envelope.event_id for c in checkouts} == {answers[0].json()["event_id"]}


@pytest.mark.reliability(
    "a ledger entry redelivered (plain Kafka client)",
    "counted once",
)
async def test_a_redelivered_ledger_entry_counts_once(billing_env: dict[str, Any]) -> None:
    async with running_billing(billing_env) as client:
        answer = await client.post("/clinics/north/visits/v2/checkout", headers=BILLING,
                                   json={"cpt_codes": ["99214"]})
        assert answer.status_code == 202, answer.text
        events = await ledger(billing_env, expect=2)
        # the producer's retry after a lost ack, or a crash before the commit: the same
        # entries land on the ledger again
        async with producer(billing_env["kafka_bootstrap"]) as kafka:
            for event in events:
                await kafka.send_and_wait(topic_name(LEDGER, billing_env["topic_prefix"]),
                                          ev.encode(event), key=b"north")
        await eventually(lambda: _ledger_count(billing_env, 4))
        await barrier_of(client).caught_up("north")  # the projection has read the copies
        account = (await client.get("/clinics/north/visits/v2/account",
                                    headers=BILLING)).json()
        assert account["charges_cents"] == 18500
        assert account["patient_share_cents"] == 18500  # no coverage: self-pay
        assert len(account["entries"]) == 2
        # a second checkout of the visit, after the redelivery, charges nothing more
        again = await client.post("/clinics/north/visits/v2/checkout", headers=BILLING,
                                  json={"cpt_codes": ["99214"]})
        assert again.json()["outcome"] == "duplicate"
        assert len(of_type(await ledger(billing_env), "charge.posted")) == 2  # the 2 copies


async def _ledger_count(env: dict[str, Any], n: int) -> bool:
    return len(await ledger(env)) >= n


@pytest.mark.reliability(
    "bad money input (unknown CPT, negative amounts, over-refunds)",
    "4xx naming what is wrong; nothing published",
)
async def test_bad_money_input_is_refused_clearly_and_nothing_is_published(
    billing_env: dict[str, Any],
) -> None:
    async with running_billing(billing_env) as client:
        unknown = await client.post("/clinics/north/visits/v3/checkout", headers=BILLING,
                                    json={"cpt_codes": ["99213", "12345"]})
        assert unknown.status_code == 422
        assert "12345" in unknown.json()["detail"]
        assert "fee schedule" in unknown.json()["detail"]
        negative = await client.post("/clinics/north/visits/v3/payments", headers=BILLING,
                                     json={"method": "cash", "amount_cents": -500})
        assert negative.status_code == 422
        assert "amount_cents" in negative.text
        assert await ledger(billing_env) == []
        assert await floor(billing_env) == []
        charged = await client.post("/clinics/north/visits/v3b/checkout", headers=BILLING,
                                    json={"cpt_codes": ["99213"]})
        other_codes = await client.post("/clinics/north/visits/v3b/checkout", headers=BILLING,
                                        json={"cpt_codes": ["99215"]})
        assert charged.status_code == 202 and other_codes.status_code == 409
        assert "already charged for 99213" in other_codes.json()["detail"]

        paid = await client.post("/clinics/north/visits/v3/payments", headers=BILLING,
                                 json={"method": "cash", "amount_cents": 2000})
        assert paid.status_code == 201, paid.text
        payment_id = paid.json()["receipt_number"]
        too_much = await client.post(
            f"/clinics/north/visits/v3/payments/{payment_id}/refunds", headers=BILLING,
            json={"amount_cents": 2001, "reason": "overpaid"})
        assert too_much.status_code == 409
        assert "more than the 20.00 left to refund" in too_much.json()["detail"]
        card_number = await client.post(
            "/clinics/north/visits/v3/payments", headers=BILLING,
            json={"method": "card", "amount_cents": 100, "reference": "4111 1111 1111 1111"})
        assert card_number.status_code == 422
        assert "card number" in card_number.json()["detail"]
        # roles: front desk cannot take payments; billing cannot void
        assert (await client.post("/clinics/north/visits/v3/payments", headers=FRONT_DESK,
                                  json={"method": "cash", "amount_cents": 1})).status_code == 403
        assert (await client.post(f"/clinics/north/visits/v3/entries/{payment_id}/void",
                                  headers=BILLING, json={"reason": "x"})).status_code == 403
        assert len(await ledger(billing_env)) == 3  # v3b's charge and share, v3's payment


async def test_payments_refunds_voids_and_receipts(billing_env: dict[str, Any]) -> None:
    async with running_billing(billing_env) as client:
        await client.put("/clinics/north/visits/v4/coverage", headers=FRONT_DESK,
                         json={"patient_ref": "p-4", "copay_cents": 3000})
        await client.post("/clinics/north/visits/v4/checkout", headers=BILLING,
                          json={"cpt_codes": ["99213"]})
        key = {**BILLING, "Idempotency-Key": "pay-1"}
        first = await client.post("/clinics/north/visits/v4/payments", headers=key,
                                  json={"method": "card", "amount_cents": 2000,
                                        "reference": "AUTH-123456"})
        retried = await client.post("/clinics/north/visits/v4/payments", headers=key,
                                    json={"method": "card", "amount_cents": 2000,
                                          "reference": "AUTH-123456"})
        assert first.status_code == 201, first.text
        assert retried.json()["replayed"] is True
        reused = await client.post("/clinics/north/visits/v4/payments", headers=key,
                                   json={"method": "card", "amount_cents": 2500,
                                         "reference": "AUTH-123456"})
        assert reused.status_code == 422
        assert "Idempotency-Key was already used" in reused.json()["detail"]
        receipt = first.json()
        assert receipt["balance_cents"] == 1000 and receipt["reference"] == "•••••••3456"
        cash = await client.post("/clinics/north/visits/v4/payments", headers=BILLING,
                                 json={"method": "cash", "amount_cents": 1500})
        assert cash.json()["balance_cents"] == -500
        refund = await client.post(
            f"/clinics/north/visits/v4/payments/{cash.json()['receipt_number']}/refunds",
            headers=BILLING, json={"amount_cents": 500, "reason": "overpaid"})
        assert refund.status_code == 201, refund.text
        assert refund.json()["balance_cents"] == 0
        void = await client.post(
            f"/clinics/north/visits/v4/entries/{receipt['receipt_number']}/void",
            headers=MANAGER, json={"reason": "card declined after all"})
        assert void.status_code == 200, void.text
        assert void.json()["balance_cents"] == 2000
        html = await client.get(
            f"/clinics/north/visits/v4/receipts/{receipt['receipt_number']}?format=html",
            headers=BILLING)
        assert "VOIDED" in html.text and "AUTH-123456" not in html.text
        balance = await client.get("/clinics/north/patients/p-4/balance", headers=BILLING)
        assert balance.json()["balance_cents"] == 2000
        assert await store_of(client).entry("north", receipt["receipt_number"]) is not None



async def test_coverage_recorded_after_checkout_is_applied_by_a_reprice_once(
    billing_env: dict[str, Any],
) -> None:
    async with running_billing(billing_env) as client:
        await client.post("/clinics/north/visits/v5/checkout", headers=BILLING,
                          json={"cpt_codes": ["99213"]})
        assert (await client.get("/clinics/north/visits/v5/account",
                                 headers=BILLING)).json()["patient_share_cents"] == 13000
        await client.put("/clinics/north/visits/v5/coverage", headers=FRONT_DESK,
                         json={"copay_cents": 2000})
        key = {**BILLING, "Idempotency-Key": "reprice-1"}
        first = await client.post("/clinics/north/visits/v5/reprice", headers=key,
                                  json={"reason": "insurance card found"})
        assert first.status_code == 200, first.text
        assert first.json()["patient_share_cents"] == 2000
        again = await client.post("/clinics/north/visits/v5/reprice", headers=key,
                                  json={"reason": "insurance card found"})
        assert again.json()["replayed"] is True
        account = (await client.get("/clinics/north/visits/v5/account",
                                    headers=BILLING)).json()
        assert (account["charges_cents"], account["patient_share_cents"]) == (13000, 2000)
        assert (await client.post("/clinics/north/visits/v5/reprice", headers=FRONT_DESK,
                                  json={"reason": "x"})).status_code == 403


@pytest.mark.reliability(
    "an unreadable record on the ledger topic",
    "dead-lettered with the reason; the projection goes on",
)
async def test_an_unreadable_ledger_record_is_dead_lettered_and_the_projection_goes_on(
    billing_env: dict[str, Any],
) -> None:
    async with running_billing(billing_env) as client:
        async with producer(billing_env["kafka_bootstrap"]) as kafka:
            await kafka.send_and_wait(topic_name(LEDGER, billing_env["topic_prefix"]),
                                      b"{not json", key=b"north")
        answer = await client.post("/clinics/north/visits/v6/checkout", headers=BILLING,
                                   json={"cpt_codes": ["99211"]})
        assert answer.status_code == 202, answer.text
        assert answer.json()["account"]["charges_cents"] == 2800
        # the checkout waited for north's ledger partition, the bad record included: its
        # dead letter waits in the outbox, queued with the offsets, until the relay runs
        assert await relay_of(client).tick() == 1
        [record] = await dead_letters(billing_env, expect=1)
        assert record["consumer"] == "billing.ledger"
        assert record["reason"].startswith("not valid JSON")
