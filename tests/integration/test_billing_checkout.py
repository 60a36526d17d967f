"""Checkout on the real broker and Redis: one charge per visit whatever the duplicates,
retries and redeliveries; bad input refused with a clear message and nothing published;
payments and refunds only with an Idempotency-Key; every command refers to a visit, entry
or payment that exists at the clinic, and what billing answers 2xx the floor applies."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
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
    check_in,
    dead_letters,
    floor,
    keyed,
    ledger,
    not_appliable_on_the_floor,
    of_type,
    publish_floor,
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
    await check_in(billing_env, "north", "v1")
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
        # every replay answers as the first did: its event, its entries, the visit ended
        first = next(a.json() for a in answers if a.json()["outcome"] == "priced")
        assert first["ended_on_floor"] is True and len(first["posted"]) == 2
        assert {(a.json()["event_id"], tuple(a.json()["posted"]), a.json()["ended_on_floor"])
                for a in answers} == {(first["event_id"], tuple(first["posted"]), True)}
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
        checkouts = of_type(await floor(billing_env, expect=2), "patient.checked_out")
        assert [c.envelope.event_id for c in checkouts] == [answers[0].json()["event_id"]]
        assert await not_appliable_on_the_floor(billing_env) == []


@pytest.mark.reliability(
    "a ledger entry redelivered (plain Kafka client)",
    "counted once",
)
async def test_a_redelivered_ledger_entry_counts_once(billing_env: dict[str, Any]) -> None:
    await check_in(billing_env, "north", "v2")
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
    await check_in(billing_env, "north", "v3", "v3b")
    async with running_billing(billing_env) as client:
        unknown = await client.post("/clinics/north/visits/v3/checkout", headers=BILLING,
                                    json={"cpt_codes": ["99213", "12345"]})
        assert unknown.status_code == 422
        assert "12345" in unknown.json()["detail"]
        assert "fee schedule" in unknown.json()["detail"]
        negative = await client.post("/clinics/north/visits/v3/payments",
                                     headers=keyed(BILLING),
                                     json={"method": "cash", "amount_cents": -500})
        assert negative.status_code == 422
        assert "amount_cents" in negative.text
        # strict: a number as a string is not a number, a day of year 1 not a business day
        for path, body, field in [
            ("/clinics/north/visits/v3/payments", {"method": "cash", "amount_cents": "1000"},
             "amount_cents"),
            ("/clinics/north/drawer-counts", {"business_date": "2026-12-01",
                                              "cash_cents": "1000"}, "cash_cents"),
        ]:
            lenient = await client.post(path, headers=keyed(BILLING), json=body)
            assert lenient.status_code == 422, (path, lenient.text)
            assert field in lenient.json()["detail"], lenient.text
        coverage = await client.put("/clinics/north/visits/v3/coverage", headers=BILLING,
                                    json={"copay_cents": "2500", "self_pay": "true"})
        assert coverage.status_code == 422, coverage.text
        assert all(f in coverage.json()["detail"] for f in ("copay_cents", "self_pay"))
        ancient = await client.post("/clinics/north/drawer-counts", headers=keyed(BILLING),
                                    json={"business_date": "0001-01-01", "cash_cents": 0})
        assert ancient.status_code == 422, ancient.text
        assert ancient.json()["code"] == "date_out_of_range"
        assert "0001-01-01" in ancient.json()["detail"]
        assert await ledger(billing_env) == []
        assert of_type(await floor(billing_env), "patient.checked_out") == []
        charged = await client.post("/clinics/north/visits/v3b/checkout", headers=BILLING,
                                    json={"cpt_codes": ["99213"]})
        other_codes = await client.post("/clinics/north/visits/v3b/checkout", headers=BILLING,
                                        json={"cpt_codes": ["99215"]})
        assert charged.status_code == 202 and other_codes.status_code == 409
        assert "already charged for 99213" in other_codes.json()["detail"]

        paid = await client.post("/clinics/north/visits/v3/payments", headers=keyed(BILLING),
                                 json={"method": "cash", "amount_cents": 2000})
        assert paid.status_code == 201, paid.text
        payment_id = paid.json()["receipt_number"]
        too_much = await client.post(
            f"/clinics/north/visits/v3/payments/{payment_id}/refunds", headers=keyed(BILLING),
            json={"amount_cents": 2001, "reason": "overpaid"})
        assert too_much.status_code == 409
        assert "more than the 20.00 left to refund" in too_much.json()["detail"]
        card_number = await client.post(
            "/clinics/north/visits/v3/payments", headers=keyed(BILLING),
            json={"method": "card", "amount_cents": 100, "reference": "4111 1111 1111 1111"})
        assert card_number.status_code == 422
        assert "card number" in card_number.json()["detail"]
        # roles: front desk cannot take payments; billing cannot void
        assert (await client.post("/clinics/north/visits/v3/payments",
                                  headers=keyed(FRONT_DESK),
                                  json={"method": "cash", "amount_cents": 1})).status_code == 403
        assert (await client.post(f"/clinics/north/visits/v3/entries/{payment_id}/void",
                                  headers=BILLING, json={"reason": "x"})).status_code == 403
        assert len(await ledger(billing_env)) == 3  # v3b's charge and share, v3's payment


async def test_payments_refunds_voids_and_receipts(billing_env: dict[str, Any]) -> None:
    await check_in(billing_env, "north", "v4")
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
        cash = await client.post("/clinics/north/visits/v4/payments", headers=keyed(BILLING),
                                 json={"method": "cash", "amount_cents": 1500})
        assert cash.json()["balance_cents"] == -500
        refund = await client.post(
            f"/clinics/north/visits/v4/payments/{cash.json()['receipt_number']}/refunds",
            headers=keyed(BILLING), json={"amount_cents": 500, "reason": "overpaid"})
        assert refund.status_code == 201, refund.text
        assert refund.json()["balance_cents"] == 0
        void = await client.post(
            f"/clinics/north/visits/v4/entries/{receipt['receipt_number']}/void",
            headers=MANAGER, json={"reason": "card declined after all"})
        assert void.status_code == 200, void.text
        assert void.json()["balance_cents"] == 2000 and void.json()["replayed"] is False
        again = await client.post(  # the manager's double click: the entry is voided once
            f"/clinics/north/visits/v4/entries/{receipt['receipt_number']}/void",
            headers=MANAGER, json={"reason": "card declined after all"})
        assert again.status_code == 200 and again.json()["replayed"] is True
        assert len(of_type(await ledger(billing_env), "entry.voided")) == 1
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
    await check_in(billing_env, "north", "v5")
    async with running_billing(billing_env) as client:
        await client.post("/clinics/north/visits/v5/checkout", headers=BILLING,
                          json={"cpt_codes": ["99213"]})
        assert (await client.get("/clinics/north/visits/v5/account",
                                 headers=BILLING)).json()["patient_share_cents"] == 13000
        await client.put("/clinics/north/visits/v5/coverage", headers=FRONT_DESK,
                         json={"copay_cents": 2000})
        first = await client.post("/clinics/north/visits/v5/reprice", headers=BILLING,
                                  json={"reason": "insurance card found"})
        assert first.status_code == 200, first.text
        assert first.json()["patient_share_cents"] == 2000
        # retried without a key: the share stands under the latest coverage already
        again = await client.post("/clinics/north/visits/v5/reprice", headers=BILLING,
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
    await check_in(billing_env, "north", "v6")
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


@pytest.mark.reliability(
    "two identical payments (and a refund) sent without an Idempotency-Key",
    "428 naming the header; nothing posted",
)
async def test_a_payment_without_an_idempotency_key_is_refused_and_nothing_is_posted(
    billing_env: dict[str, Any],
) -> None:
    await check_in(billing_env, "north", "v10")
    async with running_billing(billing_env) as client:
        body = {"method": "cash", "amount_cents": 2500}
        answers = [await client.post("/clinics/north/visits/v10/payments", headers=BILLING,
                                     json=body) for _ in range(2)]
        assert [a.status_code for a in answers] == [428, 428]
        refused = answers[0].json()
        assert refused["code"] == "idempotency_key_required"
        assert "Idempotency-Key header is required for a payment" in refused["detail"]
        paid = await client.post("/clinics/north/visits/v10/payments",
                                 headers=keyed(BILLING, "till-1-0042"), json=body)
        assert paid.status_code == 201, paid.text
        refund = await client.post(
            f"/clinics/north/visits/v10/payments/{paid.json()['receipt_number']}/refunds",
            headers=BILLING, json={"amount_cents": 500, "reason": "overpaid"})
        assert refund.status_code == 428 and "for a refund" in refund.json()["detail"]
        # a role that may not pay hears that first, key or no key
        assert (await client.post("/clinics/north/visits/v10/payments", headers=FRONT_DESK,
                                  json=body)).status_code == 403
        assert [e.event_type for e in await ledger(billing_env)] == ["payment.recorded"]

        schema = (await client.get("/openapi.json")).json()["paths"]
        for path in ("/clinics/{clinic_id}/visits/{visit_id}/payments",
                     "/clinics/{clinic_id}/visits/{visit_id}/payments/{payment_id}/refunds"):
            operation = schema[path]["post"]
            [header] = [p for p in operation["parameters"] if p["name"] == "Idempotency-Key"]
            assert header["in"] == "header" and header["required"] is True
            assert "428" in operation["responses"]
        for path, method in (("/clinics/{clinic_id}/visits/{visit_id}/checkout", "post"),
                             ("/clinics/{clinic_id}/visits/{visit_id}/coverage", "put"),
                             ("/clinics/{clinic_id}/drawer-counts", "post")):
            operation = schema[path][method]
            assert not any(p["name"] == "Idempotency-Key"
                           for p in operation.get("parameters", []))
            assert "natural key" in operation.get("description", "")


@pytest.mark.reliability(
    "money commands naming another clinic's visit, a visit never checked in, an unknown "
    "payment or entry, a cancelled visit, a day not begun",
    "404, 409 or 422 naming it; nothing published; every checkout billing answered 2xx "
    "applies on the floor",
)
async def test_commands_naming_what_does_not_exist_are_refused_by_name(
    billing_env: dict[str, Any],
) -> None:
    await check_in(billing_env, "south", "s1")
    await check_in(billing_env, "north", "v11", "v12", patient_ref="p-11")
    await publish_floor(billing_env, ev.make_event(
        ev.ArrivalCancelled(visit_id="v12", reason="left_without_being_seen"),
        clinic_id="north", source="checkin", occurred_at=datetime.now(UTC)))
    async with running_billing(billing_env) as client:
        async def north(method: str, path: str, body: Any = None,
                        headers: dict[str, str] = MANAGER) -> tuple[int, str]:
            answer = await client.request(method, f"/clinics/north{path}", json=body,
                                          headers=keyed(headers))
            return answer.status_code, answer.json()["detail"]

        south_visit = "visit s1 is not a visit of clinic north"
        for method, path, body, headers in (
                ("POST", "/visits/s1/checkout", {"cpt_codes": ["99213"]}, BILLING),
                ("PUT", "/visits/s1/coverage", {"copay_cents": 100}, FRONT_DESK),
                ("POST", "/visits/s1/payments", {"method": "cash", "amount_cents": 1}, BILLING),
                ("POST", "/visits/s1/payments/pay-1/refunds", {"amount_cents": 1,
                                                                "reason": "x"}, BILLING),
                ("POST", "/visits/s1/entries/chg-s1/void", {"reason": "x"}, MANAGER),
                ("POST", "/visits/s1/reprice", {"reason": "x"}, MANAGER),
                ("GET", "/visits/s1/account", None, MANAGER),
                ("POST", "/visits/nobody/checkout", {"cpt_codes": ["99213"]}, BILLING)):
            status, detail = await north(method, path, body, headers)
            assert status == 404, (path, status, detail)
            assert detail.startswith(south_visit if "s1" in path
                                     else "visit nobody is not a visit of clinic north")
        assert await north("GET", "/visits/s1/receipts/pay-1") == (
            404, "no payment or refund pay-1 on visit s1 of clinic north")
        assert await north("GET", "/patients/p-nobody/balance") == (
            404, "patient p-nobody has no visit on the ledger of clinic north")
        # a visit of north: what it does not hold is named
        assert await north("POST", "/visits/v11/payments/pay-x/refunds",
                           {"amount_cents": 1, "reason": "x"}, BILLING) == (
            404, "no payment pay-x on visit v11")
        assert await north("POST", "/visits/v11/entries/chg-x/void", {"reason": "x"}) == (
            404, "no entry chg-x on visit v11")
        assert await north("POST", "/visits/v11/reprice", {"reason": "x"}) == (
            409, "visit v11 has no charge standing: nothing to re-price")
        status, detail = await north("POST", "/visits/v12/checkout", {"cpt_codes": ["99213"]},
                                     BILLING)
        assert (status, detail) == (409, "visit v12 of clinic north was left without being "
                                         "seen: it cannot be checked out")
        later = (datetime.now(UTC) + timedelta(days=2)).date().isoformat()
        status, detail = await north("POST", "/drawer-counts",
                                     {"business_date": later, "cash_cents": 0})
        assert status == 422 and f"business_date {later} has not begun at clinic north" in (
            detail)
        assert await ledger(billing_env) == []
        assert of_type(await floor(billing_env), "patient.checked_out") == []

        # what exists is answered: v11's empty account, then its checkout
        account = await client.get("/clinics/north/visits/v11/account", headers=BILLING)
        assert account.status_code == 200 and account.json()["balance_cents"] == 0
        out = await client.post("/clinics/north/visits/v11/checkout", headers=BILLING,
                                json={"cpt_codes": ["99213"]})
        assert out.status_code == 202 and out.json()["ended_on_floor"] is True
    assert await not_appliable_on_the_floor(billing_env) == []


async def test_a_patient_checked_in_a_moment_ago_is_checked_out_and_paid_at_once(
    billing_env: dict[str, Any],
) -> None:
    async with running_billing(billing_env) as client:
        # no waiting between the arrival and the desk: billing reads the floor up to now
        await check_in(billing_env, "north", "v13", patient_ref="p-13")
        out = await client.post("/clinics/north/visits/v13/checkout", headers=BILLING,
                                json={"cpt_codes": ["99212"]})
        assert out.status_code == 202, out.text
        assert out.json()["account"]["patient_ref"] == "p-13"
        await check_in(billing_env, "north", "v14")
        paid = await client.post("/clinics/north/visits/v14/payments", headers=keyed(BILLING),
                                 json={"method": "cash", "amount_cents": 2500})
        assert paid.status_code == 201, paid.text


async def test_a_visit_checked_out_by_another_client_is_priced_without_a_second_floor_event(
    billing_env: dict[str, Any],
) -> None:
    await check_in(billing_env, "north", "v15")
    ehr = ev.make_event(ev.PatientCheckedOut(visit_id="v15"), clinic_id="north",
                        source="ehr", occurred_at=datetime.now(UTC))
    await publish_floor(billing_env, ehr)
    async with running_billing(billing_env) as client:
        coded = await client.post("/clinics/north/visits/v15/checkout", headers=BILLING,
                                  json={"cpt_codes": ["99213"]})
        assert coded.status_code == 202, coded.text
        assert (coded.json()["outcome"], coded.json()["ended_on_floor"]) == ("priced", False)
        checkouts = of_type(await floor(billing_env), "patient.checked_out")
        assert [c.envelope.event_id for c in checkouts] == [ehr.envelope.event_id]
    assert await not_appliable_on_the_floor(billing_env) == []


async def test_a_patient_ref_other_than_the_arrivals_is_refused_and_no_balance_moves(
    billing_env: dict[str, Any],
) -> None:
    async with running_billing(billing_env) as client:
        await check_in(billing_env, "south", "v8", patient_ref="pt-real")
        coverage = await client.put("/clinics/south/visits/v8/coverage", headers=FRONT_DESK,
                                    json={"patient_ref": "pt-someoneelse", "copay_cents": 2500})
        assert coverage.status_code == 409, coverage.text
        checkout = await client.post("/clinics/south/visits/v8/checkout", headers=BILLING,
                                     json={"cpt_codes": ["99213"], "patient_ref": "pt-third"})
        assert checkout.status_code == 409, checkout.text
        for refused in (coverage, checkout):
            assert refused.json()["code"] == "patient_mismatch"
            assert "visit v8 of clinic south" in refused.json()["detail"]
        assert await ledger(billing_env) == []
        checkout = await client.post("/clinics/south/visits/v8/checkout", headers=BILLING,
                                     json={"cpt_codes": ["99213"]})
        assert checkout.status_code == 202, checkout.text
        for other in ("pt-someoneelse", "pt-third"):
            assert (await client.get(f"/clinics/south/patients/{other}/balance",
                                     headers=BILLING)).status_code == 404
        real = await client.get("/clinics/south/patients/pt-real/balance", headers=BILLING)
        assert real.status_code == 200, real.text


async def test_a_charge_after_a_no_charge_checkout_replays_as_it_answered(
    billing_env: dict[str, Any],
) -> None:
    """``{"cpt_codes": []}`` is an explicit no-charge checkout: it ends the visit, charges
    nothing. A priced checkout after it does not end the visit again (ended_on_floor
    false), and its replay answers exactly that, not the earlier checkout's end."""
    await check_in(billing_env, "north", "v1")
    async with running_billing(billing_env) as client:
        empty = await client.post("/clinics/north/visits/v1/checkout",
                                  headers=keyed(BILLING, "none"), json={"cpt_codes": []})
        assert empty.status_code == 202, empty.text
        assert empty.json()["outcome"] == "nothing_to_charge"
        assert empty.json()["ended_on_floor"] is True
        body = {"cpt_codes": ["99213"]}
        priced = await client.post("/clinics/north/visits/v1/checkout",
                                   headers=keyed(BILLING, "priced"), json=body)
        assert priced.status_code == 202, priced.text
        assert priced.json()["outcome"] == "priced"
        assert priced.json()["ended_on_floor"] is False
        for headers in (keyed(BILLING, "priced"), BILLING):
            again = await client.post("/clinics/north/visits/v1/checkout", headers=headers,
                                      json=body)
            assert again.status_code == 202, again.text
            assert again.json()["ended_on_floor"] is False, again.json()
            assert again.json()["event_id"] == priced.json()["event_id"]
            assert again.json()["posted"] == priced.json()["posted"]
        assert len(of_type(await floor(billing_env), "patient.checked_out")) == 1
