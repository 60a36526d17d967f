"""Billing reading the floor: a checkout published by another client and delivered twice
is charged once, with the patient ref its arrival carried; an undone checkout has its
charge voided, once, however often the undo is delivered, and the visit is open again
(its next checkout is told to the floor); a floor record billing cannot read is
dead-lettered with the reason, and billing goes on with the next."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from shared import events as ev
from shared.projection import partition_for
from shared.topics import FLOOR, topic_name
from tests.helpers import eventually, producer
from tests.integration.test_billing_support import (
    BILLING,
    billing_env,
    dead_letters,
    floor,
    ledger,
    of_type,
    relay_of,
    running_billing,
)

__all__ = ["billing_env"]


async def _publish(env: dict[str, Any], *events: ev.Event) -> None:
    async with producer(env["kafka_bootstrap"]) as kafka:
        for event in events:
            await kafka.send_and_wait(topic_name(FLOOR, env["topic_prefix"]), ev.encode(event),
                                      key=event.clinic_id.encode())


def _floor(payload: ev.Payload) -> ev.Event:
    return ev.make_event(payload, clinic_id="north", source="checkin",
                         occurred_at=datetime.now(UTC))


async def _account(client: httpx.AsyncClient, visit: str) -> dict[str, Any]:
    answer = await client.get(f"/clinics/north/visits/{visit}/account", headers=BILLING)
    return answer.json() if answer.status_code == 200 else {}


@pytest.mark.reliability(
    "a checkout on the floor delivered three times, its undo twice",
    "one charge, voided once",
)
async def test_a_checkout_on_the_floor_delivered_twice_is_charged_once_then_undone_once(
    billing_env: dict[str, Any],
) -> None:
    async with running_billing(billing_env) as client:
        arrived = _floor(ev.PatientArrived(visit_id="v1", ticket_code="A-12",
                                           patient_ref="p-901", visit_type="follow-up"))
        checkout = _floor(ev.PatientCheckedOut(visit_id="v1", cpt_codes=["99212"]))
        await _publish(billing_env, arrived, checkout, checkout)

        async def charged() -> dict[str, Any] | None:
            account = await _account(client, "v1")
            return account if account.get("charges_cents") else None

        account = await eventually(charged, timeout=30)
        assert account["charges_cents"] == 7500 and account["patient_ref"] == "p-901"
        await _publish(billing_env, checkout)  # a third copy, after the charge is projected
        undo = _floor(ev.ActionUndone(undone_event_id=checkout.envelope.event_id,
                                      reason="checked out the wrong patient"))
        await _publish(billing_env, undo, undo)

        async def voided() -> dict[str, Any] | None:  # the charge's void and the share's
            account = await _account(client, "v1")
            done = account.get("charges_cents") == 0 and account.get("balance_cents") == 0
            return account if done else None

        account = await eventually(voided, timeout=30)
        assert account["balance_cents"] == 0
        events = await ledger(billing_env)
        assert len({e.envelope.event_id for e in of_type(events, "charge.posted")}) == 1
        assert len({e.envelope.event_id for e in of_type(events, "entry.voided")}) == 2

        # a desk checkout undone on the floor loses its charge the same way
        await _publish(billing_env, _floor(ev.PatientArrived(
            visit_id="v2", ticket_code="A-14", patient_ref="p-902", visit_type="follow-up")))
        desk = await client.post("/clinics/north/visits/v2/checkout", headers=BILLING,
                                 json={"cpt_codes": ["99213"]})
        assert desk.status_code == 202, desk.text
        assert desk.json()["ended_on_floor"] is True
        await _publish(billing_env, _floor(ev.ActionUndone(
            undone_event_id=desk.json()["event_id"], reason="not finished")))

        async def desk_voided() -> bool:
            return (await _account(client, "v2")).get("charges_cents") == 0

        await eventually(desk_voided, timeout=30)
        # checked out again after the undo: charged anew, once, and the floor, which has
        # the visit open again, hears of this checkout too
        again = await client.post("/clinics/north/visits/v2/checkout", headers=BILLING,
                                  json={"cpt_codes": ["99214"]})
        assert (again.json()["outcome"], again.json()["ended_on_floor"]) == ("priced", True)
        assert (await _account(client, "v2"))["charges_cents"] == 18500
        desk_checkouts = [e for e in of_type(await floor(billing_env), "patient.checked_out")
                          if e.envelope.source == "billing"]
        assert [e.envelope.event_id for e in desk_checkouts] == [
            desk.json()["event_id"], again.json()["event_id"]]


@pytest.mark.reliability(
    "unreadable floor records (a tombstone, not JSON, keyed by another clinic, on another "
    "partition than its key's)",
    "each dead-lettered by billing with the reason; the next checkout is charged",
)
async def test_an_unreadable_floor_record_is_dead_lettered_and_billing_goes_on(
    billing_env: dict[str, Any],
) -> None:
    floor_topic = topic_name(FLOOR, billing_env["topic_prefix"])
    north = partition_for(b"north", FLOOR.partitions)
    checkout = _floor(ev.PatientCheckedOut(visit_id="v9", cpt_codes=["99212"]))
    async with running_billing(billing_env) as client:
        async with producer(billing_env["kafka_bootstrap"]) as kafka:
            await kafka.send_and_wait(floor_topic, None, key=b"north")
            await kafka.send_and_wait(floor_topic, b"{not json", key=b"north")
            await kafka.send_and_wait(floor_topic, ev.encode(checkout), key=b"south")
            await kafka.send_and_wait(floor_topic, ev.encode(checkout), key=b"north",
                                      partition=(north + 1) % FLOOR.partitions)
            await kafka.send_and_wait(floor_topic, ev.encode(checkout), key=b"north")

        async def charged() -> bool:
            return bool((await _account(client, "v9")).get("charges_cents"))

        await eventually(charged, timeout=30)
        relay = relay_of(client)

        async def four_letters_waiting() -> bool:  # the other partitions read to their end
            return await relay.outbox.length() == 4

        await eventually(four_letters_waiting, timeout=30)
        assert await relay.tick() == 4
        letters = await dead_letters(billing_env, expect=4)
        assert {letter["consumer"] for letter in letters} == {"billing.floor"}
        reasons = sorted(letter["reason"] for letter in letters)
        assert reasons[0] == "empty record (tombstone)"
        assert reasons[1].startswith("key 'south' is not the event's clinic_id 'north'")
        assert reasons[2].startswith("not valid JSON")
        assert reasons[3].startswith("wrong partition: key 'north' belongs on partition "
                                     f"{north} of {FLOOR.partitions}")
        # the copies billing could not read priced nothing: one charge, from the good copy
        events = await ledger(billing_env)
        assert len(of_type(events, "charge.posted")) == 1


@pytest.mark.reliability(
    "a walk-in's arrival undone on the floor (entered twice), then a checkout and a payment",
    "409 visit_ended, nothing on the ledger or the floor",
)
async def test_a_visit_whose_arrival_was_undone_is_refused_checkout_and_payment(
    billing_env: dict[str, Any],
) -> None:
    async with running_billing(billing_env) as client:
        arrived = _floor(ev.PatientArrived(visit_id="v7", ticket_code="A-17",
                                           visit_type="walk_in"))
        undo = _floor(ev.ActionUndone(undone_event_id=arrived.envelope.event_id,
                                      reason="entered twice"))
        await _publish(billing_env, arrived, undo)
        checkout = await client.post("/clinics/north/visits/v7/checkout", headers=BILLING,
                                     json={"cpt_codes": ["99213"]})
        assert checkout.status_code == 409, checkout.text
        assert checkout.json()["code"] == "visit_ended"
        assert "arrival was undone" in checkout.json()["detail"]
        payment = await client.post("/clinics/north/visits/v7/payments",
                                    headers={**BILLING, "Idempotency-Key": "k-7"},
                                    json={"method": "cash", "amount_cents": 500})
        assert payment.status_code == 409, payment.text
        assert await ledger(billing_env) == []
        assert of_type(await floor(billing_env), "patient.checked_out") == []
        # an arrival undone after the patient was roomed: the floor refuses that undo (it
        # dead-letters it), so the visit stands and is checked out
        seen = _floor(ev.PatientArrived(visit_id="v8", ticket_code="A-18",
                                        visit_type="walk_in"))
        await _publish(billing_env, seen, _floor(ev.PatientRoomed(visit_id="v8", room_id="r1")),
                       _floor(ev.ActionUndone(undone_event_id=seen.envelope.event_id)))
        checkout = await client.post("/clinics/north/visits/v8/checkout", headers=BILLING,
                                     json={"cpt_codes": ["99213"]})
        assert checkout.status_code == 202, checkout.text
