"""What billing takes from the floor, decided without I/O (``floor_effect``): arrivals'
patient refs, checkouts other clients publish (not billing's own, not those older than
a day), undone checkouts; everything else asks nothing of billing. Time is explicit."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from services.billing.floor import (
    CheckoutTooOld,
    PriceFloorCheckout,
    RememberArrival,
    VoidUndoneCheckout,
    floor_effect,
)
from shared import events as ev

CHECKED_OUT_AT = datetime(2026, 3, 2, 16, 30, tzinfo=UTC)


def on_the_floor(payload: ev.Payload, source: str = "ehr") -> ev.Event:
    return ev.make_event(payload, clinic_id="north", source=source,
                         occurred_at=CHECKED_OUT_AT, correlation_id="v1")


def test_an_arrival_with_a_patient_ref_is_remembered_for_its_checkout() -> None:
    arrived = on_the_floor(ev.PatientArrived(visit_id="v1", ticket_code="A-12",
                                             patient_ref="p-901", visit_type="follow_up"),
                           source="checkin")
    assert floor_effect(arrived, CHECKED_OUT_AT) == RememberArrival("north", "v1", "p-901")
    anonymous = on_the_floor(ev.PatientArrived(visit_id="v2", ticket_code="A-13",
                                               visit_type="follow_up"), source="checkin")
    assert floor_effect(anonymous, CHECKED_OUT_AT) is None


def test_a_checkout_from_another_client_is_priced_within_a_day_and_only_logged_after() -> None:
    checkout = on_the_floor(ev.PatientCheckedOut(visit_id="v1", cpt_codes=["99212"]))
    event_id = checkout.envelope.event_id
    a_day_later = CHECKED_OUT_AT + timedelta(days=1)
    assert floor_effect(checkout, a_day_later) == PriceFloorCheckout(
        "north", "v1", ("99212",), event_id)
    assert floor_effect(checkout, a_day_later + timedelta(seconds=1)) == CheckoutTooOld(
        "north", event_id)


def test_billings_own_checkouts_and_checkouts_without_services_ask_nothing() -> None:
    own = on_the_floor(ev.PatientCheckedOut(visit_id="v1", cpt_codes=["99212"]),
                       source="billing")
    empty = on_the_floor(ev.PatientCheckedOut(visit_id="v1"))
    assert floor_effect(own, CHECKED_OUT_AT) is None
    assert floor_effect(empty, CHECKED_OUT_AT) is None


def test_an_undone_checkout_has_its_charge_voided_and_other_floor_facts_ask_nothing() -> None:
    undo = on_the_floor(ev.ActionUndone(undone_event_id="out-1", reason="wrong patient"),
                        source="flow")
    assert floor_effect(undo, CHECKED_OUT_AT) == VoidUndoneCheckout(
        "north", "out-1", undo.envelope.event_id)
    room = on_the_floor(ev.RoomReady(room_id="r1"), source="flow")
    assert floor_effect(room, CHECKED_OUT_AT) is None
