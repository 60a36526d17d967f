"""What billing takes from the floor, decided without I/O (``floor_effects``): arrivals
(the visit exists, its patient ref and provider), who saw the patient, how visits end,
checkouts other clients publish (not billing's own, not those older than a day), undone
facts; everything else asks nothing of billing. Time is explicit."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from services.billing.floor import (
    CheckoutTooOld,
    PriceFloorCheckout,
    RememberArrival,
    RememberProvider,
    ReopenVisit,
    UndoArrival,
    VisitChanged,
    VisitEnded,
    VoidUndoneCheckout,
    floor_effects,
)
from shared import events as ev

CHECKED_OUT_AT = datetime(2026, 3, 2, 16, 30, tzinfo=UTC)


def on_the_floor(payload: ev.Payload, source: str = "ehr") -> ev.Event:
    return ev.make_event(payload, clinic_id="north", source=source,
                         occurred_at=CHECKED_OUT_AT, correlation_id="v1")


def test_an_arrival_makes_the_visit_known_with_its_patient_ref_and_provider() -> None:
    arrived = on_the_floor(ev.PatientArrived(visit_id="v1", ticket_code="A-12",
                                             patient_ref="p-901", provider_id="dr-okafor",
                                             visit_type="follow_up"), source="checkin")
    assert floor_effects(arrived, CHECKED_OUT_AT) == (
        RememberArrival("north", "v1", "p-901", "dr-okafor", arrived.envelope.event_id),)
    walk_in = on_the_floor(ev.PatientArrived(visit_id="v2", ticket_code="A-13",
                                             visit_type="follow_up"), source="checkin")
    assert floor_effects(walk_in, CHECKED_OUT_AT) == (
        RememberArrival("north", "v2", None, None, walk_in.envelope.event_id),)


def test_the_provider_who_saw_the_patient_is_kept_for_the_receipt() -> None:
    seen = on_the_floor(ev.ProviderIn(visit_id="v1", provider_id="dr-lee"), source="flow")
    assert floor_effects(seen, CHECKED_OUT_AT) == (RememberProvider("north", "v1", "dr-lee"),)
    anyone = on_the_floor(ev.ProviderIn(visit_id="v1"), source="flow")
    assert floor_effects(anyone, CHECKED_OUT_AT) == (VisitChanged("north", "v1"),)
    # roomed: the visit changed after its arrival, which the floor can then not undo
    roomed = on_the_floor(ev.PatientRoomed(visit_id="v1", room_id="r1"), source="flow")
    assert floor_effects(roomed, CHECKED_OUT_AT) == (VisitChanged("north", "v1"),)


def test_a_cancelled_or_left_visit_ends_with_its_reason() -> None:
    left = on_the_floor(ev.ArrivalCancelled(visit_id="v1", reason="left_without_being_seen"),
                        source="checkin")
    assert floor_effects(left, CHECKED_OUT_AT) == (
        VisitEnded("north", "v1", "left_without_being_seen", left.envelope.event_id),)


def test_a_checkout_from_another_client_is_priced_within_a_day_and_only_logged_after() -> None:
    checkout = on_the_floor(ev.PatientCheckedOut(visit_id="v1", cpt_codes=["99212"]))
    event_id = checkout.envelope.event_id
    ended = VisitEnded("north", "v1", "checked_out", event_id)
    a_day_later = CHECKED_OUT_AT + timedelta(days=1)
    assert floor_effects(checkout, a_day_later) == (
        PriceFloorCheckout("north", "v1", ("99212",), event_id), ended)
    assert floor_effects(checkout, a_day_later + timedelta(seconds=1)) == (
        CheckoutTooOld("north", event_id), ended)


def test_billings_own_checkouts_and_checkouts_without_services_only_end_the_visit() -> None:
    own = on_the_floor(ev.PatientCheckedOut(visit_id="v1", cpt_codes=["99212"]),
                       source="billing")
    empty = on_the_floor(ev.PatientCheckedOut(visit_id="v1"))
    assert floor_effects(own, CHECKED_OUT_AT) == (
        VisitEnded("north", "v1", "checked_out", own.envelope.event_id),)
    assert floor_effects(empty, CHECKED_OUT_AT) == (
        VisitEnded("north", "v1", "checked_out", empty.envelope.event_id),)


def test_an_undone_fact_voids_a_checkouts_charge_opens_its_visit_or_undoes_an_arrival(
) -> None:
    undo = on_the_floor(ev.ActionUndone(undone_event_id="out-1", reason="wrong patient"),
                        source="flow")
    assert floor_effects(undo, CHECKED_OUT_AT) == (
        VoidUndoneCheckout("north", "out-1", undo.envelope.event_id),
        ReopenVisit("north", "out-1"), UndoArrival("north", "out-1"))
    room = on_the_floor(ev.RoomReady(room_id="r1"), source="flow")
    assert floor_effects(room, CHECKED_OUT_AT) == ()
