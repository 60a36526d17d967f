"""A clinic's memory across days: learned from its floor events only, bounded, the next
day's priors, and the same whether replayed, rebuilt from a checkpoint or run live."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from shared import events as ev
from shared.floor.clinic_flow import ClinicFlow
from shared.floor.memory import MAX_KEYS, ClinicProfile, RememberingFlow
from shared.floor.snapshot import dump_flow, dump_flow_json, load_flow
from tools.replay import replay_events, to_fact
from tools.simulate import simulate_day, simulate_days

MONDAY = datetime(2026, 3, 2, 13, 0, tzinfo=UTC)  # 08:00 in New York


@cache
def days(scenario: str, seed: int, count: int) -> list[dict[str, Any]]:
    return simulate_days(scenario, seed, count, clinic_id="c1").events


def apply_all(flow: ClinicFlow, records: list[dict[str, Any]]) -> datetime:
    at = MONDAY
    for number, record in enumerate(records):
        at = datetime.fromisoformat(record["ts"])
        flow.apply(to_fact(record, lambda _c, _v: "A-1"), at, event_id=f"e{number}")
    return at


def test_a_clinic_without_history_is_estimated_as_today() -> None:
    records = simulate_day("mixed", 4, clinic_id="c1").events
    plain, remembering = ClinicFlow("c1"), RememberingFlow("c1")
    for number, record in enumerate(records):
        at = datetime.fromisoformat(record["ts"])
        for flow in (plain, remembering):
            flow.apply(to_fact(record, lambda _c, _v: "A-1"), at, event_id=f"e{number}")
        if number % 25 == 0:
            assert plain.estimates(at) == remembering.estimates(at)
    assert remembering.profile.days == 0
    assert list(replay_events(dict(r) for r in records)) == \
        list(replay_events((dict(r) for r in records), remember=False))


def test_after_a_quiet_night_yesterday_is_folded_in_and_primes_today() -> None:
    flow = RememberingFlow("c1")
    records = days("quiet_specialty", 2, 2)
    first_day = [r for r in records if r["ts"].startswith("2026-03-02")]
    apply_all(flow, first_day)
    learned = flow.estimator
    consultation = learned.visit_minutes["consultation"].value
    assert flow.profile.days == 0  # the day is not over until the next one begins
    flow.apply(ev.RoomReady(room_id="r1"), datetime(2026, 3, 3, 12, 0, tzinfo=UTC))
    assert flow.profile.days == 1
    today = flow.estimator
    assert today is not learned
    assert today.visit_minutes["consultation"].count == 0  # nothing seen today yet...
    assert abs(today.visit_minutes["consultation"].value - consultation) < 3  # ...known
    assert today.active_providers == set()  # who has started is today's news
    assert list(today.appointment_offsets) == flow.profile.appointment_offsets


def test_memory_gives_an_early_patient_the_narrow_range_from_the_first_minute() -> None:
    """The clinic rooms routine patients at their appointment less five minutes: on day 2
    the first early patient is told so at once, narrowly; a clinic without history is
    still guessing."""
    records = days("quiet_specialty", 2, 2)
    day_two = [r for r in records if r["ts"].startswith("2026-03-03")]
    first_early = next(r for r in day_two if r["type"] == "arrival" and r["scheduled_at"]
                       and r["scheduled_at"] > r["ts"])
    cut = records.index(first_early) + 1
    remembering, fresh = RememberingFlow("c1"), RememberingFlow("c1")
    at = apply_all(remembering, records[:cut])
    apply_all(fresh, day_two[:day_two.index(first_early) + 1])
    told = {e.visit_id: e for e in remembering.estimates(at)}[first_early["visit_id"]]
    guessed = {e.visit_id: e for e in fresh.estimates(at)}[first_early["visit_id"]]
    assert told.high - told.low < guessed.high - guessed.low
    assert told.high - told.low <= 5


def test_the_profile_is_bounded_however_many_providers_and_visit_types_come_and_go() -> None:
    flow = RememberingFlow("c1")
    at = MONDAY
    for day in range(40):
        start = at + timedelta(days=1)
        flow.apply(ev.RoomReady(room_id="r1"), start)
        visit = f"v{day}"
        flow.apply(ev.PatientArrived(visit_id=visit, ticket_code="A-1",
                                     provider_id=f"dr-{day}", visit_type=f"type-{day}",
                                     scheduled_at=None), start)
        flow.apply(ev.PatientRoomed(visit_id=visit, room_id="r1"), start)
        flow.apply(ev.ProviderIn(visit_id=visit), start + timedelta(minutes=2))
        at = start + timedelta(minutes=20)
        flow.apply(ev.PatientCheckedOut(visit_id=visit), at)
    profile = flow.profile
    assert profile.days == 39
    assert len(profile.visit_minutes) == MAX_KEYS and "type-38" in profile.visit_minutes
    assert len(profile.provider_pace) == MAX_KEYS and "dr-0" not in profile.provider_pace
    assert len(profile.habits) <= MAX_KEYS and len(profile.rooms_used) <= MAX_KEYS
    assert len(orjson.dumps(profile.to_dict())) < 12_000


def test_replay_rebuild_and_a_live_run_give_the_same_numbers_day_after_day() -> None:
    """Ten days of a clinic, applied as the live service does and again with a checkpoint
    written and read back every 150 facts (a restart; a rebuild from Kafka is a replay
    from the start): the same estimates after every fact and the same memory at the
    end; and every line of the replay is an estimate the live flow made."""
    records = days("mixed", 3, 10)
    continuous, restored = RememberingFlow("c1"), RememberingFlow("c1")
    restarts = 0
    told: set[tuple[datetime, str, float, float, float]] = set()
    for number, record in enumerate(records):
        at = datetime.fromisoformat(record["ts"])
        fact = to_fact(record, lambda _c, _v: "A-1")
        for flow in (continuous, restored):
            flow.apply(fact, at, event_id=f"e{number}")
        estimates = continuous.estimates(at)
        assert estimates == restored.estimates(at), number
        told.update((at, e.visit_id, e.wait_minutes, e.low, e.high) for e in estimates)
        if number % 150 == 149:
            document = dump_flow_json(restored)
            assert document == orjson.dumps(dump_flow(restored))
            reloaded = load_flow(orjson.loads(document))
            assert isinstance(reloaded, RememberingFlow)
            restored = reloaded
            restarts += 1
    assert restarts > 20 and continuous.profile.days == 9
    assert dump_flow(continuous) == dump_flow(restored)
    replayed = [(datetime.fromisoformat(e["ts"]), e["visit_id"], e["wait_minutes"], e["low"],
                 e["high"]) for e in replay_events(dict(r) for r in records)]
    assert len(replayed) > 1000 and set(replayed) <= told  # every line one the flow made
    profile = continuous.profile.to_dict()
    assert ClinicProfile.from_dict(profile).to_dict() == profile


def test_arrivals_and_overtaking_are_counted_by_the_clinics_own_weekday_and_hour() -> None:
    zone = ZoneInfo("America/New_York")
    flow = RememberingFlow("c1", zone=zone)
    flow.apply(ev.RoomReady(room_id="r1"), MONDAY)
    flow.apply(ev.PatientArrived(visit_id="v1", ticket_code="A-1", provider_id=None,
                                 visit_type="follow_up", scheduled_at=None), MONDAY)
    flow.apply(ev.PatientArrived(visit_id="v2", ticket_code="A-2", provider_id=None,
                                 visit_type="urgent", scheduled_at=None, priority="urgent"),
               MONDAY + timedelta(minutes=5))
    flow.apply(ev.PatientRoomed(visit_id="v2", room_id="r1"), MONDAY + timedelta(minutes=6))
    log = flow.day_log
    assert log.arrivals["walk_in"][0 * 24 + 8] == 1  # Monday 08:00 on the clinic's clock
    assert log.arrivals["urgent"][8] == 1
    # the urgent patient is first in the queue's order: rooming them passes nobody
    assert (log.roomings[8], log.overtakes[8]) == (1, 0)
    flow.apply(ev.PatientArrived(visit_id="v3", ticket_code="A-3", provider_id=None,
                                 visit_type="follow_up", scheduled_at=None),
               MONDAY + timedelta(minutes=7))
    flow.apply(ev.RoomReady(room_id="r2"), MONDAY + timedelta(minutes=8))
    flow.apply(ev.PatientRoomed(visit_id="v3", room_id="r2"), MONDAY + timedelta(minutes=8))
    assert (log.roomings[8], log.overtakes[8], log.passed[8]) == (2, 1, 1)  # v3 passed v1
    flow.apply(ev.RoomReady(room_id="r3"), MONDAY + timedelta(days=1))  # Tuesday
    assert flow.profile.arrivals_per_hour("walk_in", 0, 8) == 2
    assert flow.profile.overtaking(8) == (0.5, 1.0)


def test_walk_outs_seen_on_past_days_shorten_the_wait_behind_a_long_queue() -> None:
    """Yesterday a third of those who waited over half an hour left: today a patient far
    back in a long queue is told a shorter wait than if nobody ever left."""
    flow = RememberingFlow("c1")
    flow.apply(ev.RoomReady(room_id="r1"), MONDAY)
    for n in range(9):
        visit = f"y{n}"
        flow.apply(ev.PatientArrived(visit_id=visit, ticket_code="A-1", provider_id="dr-lee",
                                     visit_type="follow_up", scheduled_at=None), MONDAY)
        later = MONDAY + timedelta(minutes=40 + n)
        if n % 3 == 0:
            flow.apply(ev.ArrivalCancelled(visit_id=visit, reason="left_without_being_seen"),
                       later)
        else:  # roomed, seen for a quarter of an hour (rooms apart: the times overlap)
            flow.apply(ev.RoomReady(room_id=f"y{n}"), later)
            flow.apply(ev.PatientRoomed(visit_id=visit, room_id=f"y{n}"), later)
            flow.apply(ev.ProviderIn(visit_id=visit), later + timedelta(minutes=1))
            flow.apply(ev.PatientCheckedOut(visit_id=visit), later + timedelta(minutes=16))
            flow.apply(ev.RoomOutOfService(room_id=f"y{n}"), later + timedelta(minutes=17))
    assert flow.day_log.walkouts[1] == 3 and flow.day_log.waiting_minutes[1] > 0
    today = MONDAY + timedelta(days=1)
    flow.apply(ev.RoomReady(room_id="r1"), today)
    hazard = flow.estimator.walkout_hazard
    assert hazard is not None and hazard[1] > hazard[0] == 0.0  # nobody left before 30 min
    for n in range(8):  # all for one provider, who is busy
        flow.apply(ev.PatientArrived(visit_id=f"w{n}", ticket_code="A-1", provider_id="dr-lee",
                                     visit_type="follow_up", scheduled_at=None),
                   today + timedelta(minutes=n))
    later = today + timedelta(minutes=45)
    leaving = [e.raw_minutes for e in flow.estimates(later)]
    flow.estimator.walkout_hazard = None
    staying = [e.raw_minutes for e in flow.estimates(later)]
    assert leaving[0] == staying[0]  # the first in line has nobody ahead to leave
    assert leaving[-1] < staying[-1] - 5
    assert dump_flow(flow)["estimator"]["walkout_hazard"] is None


def test_bookings_at_night_do_not_hold_the_day_open_and_a_busy_floor_does_not_drift() -> None:
    # the EHR books through the night: the morning still folds yesterday in
    flow = RememberingFlow("c1")
    flow.apply(ev.PatientArrived(visit_id="v1", ticket_code="A-1", visit_type="follow_up"),
               MONDAY)
    flow.apply(ev.ArrivalCancelled(visit_id="v1", reason="left_without_being_seen"),
               MONDAY + timedelta(minutes=5))
    for hour in range(1, 23):
        flow.apply(ev.AppointmentScheduled(
            appointment_id=f"apt-{hour}", patient_ref="p-1", provider_id="dr-a",
            visit_type="follow_up", scheduled_at=MONDAY + timedelta(days=1)),
            MONDAY + timedelta(hours=hour))
    assert flow.profile.days == 0
    morning = MONDAY + timedelta(hours=23)  # an hour earlier than the day before
    flow.apply(ev.RoomReady(room_id="r1"), morning)
    assert (flow.profile.days, flow.day_started_at) == (1, morning)

    # open round the clock, a fact every 25 minutes: a day every 24 hours, same time
    busy = RememberingFlow("c2")
    starts = set()
    for n in range(3 * 24 * 60 // 25):
        at = MONDAY + timedelta(minutes=25 * n)
        busy.apply(ev.PatientArrived(visit_id=f"v{n}", ticket_code="A-1",
                                     visit_type="follow_up"), at)
        busy.apply(ev.ArrivalCancelled(visit_id=f"v{n}", reason="left_without_being_seen"),
                   at)
        starts.add(busy.day_started_at)
    assert sorted(s for s in starts if s is not None) == \
        [MONDAY + timedelta(days=d) for d in range(3)]
    assert busy.profile.days == 2
