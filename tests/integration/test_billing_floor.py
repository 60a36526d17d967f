"""Billing reading the floor: a checkout published by another client and delivered twice
is charged once, with the patient ref its arrival carried; an undone checkout has its
charge voided, once, however often the undo is delivered."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from shared import events as ev
from shared.topics import FLOOR, topic_name
from tests.helpers import eventually, producer
from tests.integration.test_billing_support import (
    BILLING,
    billing_env,
    ledger,
    of_type,
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

        async def voided() -> dict[str, Any] | None:
            account = await _account(client, "v1")
            return account if account.get("charges_cents") == 0 else None

        account = await eventually(voided, timeout=30)
        assert account["balance_cents"] == 0
        events = await ledger(billing_env)
        assert len({e.envelope.event_id for e in of_type(events, "charge.posted")}) == 1
        assert len({e.envelope.event_id for e in of_type(events, "entry.voided")}) == 2

        # a desk checkout undone on the floor loses its charge the same way
        desk = await client.post("/clinics/north/visits/v2/checkout", headers=BILLING,
                                 json={"cpt_codes": ["99213"]})
        assert desk.status_code == 202, desk.text
        await _publish(billing_env, _floor(ev.ActionUndone(
            undone_event_id=desk.json()["event_id"], reason="not finished")))

        async def desk_voided() -> bool:
            return (await _account(client, "v2")).get("charges_cents") == 0

        await eventually(desk_voided, timeout=30)
        # checked out again after the undo: charged anew, once
        again = await client.post("/clinics/north/visits/v2/checkout", headers=BILLING,
                                  json={"cpt_codes": ["99214"]})
        assert again.json()["outcome"] == "priced"
        assert (await _account(client, "v2"))["charges_cents"] == 18500
