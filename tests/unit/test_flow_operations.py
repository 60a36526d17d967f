"""The manager's view of north clinic's day: stage durations, queues over the day,
walk-outs, each provider's pace against the schedule, and where the day is stuck, in words.
Pure: the floor is driven through ``ClinicFlow.apply`` with explicit times."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest

from services.flow.processor import build_board
from shared import events as ev
from shared.floor.clinic_flow import ClinicFlow
from shared.floor.day_stats import DAY_SAMPLES, MAX_KEYS, DayStats, Durations
from shared.floor.snapshot import dump_flow, load_flow

OPEN = datetime(2026, 3, 2, 13, 0, tzinfo=UTC)  # 8:00 in the clinic


class Day:
    """North clinic's floor, with a clock that only moves when the story says so."""

    def __init__(self, rooms: int = 4) -> None:
        self.flow = ClinicFlow("north")
        self.now = OPEN
        self.events = 0
        for number in range(1, rooms + 1):
            self.fact(ev.RoomReady(room_id=f"room-{number}"))

    def at(self, minute: float) -> Day:
        self.now = OPEN + timedelta(minutes=minute)
        return self

    def fact(self, payload: ev.Payload) -> None:
        self.events += 1
        self.flow.apply(payload, self.now, f"e{self.events}")

    def arrive(self, visit: str, provider: str | None = "dr-lee", *,
               appointment: float | None = None) -> None:
        scheduled = None if appointment is None else OPEN + timedelta(minutes=appointment)
        self.fact(ev.PatientArrived(visit_id=visit, ticket_code=f"A-{self.events % 10_000}",
                                    provider_id=provider, visit_type="follow_up",
                                    scheduled_at=scheduled))

    def room(self, visit: str, room: str) -> None:
        self.fact(ev.PatientRoomed(visit_id=visit, room_id=room))

    def provider_in(self, visit: str) -> None:
        self.fact(ev.ProviderIn(visit_id=visit))

    def check_out(self, visit: str) -> None:
        self.fact(ev.PatientCheckedOut(visit_id=visit))

    def leave(self, visit: str) -> None:
        self.fact(ev.ArrivalCancelled(visit_id=visit, reason="left_without_being_seen"))

    def ready(self, room: str) -> None:
        self.fact(ev.RoomReady(room_id=room))

    def report(self) -> dict[str, Any]:
        return self.flow.day.report(self.flow.clinic, self.now)


def full_visit(day: Day, visit: str, room: str, *, arrive: float, roomed: float,
               seen: float, done: float, provider: str = "dr-lee",
               appointment: float | None = None) -> None:
    day.at(arrive).arrive(visit, provider, appointment=appointment)
    day.at(roomed).room(visit, room)
    day.at(seen).provider_in(visit)
    day.at(done).check_out(visit)


# ---------------------------------------------------------------- stage durations


def test_stage_durations_are_kept_per_provider_and_room_turnover_per_room() -> None:
    day = Day()
    full_visit(day, "v1", "room-1", arrive=0, roomed=10, seen=15, done=35)
    full_visit(day, "v2", "room-2", arrive=5, roomed=35, seen=45, done=60)
    full_visit(day, "v3", "room-3", arrive=10, roomed=14, seen=16, done=26, provider="dr-kim")
    day.at(45).ready("room-1")  # cleaned 10 minutes after v1 left

    stages = day.report()["stages"]

    rooming = stages["arrival_to_roomed"]
    assert rooming["count"] == 3
    assert rooming["mean_minutes"] == pytest.approx((10 + 30 + 4) / 3, abs=0.1)
    assert rooming["max_minutes"] == 30
    assert rooming["by"]["dr-lee"]["count"] == 2
    assert rooming["by"]["dr-lee"]["mean_minutes"] == 20
    assert rooming["by"]["dr-kim"]["mean_minutes"] == 4
    assert stages["roomed_to_provider"]["by"]["dr-lee"]["mean_minutes"] == 7.5
    assert stages["provider_to_checkout"]["by"]["dr-kim"]["max_minutes"] == 10
    assert stages["room_turnover"]["by"] == {"room-1": pytest.approx(
        {"count": 1, "mean_minutes": 10, "p50_minutes": 10, "p90_minutes": 10,
         "max_minutes": 10})}


def test_percentiles_are_read_from_the_buckets_and_never_exceed_the_longest_wait() -> None:
    durations = Durations()
    for minutes in (3, 4, 6, 8, 9, 12, 14, 18, 25, 41):
        durations.add(minutes)
    assert durations.quantile(0.5) == pytest.approx(10.0)
    assert 30 <= (durations.quantile(0.9) or 0) <= 41
    assert durations.quantile(1.0) == 41
    single = Durations()
    single.add(7)
    assert single.quantile(0.9) == 7


# ----------------------------------------------------------------- queue lengths


def test_queue_lengths_are_sampled_every_five_minutes_and_quiet_periods_hold_the_state() -> None:
    day = Day()
    day.at(1).arrive("v1")
    day.at(2).arrive("v2")
    day.at(3).arrive("v3")
    day.at(4).room("v1", "room-1")  # peak of 3 in the first period, 2 at its end
    day.at(21).room("v2", "room-2")  # 8:05-8:20 were quiet: 2 waiting all along
    day.at(30)

    queue = day.report()["queue"]

    assert queue["every_minutes"] == 5
    assert queue["start"] == "2026-03-02T13:00:00+00:00"
    assert queue["waiting"] == [3, 2, 2, 2, 2, 1, 1]  # 8:00 ... 8:30, extended to now
    assert queue["roomed_waiting_provider"] == [1, 1, 1, 1, 2, 2, 2]
    assert queue["now"] == {"waiting": 1, "roomed_waiting_provider": 2}
    assert queue["peak"]["waiting"] == 3


def test_a_fact_a_microsecond_before_a_period_ends_is_counted_in_that_period() -> None:
    day = Day()
    just_before = timedelta(microseconds=-1)
    clinic_zone = timezone(timedelta(hours=-5))
    day.at(1).arrive("v1")
    day.now = OPEN + timedelta(minutes=5) + just_before
    day.arrive("v2")  # 8:04:59.999999: still the first period
    day.at(5).arrive("v3")
    day.now = (OPEN + timedelta(minutes=10) + just_before).astimezone(clinic_zone)
    day.arrive("v4")  # 8:09:59.999999 told in the clinic's time zone: the second period
    day.now = (OPEN + timedelta(minutes=10)).astimezone(clinic_zone)
    day.arrive("v5")

    queue = day.report()["queue"]

    assert queue["start"] == "2026-03-02T13:00:00+00:00"
    assert queue["waiting"] == [2, 4, 5]


def test_the_queue_history_never_holds_more_than_one_day() -> None:
    day = Day()
    for hour in range(23):
        day.at(hour * 60).arrive(f"v{hour}")
    day.at(23 * 60 + 55)
    queue = day.report()["queue"]
    assert len(queue["waiting"]) == DAY_SAMPLES
    assert queue["waiting"][-1] == 23


# ---------------------------------------------------------------------- outcomes


def test_patients_who_leave_without_being_seen_are_counted_apart_from_cancellations() -> None:
    day = Day()
    day.at(0).arrive("v1")
    day.at(1).arrive("v2")
    day.at(2).arrive("v3")
    day.at(40).leave("v1")
    day.at(41).fact(ev.ArrivalCancelled(visit_id="v2", reason="cancelled"))
    full_visit(day, "v4", "room-1", arrive=3, roomed=42, seen=45, done=60)

    report = day.report()

    assert report["left_without_being_seen"] == 1
    assert report["outcomes"] == {"checked_out": 1, "cancelled": 1,
                                  "left_without_being_seen": 1}


# ------------------------------------------------------------------ provider pace


def test_a_provider_whose_on_time_patients_are_roomed_late_is_running_behind() -> None:
    day = Day()
    # dr-lee's 8:00, 8:20 and 8:40 patients came on time and were roomed 15-25 min late
    full_visit(day, "l1", "room-1", arrive=-5, roomed=15, seen=20, done=40, appointment=0)
    full_visit(day, "l2", "room-2", arrive=15, roomed=40, seen=45, done=60, appointment=20)
    full_visit(day, "l3", "room-1", arrive=35, roomed=65, seen=67, done=75, appointment=40)
    # dr-kim rooms hers at their time
    full_visit(day, "k1", "room-3", arrive=-3, roomed=1, seen=5, done=20, provider="dr-kim",
               appointment=0)
    # a patient 30 min late for dr-kim is not dr-kim running behind
    full_visit(day, "k2", "room-3", arrive=50, roomed=52, seen=55, done=70, provider="dr-kim",
               appointment=20)

    providers = {p["provider_id"]: p for p in day.report()["providers"]}

    lee, kim = providers["dr-lee"], providers["dr-kim"]
    assert lee["roomed_on_time_patients"] == 3
    assert lee["late_minutes_mean"] == pytest.approx(20.0)
    assert lee["late_minutes_max"] == 25
    assert lee["seen"] == 3
    assert lee["text"] == "running 20 min behind schedule"
    assert kim["roomed_on_time_patients"] == 1
    assert kim["seen"] == 2
    assert kim["text"] == "on schedule"


def test_a_patient_waiting_past_their_appointment_shows_at_once_in_the_pace() -> None:
    day = Day()
    day.at(-2).arrive("v1", "dr-patel", appointment=0)
    day.at(27)
    patel = next(p for p in day.report()["providers"] if p["provider_id"] == "dr-patel")
    assert patel["behind_minutes"] == 27
    assert patel["text"] == "running 27 min behind schedule"
    assert patel["waiting"] == 1


# -------------------------------------------------------------------- bottlenecks


def test_when_every_room_is_full_the_bottleneck_names_the_provider_and_the_rooms() -> None:
    day = Day(rooms=4)
    for n in range(1, 4):  # three of dr-lee's patients roomed, waiting for her
        day.at(n).arrive(f"r{n}", appointment=n)
        day.at(n + 1).room(f"r{n}", f"room-{n}")
    day.at(4).arrive("k1", "dr-kim")
    day.at(5).room("k1", "room-4")
    day.at(6).provider_in("k1")
    for n in range(6):
        day.at(10 + n).arrive(f"w{n}", appointment=10 + n)
    day.at(58)

    report = day.report()

    bottleneck = report["bottleneck"]
    assert bottleneck["text"] == ("dr-lee: 6 waiting, longest 48 min; all 4 rooms occupied, "
                                  "3 by patients waiting for dr-lee")
    assert bottleneck["stage"] == "arrival_to_roomed"
    assert bottleneck["provider_id"] == "dr-lee"
    assert bottleneck["room_ids"] == ["room-1", "room-2", "room-3", "room-4"]
    assert report["summary"] == bottleneck["text"]
    # and the rooms held by patients waiting for her are named next
    second = report["bottlenecks"][1]
    assert second["stage"] == "roomed_to_provider"
    assert second["text"].startswith("dr-lee: 3 roomed waiting for the provider, longest 56 min")


def test_rooms_left_dirty_while_patients_wait_are_named_with_how_long() -> None:
    day = Day(rooms=2)
    full_visit(day, "v1", "room-2", arrive=0, roomed=1, seen=2, done=20)  # room-2 dirty at 20
    day.at(3).arrive("v2")
    day.at(4).room("v2", "room-1")
    day.at(5).provider_in("v2")
    day.at(21).arrive("v3")
    day.at(22).arrive("v4")
    day.at(23).arrive("v5")
    day.at(45)

    report = day.report()

    assert report["bottleneck"]["stage"] == "room_turnover"
    assert report["bottleneck"]["text"] == ("Rooms waiting for cleaning: room-2 for 25 min; "
                                            "3 patients waiting")
    assert report["bottleneck"]["room_ids"] == ["room-2"]


def test_patients_waiting_while_a_room_stands_ready_point_at_rooming() -> None:
    day = Day(rooms=2)
    day.at(0).arrive("v1", "dr-kim", appointment=0)
    day.at(1).arrive("v2", "dr-kim", appointment=5)
    day.at(25)
    text = day.report()["bottleneck"]["text"]
    assert text.startswith("dr-kim: 2 waiting, longest 25 min; room-1, room-2 ready and empty")
    assert text.endswith("rooming is the hold-up")


def test_a_room_ready_a_moment_ago_is_being_roomed_not_the_hold_up() -> None:
    day = Day(rooms=1)
    day.at(0).arrive("v1", "dr-kim", appointment=0)
    day.at(1).room("v1", "room-1")
    day.at(2).provider_in("v1")
    day.at(3).arrive("v2", "dr-kim", appointment=5)
    day.at(4).arrive("v3", "dr-kim", appointment=10)
    day.at(30).check_out("v1")
    day.ready("room-1")  # cleaned at once
    day.at(31)
    text = day.report()["bottleneck"]["text"]
    assert text == "dr-kim: 2 waiting, longest 28 min; room-1 just ready: rooming under way"
    day.at(34)  # four minutes on, nobody roomed: now it is the hold-up
    assert day.report()["bottleneck"]["text"] == (
        "dr-kim: 2 waiting, longest 31 min; room-1 ready and empty for 4 min: rooming is "
        "the hold-up")


def test_a_quiet_floor_has_no_bottleneck() -> None:
    day = Day()
    day.at(0).arrive("v1", appointment=10)
    day.at(4)
    report = day.report()
    assert report["bottleneck"] is None and report["bottlenecks"] == []
    assert report["summary"] == "No bottleneck: 1 waiting, longest 4 min; 4 rooms ready."
    assert Day().report()["summary"] == "No bottleneck: nobody is waiting."


# ---------------------------------------------------------- bounds and checkpoints


def busy_days(visits: int, providers: int = 6) -> Day:
    day = Day(rooms=8)
    minute = 0.0
    for n in range(visits):
        provider = f"dr-{n % providers}"
        room = f"room-{n % 8 + 1}"
        full_visit(day, f"v{n}", room, arrive=minute, roomed=minute + 7, seen=minute + 9,
                   done=minute + 20, provider=provider, appointment=minute + 2)
        day.at(minute + 24).ready(room)
        minute += 3
    return day


def test_the_day_stays_the_same_size_however_many_visits_it_holds() -> None:
    small = len(orjson.dumps(busy_days(300).flow.day.to_dict()))
    large = len(orjson.dumps(busy_days(3000).flow.day.to_dict()))
    assert large < 20_000
    assert large < small * 1.5


def test_providers_beyond_the_cap_are_folded_together() -> None:
    day = busy_days(400, providers=200)
    by_provider = day.report()["stages"]["arrival_to_roomed"]["by"]
    assert len(by_provider) == MAX_KEYS + 1
    # dr-0 ... dr-63 keep their own figures (two visits each), the rest are "other"
    assert by_provider["other"]["count"] == 400 - 2 * MAX_KEYS


def test_the_day_survives_a_checkpoint_round_trip_exactly() -> None:
    day = busy_days(40)
    day.at(200).arrive("late-one", appointment=150)
    restored = load_flow(orjson.loads(orjson.dumps(dump_flow(day.flow))))
    assert restored.day.report(restored.clinic, day.now) == day.report()
    # and it carries on counting where it was
    restored.apply(ev.ArrivalCancelled(visit_id="late-one", reason="left_without_being_seen"),
                   day.now, "x1")
    assert restored.day.report(restored.clinic, day.now)["left_without_being_seen"] == 1


def test_a_checkpoint_from_before_the_day_statistics_starts_the_day_afresh() -> None:
    day = Day()
    day.at(0).arrive("v1")
    day.at(1).leave("v1")
    stats = DayStats.from_dict({"stage_totals": {"arrival_to_roomed": [3, 30.0]}})
    day.flow.day = stats
    day.at(2).arrive("v2")
    report = day.report()
    assert report["left_without_being_seen"] == 0  # yesterday's lifetime counts not re-counted
    assert report["queue"]["now"]["waiting"] == 1


def test_a_new_day_starts_after_the_clinic_was_closed_overnight() -> None:
    day = Day()
    full_visit(day, "v1", "room-1", arrive=0, roomed=30, seen=35, done=50)
    day.at(60).arrive("v2")
    day.at(61).leave("v2")
    next_morning = 24 * 60
    day.at(next_morning).arrive("v3")
    report = day.report()
    assert report["day_started_at"] == (OPEN + timedelta(days=1)).isoformat()
    assert report["stages"] == {}
    assert report["left_without_being_seen"] == 0
    assert report["queue"]["waiting"] == [1]


def test_bookings_through_the_night_do_not_keep_yesterday_going() -> None:
    # an EHR books (and reports no-shows) round the clock: the morning is a new day,
    # though the clinic opens an hour earlier than the day before
    day = Day()
    full_visit(day, "v1", "room-1", arrive=0, roomed=30, seen=35, done=50)
    for hour in range(2, 23):
        day.at(hour * 60).fact(ev.AppointmentScheduled(
            appointment_id=f"apt-{hour}", patient_ref="p-1", provider_id="dr-lee",
            visit_type="follow_up", scheduled_at=OPEN + timedelta(days=1, hours=hour % 8)))
    day.at(22 * 60 + 30).fact(ev.PatientNoShow(appointment_id="apt-9", provider_id="dr-lee",
                                               scheduled_at=OPEN + timedelta(hours=22)))
    day.at(23 * 60).arrive("v2")
    report = day.report()
    assert report["day_started_at"] == (OPEN + timedelta(hours=23)).isoformat()
    assert report["stages"] == {}


def test_a_floor_never_quiet_cuts_its_days_at_the_same_time_of_day() -> None:
    # open round the clock, something every 25 minutes: a day every 24 hours from the
    # first one's start, not from the first fact past that line (it drifted 25 min a day)
    day = Day()
    starts = set()
    for n in range(5 * 24 * 60 // 25):
        day.at(n * 25).arrive(f"v{n}")
        day.leave(f"v{n}")
        starts.add(day.report()["day_started_at"])
    assert sorted(starts) == [(OPEN + timedelta(days=d)).isoformat() for d in range(5)]


def test_the_board_carries_the_report_for_managers_as_plain_json() -> None:
    day = busy_days(20)
    flow = day.flow
    board = build_board(flow, flow.estimates(day.now), day.now)
    assert orjson.loads(orjson.dumps(board))["operations"]["stages"]["arrival_to_roomed"][
        "count"] == 20


def test_full_rooms_held_by_patients_of_several_providers_are_all_counted() -> None:
    # four rooms held by roomed patients, one for each of four providers, read "1 by
    # patients waiting for dr-d": the highest id of a tie, and one room of the four
    day = Day(rooms=4)
    for n, provider in enumerate(("dr-a", "dr-b", "dr-c", "dr-d"), start=1):
        day.at(n).arrive(f"r{n}", provider)
        day.at(n + 1).room(f"r{n}", f"room-{n}")
    for n in range(6):
        day.at(10 + n).arrive(f"w{n}", "dr-a")
    day.at(58)
    assert day.report()["bottleneck"]["text"].endswith(
        "all 4 rooms occupied, 4 by patients waiting for a provider "
        "(1 each for dr-a, dr-b, dr-c and dr-d)")
    day.at(59).arrive("r5", "dr-b")  # and when one of them has more, that one is named
    day.at(60).provider_in("r1")
    day.at(61).check_out("r1")
    day.at(61.5).ready("room-1")
    day.at(62).room("r5", "room-1")
    assert day.report()["bottleneck"]["text"].endswith(
        "4 by patients waiting for a provider (2 for dr-b)")
