"""A checkout racing check-in's cancel of the same visit, on the real broker and Redis:
whoever takes the visit-end claim first (shared/visit_end.py) ends the visit; the other
is refused, so a cancelled visit is never charged, and a charged one never cancelled."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from shared import events as ev
from shared.visit_end import VisitEnds
from tests.helpers import eventually
from tests.integration.test_billing_support import (
    BILLING,
    billing_env,
    check_in,
    floor,
    ledger,
    of_type,
    publish_floor,
    running_billing,
)

__all__ = ["billing_env"]


async def test_a_checkout_racing_a_cancel_is_refused_and_a_cancel_racing_it_finds_it(
    billing_env: dict[str, Any],
) -> None:
    await check_in(billing_env, "north", "v40", "v41")
    redis = Redis.from_url(billing_env["redis_url"])
    ends = VisitEnds(redis, billing_env["redis_prefix"])
    try:
        async with running_billing(billing_env) as client:
            # check-in's cancel of v40 took the visit's end and is on its way to the floor
            assert await ends.claim("north", "v40", "cancelled") is None
            refused = await client.post("/clinics/north/visits/v40/checkout",
                                        headers=BILLING, json={"cpt_codes": ["99213"]})
            assert refused.status_code == 409, refused.text
            assert refused.json()["code"] == "visit_ended"
            assert "v40" in refused.json()["detail"]
            # the other order: the checkout ended v41 first, the cancel finds its claim
            charged = await client.post("/clinics/north/visits/v41/checkout",
                                        headers=BILLING, json={"cpt_codes": ["99213"]})
            assert charged.status_code == 202, charged.text
            assert await ends.claim("north", "v41", "cancelled") == "checked_out"
            # a retry of the checkout holds the same claim (not refused by its own)
            again = await client.post("/clinics/north/visits/v41/checkout",
                                      headers=BILLING, json={"cpt_codes": ["99213"]})
            assert again.status_code == 202 and again.json()["replayed"] is True
        entries = await ledger(billing_env, expect=2)
        assert {e.payload.visit_id for e in entries} == {"v41"}  # type: ignore[attr-defined]
        checkouts = of_type(await floor(billing_env, expect=3), "patient.checked_out")
        assert [c.payload.visit_id for c in checkouts] == ["v41"]  # type: ignore[attr-defined]
    finally:
        await redis.aclose()


async def test_a_cancel_undone_on_the_floor_gives_the_visit_s_end_back(
    billing_env: dict[str, Any],
) -> None:
    """check-in cancelled v50 (its claim, then its event); the floor undid the cancel:
    billing's floor consumer gives the claim back, and the visit is checked out."""
    await check_in(billing_env, "north", "v50")
    redis = Redis.from_url(billing_env["redis_url"])
    ends = VisitEnds(redis, billing_env["redis_prefix"])
    try:
        async with running_billing(billing_env) as client:
            assert await ends.claim("north", "v50", "cancelled") is None
            cancel = ev.make_event(ev.ArrivalCancelled(visit_id="v50", reason="cancelled"),
                                   clinic_id="north", source="checkin")
            await publish_floor(billing_env, cancel)
            await publish_floor(billing_env, ev.make_event(
                ev.ActionUndone(undone_event_id=cancel.envelope.event_id, reason="oops"),
                clinic_id="north", source="flow"))

            async def released() -> bool:
                return await ends.holder("north", "v50") is None
            await eventually(released)
            out = await client.post("/clinics/north/visits/v50/checkout", headers=BILLING,
                                    json={"cpt_codes": ["99213"]})
            assert out.status_code == 202, out.text
            assert await ends.holder("north", "v50") == "checked_out"
    finally:
        await redis.aclose()
