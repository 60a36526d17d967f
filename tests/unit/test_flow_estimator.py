"""Wait estimates react to what happens on the floor and learn from the day."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from shared import events as ev
from shared.floor.clinic_flow import ClinicFlow
from shared.floor.estimator import AT_APPOINTMENT, DELAYED, situation

T0 = datetime(2026, 3, 2, 13, 0, tzinfo=UTC)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def arrival(visit_id: str, provider: str | None = "dr-lee", *, priority: str = "routine",
            visit_type: str = "follow_up", scheduled: float | None = None) -> ev.PatientArrived:
    return ev.PatientArrived(
        visit_id=visit_id, ticket_code="A-1", provider_id=provider, visit_type=visit_type,
        scheduled_at=None if scheduled is None else at(scheduled),
        priority=priority,  # type: ignore[arg-type]
    )


def busy_clinic() -> ClinicFlow:
    """Two rooms both taken, three patients waiting for Dr. Lee."""
    flow = ClinicFlow("north")
    flow.apply(ev.RoomReady(room_id="r1"), at(0))
    flow.apply(ev.RoomReady(room_id="r2"), at(0))
    for n in range(1, 6):
        flow.apply(arrival(f"v{n}"), at(n))
    flow.apply(ev.PatientRoomed(visit_id="v1", room_id="r1"), at(6))
    flow.apply(ev.PatientRoomed(visit_id="v2", room_id="r2"), at(6))
    flow.apply(ev.ProviderIn(visit_id="v1"), at(8))
    return flow


def waits(flow: ClinicFlow, minute: float) -> dict[str, float]:
    return {e.visit_id: e.wait_minutes for e in flow.estimates(at(minute))}


def test_the_first_patient_of_the_day_gets_an_estimate_with_a_range() -> None:
    flow = ClinicFlow("north")
    flow.apply(arrival("v1", visit_type="never_seen_before_type"), at(0))
    (estimate,) = flow.estimates(at(0))
    assert estimate.position == 1
    assert 0 <= estimate.low <= estimate.wait_minutes <= estimate.high
    assert estimate.high > estimate.low


def test_later_patients_wait_longer_than_earlier_ones() -> None:
    flow = busy_clinic()
    w = waits(flow, 9)
    assert w["v3"] < w["v4"] < w["v5"]
    assert w["v3"] > 0  # both rooms are taken


def test_a_room_freeing_up_shortens_the_wait() -> None:
    flow = busy_clinic()
    before = waits(flow, 20)
    flow.apply(ev.PatientCheckedOut(visit_id="v1"), at(20))
    flow.apply(ev.RoomReady(room_id="r1"), at(20))
    after = waits(flow, 20)
    assert after["v3"] < before["v3"]


def test_a_late_start_lengthens_only_that_providers_patients_waits() -> None:
    flow = busy_clinic()
    for room in ("r3", "r4", "r5", "r6", "r7"):  # enough rooms: nobody waits for a room
        flow.apply(ev.RoomReady(room_id=room), at(9))
    flow.apply(arrival("k1", "dr-kim"), at(9))
    flow.apply(arrival("k2", "dr-kim"), at(9))
    flow.apply(arrival("p1", "dr-park"), at(9))
    flow.apply(arrival("p2", "dr-park"), at(9))
    flow.apply(arrival("p3", "dr-park"), at(9))
    before = waits(flow, 10)
    flow.apply(ev.DelayAnnounced(provider_id="dr-park", minutes=45, reason="late start"), at(10))
    after = waits(flow, 10)
    assert after["p3"] > before["p3"] + 30  # not in yet: one roomed ahead, the rest wait
    assert after["k2"] == before["k2"]
    flow.apply(ev.DelayCleared(provider_id="dr-park"), at(10))
    assert waits(flow, 10)["p3"] == before["p3"]


def look_ahead(flow: ClinicFlow, minute: float) -> dict[str, float]:
    return {e.visit_id: e.raw_minutes for e in flow.estimates(at(minute))}


def test_running_behind_is_already_on_the_floor_and_is_not_counted_twice() -> None:
    flow = busy_clinic()  # Dr. Lee is seeing v1 now
    before = look_ahead(flow, 10)
    flow.apply(ev.DelayAnnounced(provider_id="dr-lee", minutes=25, reason="running behind"),
               at(10))
    # the floor played forward is the same; only the range learned for patients of a
    # provider running late (none roomed yet: the day's) applies
    assert look_ahead(flow, 10) == before


def test_a_clinic_wide_stop_holds_everyone_until_it_ends() -> None:
    flow = busy_clinic()
    flow.apply(ev.RoomReady(room_id="r3"), at(9))
    before = waits(flow, 10)
    flow.apply(ev.DelayAnnounced(provider_id=None, minutes=30, reason="fire alarm"), at(10))
    after = waits(flow, 10)
    assert all(after[v] >= 30 for v in after)
    assert after["v3"] > before["v3"]


def test_an_urgent_arrival_pushes_routine_patients_back() -> None:
    flow = busy_clinic()
    before = waits(flow, 10)
    flow.apply(arrival("u1", priority="urgent", visit_type="urgent"), at(10))
    after = waits(flow, 10)
    assert after["u1"] <= after["v3"]
    assert after["v3"] > before["v3"]


def test_someone_leaving_moves_everyone_behind_them_up() -> None:
    flow = busy_clinic()
    before = waits(flow, 10)
    flow.apply(ev.ArrivalCancelled(visit_id="v3", reason="left_without_being_seen"), at(10))
    after = waits(flow, 10)
    assert "v3" not in after
    assert after["v4"] < before["v4"]


def test_a_slow_provider_is_learned_from_the_day() -> None:
    fast = ClinicFlow("a")
    slow = ClinicFlow("b")
    for flow, minutes in ((fast, 10), (slow, 40)):
        clock = 0.0
        for n in range(6):
            visit = f"p{n}"
            flow.apply(arrival(visit, visit_type="follow_up"), at(clock))
            flow.apply(ev.PatientRoomed(visit_id=visit, room_id="r1"), at(clock))
            flow.apply(ev.ProviderIn(visit_id=visit), at(clock + 1))
            flow.apply(ev.PatientCheckedOut(visit_id=visit), at(clock + 1 + minutes))
            flow.apply(ev.RoomReady(room_id="r1"), at(clock + 2 + minutes))
            clock += 3 + minutes
        flow.apply(arrival("x1"), at(clock))
        flow.apply(ev.PatientRoomed(visit_id="x1", room_id="r1"), at(clock))
        flow.apply(ev.ProviderIn(visit_id="x1"), at(clock))
        flow.apply(arrival("x2"), at(clock))
        flow.last_event_at = at(clock)
    fast_wait = fast.estimates(fast.last_event_at)[0].wait_minutes  # type: ignore[arg-type]
    slow_wait = slow.estimates(slow.last_event_at)[0].wait_minutes  # type: ignore[arg-type]
    assert slow_wait > 2 * fast_wait


def test_estimates_kept_per_visit_are_dropped_once_the_visit_is_roomed_or_gone() -> None:
    flow = busy_clinic()
    flow.estimates(at(9))
    assert set(flow.estimator._histories) == {"v3", "v4", "v5"}
    flow.apply(ev.PatientCheckedOut(visit_id="v1"), at(20))
    flow.apply(ev.PatientRoomed(visit_id="v3", room_id="r1"), at(21))
    flow.apply(ev.ArrivalCancelled(visit_id="v4"), at(22))
    assert set(flow.estimator._histories) == {"v5"}


def test_errors_learned_at_rooming_widen_or_shift_later_estimates() -> None:
    flow = busy_clinic()
    first = {e.visit_id: e for e in flow.estimates(at(9))}
    # everyone waits far longer than the floor suggested: the clinic's hidden slowness
    flow.apply(arrival("v6"), at(30))
    flow.apply(arrival("v7"), at(40))
    flow.apply(ev.PatientCheckedOut(visit_id="v1"), at(90))
    for minute, visit, room in ((90, "v3", "r1"), (95, "v4", "r8"), (100, "v5", "r9")):
        flow.apply(ev.PatientRoomed(visit_id=visit, room_id=room), at(minute))
    _q10, q50, q90 = flow.estimator.quantiles()
    assert q50 > 0.1 and q90 > 1.0  # relative errors well beyond the prior's
    later = {e.visit_id: e for e in flow.estimates(at(9))}
    assert later["v6"].high > first["v5"].high


def test_a_clinic_whose_every_room_is_out_of_service_still_gets_estimates() -> None:
    # found by the role matrix: a room made ready then taken out of service, then a
    # walk-in, made the estimator take min() of no rooms and flow's consumer retried
    # that batch for ever, every clinic's board frozen behind it
    flow = ClinicFlow("north")
    flow.apply(ev.RoomReady(room_id="r1"), at(0))
    flow.apply(ev.RoomOutOfService(room_id="r1", reason="leak"), at(1))
    flow.apply(arrival("v1"), at(2))
    (estimate,) = flow.estimates(at(3))
    assert estimate.visit_id == "v1"
    assert 0 <= estimate.low <= estimate.wait_minutes <= estimate.high


def test_an_early_patient_on_a_floor_that_keeps_up_is_estimated_from_their_appointment(
) -> None:
    """The clinic rooms routine patients 5 minutes before their appointment; once the day
    shows it, a patient who comes 30 minutes early is told about 25 minutes, narrowly."""
    flow = ClinicFlow("north")
    for room in ("r1", "r2", "r3"):
        flow.apply(ev.RoomReady(room_id=room), at(0))
    for n in range(12):  # each comes 20 minutes early and is roomed 5 minutes before
        visit, slot = f"e{n}", 30.0 + 20 * n
        flow.apply(arrival(visit, scheduled=slot), at(slot - 20))
        flow.apply(ev.PatientRoomed(visit_id=visit, room_id="r1"), at(slot - 5))
        flow.apply(ev.ProviderIn(visit_id=visit), at(slot - 4))
        flow.apply(ev.PatientCheckedOut(visit_id=visit), at(slot + 8))
        flow.apply(ev.RoomReady(room_id="r1"), at(slot + 9))
    now = 30.0 + 20 * 12
    flow.apply(arrival("x", scheduled=now + 30), at(now))
    (estimate,) = flow.estimates(at(now))
    assert 22 <= estimate.wait_minutes <= 28
    assert estimate.low <= 25 <= estimate.high
    assert estimate.high - estimate.low <= 8  # the day has shown how exact it is


def test_a_first_available_walk_in_goes_to_a_provider_between_patients() -> None:
    flow = busy_clinic()  # Dr. Lee has two patients in rooms and three waiting
    flow.apply(ev.RoomReady(room_id="r3"), at(9))
    flow.apply(ev.RoomReady(room_id="r4"), at(9))
    flow.apply(arrival("k1", "dr-kim"), at(9))
    flow.apply(ev.PatientRoomed(visit_id="k1", room_id="r3"), at(10))
    flow.apply(ev.ProviderIn(visit_id="k1"), at(11))
    flow.apply(ev.PatientCheckedOut(visit_id="k1"), at(25))
    flow.apply(ev.RoomReady(room_id="r3"), at(26))
    # Dr. Kim has nobody on the floor now but was seeing patients a quarter hour ago
    flow.apply(arrival("w1", None), at(27))
    assert waits(flow, 27)["w1"] < 5


def test_ranges_are_learned_per_situation() -> None:
    """Errors made for patients far back in the queue set their range, those of the
    first in line theirs; each shrunk a little towards the day's."""
    estimator = busy_clinic().estimator
    for _ in range(60):
        estimator.learn_error(1, 0.0)  # first in line: the look-ahead was right
        estimator.learn_error(3, 1.0)  # far back: the wait ran twice the look-ahead
    first, far = estimator.situation_quantiles(1), estimator.situation_quantiles(3)
    day = estimator.quantiles()
    assert far[1] > first[1] + 0.5
    assert first[1] < day[1] < far[1]
    assert estimator.situation_quantiles(4 + 12) == day  # never seen: the day's


def test_each_estimate_is_made_in_a_situation_by_who_is_ahead_and_how_long() -> None:
    flow = busy_clinic()  # three waiting for Dr. Lee, who is seeing v1
    estimator, waiting = flow.estimator, flow.clinic.waiting()
    raw, situations = estimator._look_ahead(flow.clinic, waiting, at(10))
    assert situations == [situation(n, False, False, minutes) for n, minutes in enumerate(raw)]
    assert situations[0] < situations[1] <= situations[2]  # further back, longer
    flow.apply(ev.DelayAnnounced(provider_id=None, minutes=20, reason="fire alarm"), at(10))
    _raw, stopped = estimator._look_ahead(flow.clinic, waiting, at(10))
    assert all(code >= DELAYED for code in stopped)
    early = ClinicFlow("south")
    early.apply(ev.RoomReady(room_id="r1"), at(0))
    early.apply(arrival("e1", scheduled=40), at(0))  # 40 minutes early to an empty floor
    assert early.estimator._look_ahead(early.clinic, early.clinic.waiting(), at(0))[1] == \
        [AT_APPOINTMENT]
