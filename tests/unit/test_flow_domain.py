"""The floor's story, fact by fact: pure domain, no broker, no Redis."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shared.floor.model import FHIR_STATUS, Clinic, NotApplicable, RoomState, VisitStatus

T0 = datetime(2026, 3, 2, 13, 0, tzinfo=UTC)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def arrive(clinic: Clinic, visit_id: str, minute: float, *, provider: str | None = "dr-lee",
           scheduled: float | None = None, priority: str = "routine", event_id: str = "") -> None:
    clinic.arrive(at=at(minute), visit_id=visit_id, ticket_code=f"A-{len(visit_id)}",
                  provider_id=provider, visit_type="follow_up",
                  scheduled_at=None if scheduled is None else at(scheduled),
                  priority=priority, event_id=event_id)  # type: ignore[arg-type]


def test_urgent_walk_in_is_roomed_before_routine_patients() -> None:
    clinic = Clinic("north")
    arrive(clinic, "v1", 0, scheduled=5)
    arrive(clinic, "v2", 1, scheduled=10)
    arrive(clinic, "v3", 2, priority="urgent")
    assert [v.visit_id for v in clinic.waiting()] == ["v3", "v1", "v2"]


def test_on_time_patients_keep_their_slot_and_late_ones_are_fitted_in_as_walk_ins() -> None:
    clinic = Clinic("north")
    arrive(clinic, "walkin", 5)  # walk-in at 13:05
    arrive(clinic, "ontime", 10, scheduled=15)  # slot 13:15, on time
    arrive(clinic, "late", 30, scheduled=0)  # slot 13:00, 30 minutes late
    arrive(clinic, "early", 12, scheduled=40)
    order = [v.visit_id for v in clinic.waiting()]
    assert order == ["walkin", "ontime", "late", "early"]
    assert clinic.visits["late"].late and not clinic.visits["ontime"].late


def test_a_visit_moves_through_roomed_provider_and_checkout_and_frees_its_room() -> None:
    clinic = Clinic("north")
    clinic.room_ready(at=at(0), room_id="r1")
    arrive(clinic, "v1", 1)
    roomed = clinic.patient_roomed(at=at(11), visit_id="v1", room_id="r1")
    assert roomed.stages[0].stage == "arrival_to_roomed" and roomed.stages[0].minutes == 10
    assert clinic.rooms["r1"].state is RoomState.OCCUPIED
    seen = clinic.provider_in(at=at(15), visit_id="v1")
    assert seen.stages[0].minutes == 4
    out = clinic.checked_out(at=at(35), visit_id="v1")
    assert out.stages[0].stage == "provider_to_checkout" and out.stages[0].minutes == 20
    assert "v1" not in clinic.visits  # memory holds open visits only
    assert clinic.rooms["r1"].state is RoomState.NEEDS_CLEANING
    ready = clinic.room_ready(at=at(41), room_id="r1")
    assert ready.stages[0].stage == "room_turnover" and ready.stages[0].minutes == 6
    assert clinic.counts == {"checked_out": 1}


def test_duplicate_facts_change_nothing() -> None:
    clinic = Clinic("north")
    arrive(clinic, "v1", 0)
    again = clinic.arrive(at=at(1), visit_id="v1", ticket_code="A-9", provider_id=None,
                          visit_type="x", scheduled_at=None)
    assert again.duplicate and clinic.visits["v1"].ticket_code == "A-2"
    clinic.patient_roomed(at=at(2), visit_id="v1", room_id="r1")
    assert clinic.patient_roomed(at=at(3), visit_id="v1", room_id="r1").duplicate
    clinic.checked_out(at=at(9), visit_id="v1")
    assert clinic.checked_out(at=at(10), visit_id="v1").duplicate
    # an arrival replayed after the visit ended does not reopen it
    assert clinic.arrive(at=at(11), visit_id="v1", ticket_code="A-2", provider_id=None,
                         visit_type="x", scheduled_at=None).duplicate
    assert clinic.counts == {"checked_out": 1}


@pytest.mark.parametrize(
    ("fact", "reason"),
    [
        (lambda c: c.patient_roomed(at=at(1), visit_id="ghost", room_id="r1"), "unknown visit"),
        (lambda c: c.provider_in(at=at(1), visit_id="ghost"), "unknown visit"),
        (lambda c: c.checked_out(at=at(1), visit_id="ghost"), "unknown visit"),
        (lambda c: c.cancelled(at=at(1), visit_id="ghost"), "unknown visit"),
        (lambda c: c.action_undone(at=at(1), undone_event_id="nope"), "unknown or too old"),
    ],
)
def test_facts_about_unknown_visits_cannot_be_applied(fact: object, reason: str) -> None:
    clinic = Clinic("north")
    with pytest.raises(NotApplicable, match=reason):
        fact(clinic)  # type: ignore[operator]


def test_a_room_holds_one_patient() -> None:
    clinic = Clinic("north")
    arrive(clinic, "v1", 0)
    arrive(clinic, "v2", 0)
    clinic.patient_roomed(at=at(1), visit_id="v1", room_id="r1")
    with pytest.raises(NotApplicable, match="already holds visit v1"):
        clinic.patient_roomed(at=at(2), visit_id="v2", room_id="r1")
    with pytest.raises(NotApplicable, match="holds visit v1"):
        clinic.room_out_of_service(at=at(2), room_id="r1")
    # a room with a patient in it is not ready: marking it so would let a second one in
    with pytest.raises(NotApplicable, match="room r1 holds visit v1"):
        clinic.room_ready(at=at(2), room_id="r1", event_id="e9")
    assert clinic.rooms["r1"].state is RoomState.OCCUPIED
    assert clinic.rooms["r1"].visit_id == "v1"
    assert clinic.visits["v2"].status is VisitStatus.WAITING
    clinic.checked_out(at=at(3), visit_id="v1")
    clinic.room_ready(at=at(4), room_id="r1")  # cleaned after checkout: ready again
    clinic.patient_roomed(at=at(5), visit_id="v2", room_id="r1")


def test_checkout_of_a_visit_never_roomed_ends_the_visit() -> None:
    clinic = Clinic("north")
    arrive(clinic, "v1", 0)
    change = clinic.checked_out(at=at(30), visit_id="v1")
    assert change.stages == [] and "v1" not in clinic.visits


def test_provider_in_before_rooming_cannot_be_applied() -> None:
    clinic = Clinic("north")
    arrive(clinic, "v1", 0)
    with pytest.raises(NotApplicable, match="v1, which is waiting and not roomed"):
        clinic.provider_in(at=at(5), visit_id="v1", provider_id="dr-kim", event_id="e2")
    visit = clinic.visits["v1"]
    assert visit.status is VisitStatus.WAITING and visit.provider_id == "dr-lee"
    assert [v.visit_id for v in clinic.waiting()] == ["v1"]
    clinic.patient_roomed(at=at(6), visit_id="v1", room_id="r1")
    clinic.provider_in(at=at(7), visit_id="v1", provider_id="dr-kim")
    assert clinic.visits["v1"].status is VisitStatus.WITH_PROVIDER


def test_patient_who_leaves_after_rooming_sends_the_room_to_cleaning() -> None:
    clinic = Clinic("north")
    arrive(clinic, "v1", 0)
    clinic.patient_roomed(at=at(1), visit_id="v1", room_id="r1")
    clinic.cancelled(at=at(2), visit_id="v1", reason="left_without_being_seen")
    assert clinic.rooms["r1"].state is RoomState.NEEDS_CLEANING
    assert clinic.counts == {"left_without_being_seen": 1}


def test_delays_are_per_provider_or_clinic_wide_and_cleared_with_zero() -> None:
    clinic = Clinic("north")
    clinic.delay_announced(at=at(0), provider_id="dr-lee", minutes=25)
    clinic.delay_announced(at=at(10), provider_id=None, minutes=10)
    delay = clinic.delay_for("dr-lee")
    assert delay is not None and delay.minutes == 25  # the later end wins
    assert clinic.delay_for("dr-kim") is not None  # clinic-wide applies to everyone
    clinic.delay_announced(at=at(11), provider_id=None, minutes=0)
    assert clinic.delay_for("dr-kim") is None


def test_undo_of_a_wrong_rooming_puts_the_patient_back_in_line_and_frees_the_room() -> None:
    clinic = Clinic("north")
    clinic.room_ready(at=at(0), room_id="r1", event_id="e0")
    arrive(clinic, "v1", 1, event_id="e1")
    arrive(clinic, "v2", 2, event_id="e2")
    clinic.patient_roomed(at=at(5), visit_id="v2", room_id="r1", event_id="e3")
    clinic.action_undone(at=at(6), undone_event_id="e3", event_id="e4")
    assert [v.visit_id for v in clinic.waiting()] == ["v1", "v2"]
    assert clinic.rooms["r1"].state is RoomState.READY
    clinic.patient_roomed(at=at(7), visit_id="v1", room_id="r1", event_id="e5")
    assert clinic.visits["v1"].room_id == "r1"


def test_undo_of_an_early_checkout_reopens_the_visit_in_its_room() -> None:
    clinic = Clinic("north")
    arrive(clinic, "v1", 0, event_id="e1")
    clinic.patient_roomed(at=at(5), visit_id="v1", room_id="r1", event_id="e2")
    clinic.checked_out(at=at(9), visit_id="v1", event_id="e3")
    clinic.action_undone(at=at(10), undone_event_id="e3", event_id="e4")
    assert clinic.visits["v1"].status is VisitStatus.ROOMED
    assert clinic.rooms["r1"].state is RoomState.OCCUPIED
    clinic.checked_out(at=at(30), visit_id="v1", event_id="e5")
    assert "v1" not in clinic.visits


def test_undo_is_refused_when_a_later_action_depends_on_it() -> None:
    clinic = Clinic("north")
    arrive(clinic, "v1", 0, event_id="e1")
    clinic.patient_roomed(at=at(5), visit_id="v1", room_id="r1", event_id="e2")
    clinic.provider_in(at=at(8), visit_id="v1", event_id="e3")
    with pytest.raises(NotApplicable, match="undo the later action first"):
        clinic.action_undone(at=at(9), undone_event_id="e2", event_id="e4")


def test_undo_of_an_arrival_whose_visit_has_ended_is_refused() -> None:
    clinic = Clinic("north")
    arrive(clinic, "v1", 0, event_id="e1")
    clinic.checked_out(at=at(20), visit_id="v1", event_id="e2")
    assert clinic.undo_window() == [("e2", "checkout", True), ("e1", "arrival", False)]
    with pytest.raises(NotApplicable, match="visit v1 ended after event e1"):
        clinic.action_undone(at=at(21), undone_event_id="e1", event_id="e3")
    assert clinic.counts == {"checked_out": 1}
    # the checkout can be undone (the visit is open again); the arrival still not
    clinic.action_undone(at=at(22), undone_event_id="e2", event_id="e4")
    assert clinic.undo_window() == [("e1", "arrival", False)]
    with pytest.raises(NotApplicable, match="visit v1 changed after event e1"):
        clinic.action_undone(at=at(23), undone_event_id="e1", event_id="e5")


def test_every_status_maps_to_fhir() -> None:
    assert set(FHIR_STATUS) == set(VisitStatus)
    assert FHIR_STATUS[VisitStatus.NO_SHOW] == (None, "noshow")
    assert FHIR_STATUS[VisitStatus.WITH_PROVIDER][0] == "in-progress"


def test_undo_of_a_delay_brings_back_the_delay_it_replaced() -> None:
    clinic = Clinic("north")
    clinic.delay_announced(at=at(0), provider_id="dr-lee", minutes=25, reason="late start",
                           event_id="e1")
    clinic.delay_announced(at=at(5), provider_id="dr-lee", minutes=0, event_id="e2")
    assert clinic.delay_for("dr-lee") is None
    clinic.action_undone(at=at(6), undone_event_id="e2", event_id="e3")
    delay = clinic.delay_for("dr-lee")
    assert delay is not None and (delay.minutes, delay.reason) == (25, "late start")
    clinic.action_undone(at=at(7), undone_event_id="e1", event_id="e4")
    assert clinic.delay_for("dr-lee") is None


def test_the_undo_window_says_undoable_exactly_when_an_undo_would_be_accepted() -> None:
    clinic = Clinic("north")

    def window_agrees() -> None:
        records = list(reversed(clinic._undo))
        assert clinic.undo_window() == [
            (r.event_id, r.kind, clinic._undo_blocker(r) is None) for r in records]

    clinic.room_ready(at=at(0), room_id="r1", event_id="e1")
    clinic.room_ready(at=at(0), room_id="r2", event_id="e2")
    window_agrees()
    arrive(clinic, "v1", 1, event_id="e3")
    arrive(clinic, "v2", 2, event_id="e4")
    window_agrees()
    clinic.patient_roomed(at=at(5), visit_id="v1", room_id="r1", event_id="e5")
    # r1's readiness (e1) and v1's arrival (e3) are held by the rooming now
    assert [undoable for _, _, undoable in clinic.undo_window()] == [
        True, True, False, True, False]
    window_agrees()
    clinic.action_undone(at=at(6), undone_event_id="e5", event_id="e6")
    # the rooming undone, the room is as e1 left it: its readiness can be undone again
    assert ("e1", "room_ready", True) in clinic.undo_window()
    window_agrees()
    clinic.patient_roomed(at=at(7), visit_id="v2", room_id="r2", event_id="e7")
    clinic.provider_in(at=at(8), visit_id="v2", event_id="e8")
    clinic.checked_out(at=at(20), visit_id="v2", event_id="e9")
    window_agrees()
    assert ("e4", "arrival", False) in clinic.undo_window()
