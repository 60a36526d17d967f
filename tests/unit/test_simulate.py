"""The simulated clinic day: a plausible floor, written exactly in the replay format."""

from __future__ import annotations

import argparse
import io
from collections import Counter
from datetime import date, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import orjson
import pytest

from tools import replay
from tools.simulate import (
    SCENARIO_NAMES,
    SCENARIOS,
    SimulatedDay,
    add_cli,
    simulate_clinics,
    simulate_day,
    simulate_days,
    write_log,
)

SEEDS = (1, 2, 3, 4)
FIELDS = {
    "arrival": {"visit_id", "provider_id", "visit_type", "scheduled_at", "priority"},
    "room_ready": {"room_id"},
    "roomed": {"visit_id", "room_id"},
    "provider_in": {"visit_id"},
    "delay": {"provider_id", "minutes", "reason"},
    "checkout": {"visit_id"},
    "cancel": {"visit_id", "reason"},
}


@cache
def day(scenario: str, seed: int) -> SimulatedDay:
    return simulate_day(scenario, seed)


def every_day() -> list[tuple[str, int]]:
    return [(name, seed) for name in SCENARIO_NAMES for seed in SEEDS]


def at(event: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(event["ts"])


def minutes(later: datetime, earlier: datetime) -> float:
    return (later - earlier).total_seconds() / 60


def is_iso_with_offset(value: Any) -> bool:
    return isinstance(value, str) and datetime.fromisoformat(value).tzinfo is not None


# ----------------------------------------------------------------- the format


def test_the_same_seed_gives_the_same_day_and_another_seed_another() -> None:
    first = simulate_day("mixed", 7)
    again = simulate_day("mixed", 7)
    other = simulate_day("mixed", 8)
    assert first.events == again.events
    assert first.truth == again.truth
    assert first.events != other.events


@pytest.mark.parametrize(("scenario", "seed"), every_day())
def test_every_line_is_valid_replay_format(scenario: str, seed: int) -> None:
    for event in day(scenario, seed).events:
        kind = event["type"]
        assert kind in FIELDS
        assert is_iso_with_offset(event["ts"])
        assert isinstance(event["clinic_id"], str) and event["clinic_id"]
        assert FIELDS[kind] <= event.keys(), event
        if kind == "arrival":
            assert event["priority"] in ("routine", "urgent")
            assert event["scheduled_at"] is None or is_iso_with_offset(event["scheduled_at"])
            assert event["provider_id"] is None or isinstance(event["provider_id"], str)
            assert isinstance(event["visit_type"], str) and event["visit_type"]
        if kind == "delay":
            assert isinstance(event["minutes"], int) and event["minutes"] >= 0
            assert isinstance(event["reason"], str)
        if kind == "cancel":
            assert event["reason"] in ("left_without_being_seen", "cancelled")


@pytest.mark.parametrize(("scenario", "seed"), every_day())
def test_events_are_in_time_order(scenario: str, seed: int) -> None:
    times = [at(e) for e in day(scenario, seed).events]
    assert times == sorted(times)


def test_the_replay_accepts_every_simulated_line() -> None:
    problems: list[tuple[str, int, str]] = []
    for scenario in SCENARIO_NAMES:
        def report(number: int, reason: str, scenario: str = scenario) -> None:
            problems.append((scenario, number, reason))

        estimates = list(replay.replay_events([dict(e) for e in day(scenario, 1).events],
                                              on_error=report))
        assert estimates, scenario
    assert problems == []


def test_timestamps_carry_the_clinics_utc_offset() -> None:
    simulated = simulate_day("quiet_specialty", 1, date=date(2026, 7, 14))
    assert all(e["ts"].startswith("2026-07-14T") and e["ts"].endswith("-05:00")
               for e in simulated.events)


# ------------------------------------------------------------- the floor's rules


@pytest.mark.parametrize(("scenario", "seed"), every_day())
def test_a_visit_is_roomed_at_most_once_and_only_after_arriving(scenario: str, seed: int) -> None:
    arrived: set[str] = set()
    roomed: set[str] = set()
    for event in day(scenario, seed).events:
        if event["type"] == "arrival":
            assert event["visit_id"] not in arrived
            arrived.add(event["visit_id"])
        elif event["type"] == "roomed":
            assert event["visit_id"] in arrived
            assert event["visit_id"] not in roomed
            roomed.add(event["visit_id"])


@pytest.mark.parametrize(("scenario", "seed"), every_day())
def test_each_visit_goes_roomed_then_provider_then_checkout(scenario: str, seed: int) -> None:
    stage: dict[str, str] = {}
    follows = {"roomed": "arrival", "provider_in": "roomed", "checkout": "provider_in",
               "cancel": "arrival"}  # a patient leaves or cancels only from the waiting room
    for event in day(scenario, seed).events:
        kind = event["type"]
        if kind in follows:
            assert stage.get(event["visit_id"]) == follows[kind], event
        if "visit_id" in event:
            stage[event["visit_id"]] = kind
    assert set(stage.values()) <= {"checkout", "cancel"}, "every visit ends by the day's end"


@pytest.mark.parametrize(("scenario", "seed"), every_day())
def test_a_room_holds_one_patient_at_a_time(scenario: str, seed: int) -> None:
    holding: dict[str, str | None] = {}  # room -> visit in it (None: ready)
    room_of: dict[str, str] = {}
    for event in day(scenario, seed).events:
        kind = event["type"]
        if kind == "room_ready":
            assert event["room_id"] not in holding or holding[event["room_id"]] == "cleaning"
            holding[event["room_id"]] = None
        elif kind == "roomed":
            assert holding.get(event["room_id"], "never ready") is None, event
            holding[event["room_id"]] = event["visit_id"]
            room_of[event["visit_id"]] = event["room_id"]
        elif kind == "checkout":
            room = room_of[event["visit_id"]]
            assert holding[room] == event["visit_id"]
            holding[room] = "cleaning"


@pytest.mark.parametrize(("scenario", "seed"), every_day())
def test_a_provider_sees_one_patient_at_a_time(scenario: str, seed: int) -> None:
    with_provider: dict[str, str | None] = {}
    seen_by: dict[str, str] = {}
    for event in day(scenario, seed).events:
        if event["type"] == "provider_in":
            provider = event["provider_id"]
            assert with_provider.get(provider) is None, event
            with_provider[provider] = event["visit_id"]
            seen_by[event["visit_id"]] = provider
        elif event["type"] == "checkout":
            assert with_provider[seen_by[event["visit_id"]]] == event["visit_id"]
            with_provider[seen_by[event["visit_id"]]] = None


def test_patients_asking_for_a_provider_are_seen_by_that_provider() -> None:
    for scenario, seed in every_day():
        asked = {e["visit_id"]: e["provider_id"] for e in day(scenario, seed).events
                 if e["type"] == "arrival" and e["provider_id"] is not None}
        for event in day(scenario, seed).events:
            if event["type"] == "provider_in" and event["visit_id"] in asked:
                assert event["provider_id"] == asked[event["visit_id"]]


def test_urgent_patients_are_roomed_before_routine_ones_who_came_earlier() -> None:
    """Whenever a routine patient is roomed, no urgent patient of the same provider who
    has finished checking in is still waiting; and urgent patients do overtake."""
    overtakes = 0
    for scenario, seed in every_day():
        checking_in = timedelta(minutes=SCENARIOS[scenario].check_in_minutes[1])
        waiting: dict[str, dict[str, Any]] = {}
        for event in day(scenario, seed).events:
            if event["type"] == "arrival":
                waiting[event["visit_id"]] = event
            elif event["type"] == "cancel":
                waiting.pop(event["visit_id"], None)
            elif event["type"] == "roomed":
                roomed = waiting.pop(event["visit_id"])
                provider = roomed["provider_id"]
                if roomed["priority"] == "routine" and provider is not None:
                    assert not [v for v in waiting.values()
                                if v["priority"] == "urgent" and v["provider_id"] == provider
                                and at(v) + checking_in <= at(event)]
                if roomed["priority"] == "urgent":
                    overtakes += sum(1 for v in waiting.values()
                                     if v["priority"] == "routine"
                                     and v["provider_id"] == provider and provider is not None)
    assert overtakes > 0


@pytest.mark.parametrize("scenario", SCENARIO_NAMES)
def test_every_room_is_announced_ready_at_opening(scenario: str) -> None:
    simulated = day(scenario, 1)
    rooms = [r["room_id"] for r in simulated.truth["clinics"][0]["rooms"]]
    first = at(simulated.events[0])
    opening = [e["room_id"] for e in simulated.events
               if e["type"] == "room_ready" and at(e) <= first + timedelta(minutes=30)]
    assert sorted(set(opening)) == sorted(rooms)
    assert len(rooms) == SCENARIOS[scenario].rooms


# ------------------------------------------------------------- people and delays


def test_no_shows_never_arrive_but_are_in_the_truth() -> None:
    simulated = day("overbooked", 1)
    no_shows = [v for v in simulated.truth["visits"] if v["outcome"] == "no_show"]
    assert no_shows
    logged = {e.get("visit_id") for e in simulated.events}
    for visit in no_shows:
        assert visit["arrived_at"] is None and visit["scheduled_at"] is not None
        assert visit["visit_id"] not in logged


def test_patients_who_wait_too_long_leave_without_being_seen() -> None:
    waits = []
    for seed in SEEDS:
        events = day("room_bound", seed).events
        arrived = {e["visit_id"]: at(e) for e in events if e["type"] == "arrival"}
        waits += [minutes(at(e), arrived[e["visit_id"]]) for e in events
                  if e["type"] == "cancel" and e["reason"] == "left_without_being_seen"]
    assert waits
    assert sorted(waits)[len(waits) // 2] > 30  # they leave after long waits, mostly


def test_a_whole_clinic_delay_is_announced_stops_rooming_and_is_cleared() -> None:
    found = 0
    for seed in range(1, 20):
        simulated = day("mixed", seed)
        clinic_wide = [e for e in simulated.events
                       if e["type"] == "delay" and e["provider_id"] is None]
        if not clinic_wide:
            continue
        found += 1
        start, end = clinic_wide
        assert start["minutes"] > 0 and end["minutes"] == 0
        assert not [e for e in simulated.events if e["type"] in ("roomed", "provider_in")
                    and at(start) < at(e) < at(end)]
    assert found >= 2


def test_truth_agrees_with_the_log() -> None:
    for scenario, seed in every_day():
        simulated = day(scenario, seed)
        events = simulated.events
        arrival = {e["visit_id"]: e["ts"] for e in events if e["type"] == "arrival"}
        roomed = {e["visit_id"]: e["ts"] for e in events if e["type"] == "roomed"}
        cancels = {e["visit_id"]: e["reason"] for e in events if e["type"] == "cancel"}
        for visit in simulated.truth["visits"]:
            visit_id = visit["visit_id"]
            assert visit["arrived_at"] == arrival.get(visit_id)
            assert visit["roomed_at"] == roomed.get(visit_id)
            expected = ("no_show" if visit_id not in arrival else
                        cancels.get(visit_id, "checked_out"))
            assert visit["outcome"] == expected
        assert simulated.truth["clinics"][0]["parameters"]["name"] == scenario


# -------------------------------------------------------- each shape's character


def arrivals(scenario: str) -> list[dict[str, Any]]:
    return [e for seed in SEEDS for e in day(scenario, seed).events if e["type"] == "arrival"]


def test_urgent_care_is_mostly_walk_ins_for_whoever_is_free() -> None:
    came = arrivals("walk_in_urgent_care")
    walk_ins = [e for e in came if e["scheduled_at"] is None]
    assert len(walk_ins) / len(came) > 0.8
    assert sum(e["provider_id"] is None for e in walk_ins) / len(walk_ins) > 0.75
    assert 0.15 < sum(e["priority"] == "urgent" for e in came) / len(came) < 0.4


def test_a_scheduled_clinic_is_mostly_appointments() -> None:
    came = arrivals("overbooked")
    assert sum(e["scheduled_at"] is not None for e in came) / len(came) > 0.9


def test_overbooked_clinics_double_book_slots() -> None:
    slots = Counter((v["provider_id"], v["scheduled_at"]) for seed in SEEDS
                    for v in day("overbooked", seed).truth["visits"] if v["scheduled_at"])
    doubled = sum(1 for n in slots.values() if n > 1)
    assert doubled / len(slots) > 0.15
    quiet = Counter((v["provider_id"], v["scheduled_at"])
                    for v in day("quiet_specialty", 1).truth["visits"] if v["scheduled_at"])
    assert max(quiet.values()) == 1


def test_late_providers_are_announced_late_and_start_late() -> None:
    late_starts = 0
    for seed in SEEDS:
        events = day("late_providers", seed).events
        opening = at(events[0]).replace(hour=8, minute=0, second=0)
        for announced in (e for e in events if e["type"] == "delay"
                          and e["reason"] == "late_start"):
            late_starts += 1
            provider = announced["provider_id"]
            assert announced["minutes"] >= 15
            first_seen = min(at(e) for e in events
                             if e["type"] == "provider_in" and e["provider_id"] == provider)
            assert minutes(first_seen, opening) >= 20
            # the announcement is replaced or cleared once the provider is in
            assert [e for e in events if e["type"] == "delay" and e["provider_id"] == provider
                    and at(e) > at(announced)]
    assert late_starts >= 2 * len(SEEDS)


def test_room_bound_patients_wait_for_a_room_to_free_up() -> None:
    """In a room-bound clinic a patient who waited is roomed right after a room is ready;
    in an overbooked one, right after their provider frees up."""

    def right_after_room_ready(scenario: str) -> float:
        hits = total = 0
        for seed in SEEDS:
            ready: dict[str, datetime] = {}
            arrived: dict[str, datetime] = {}
            for event in day(scenario, seed).events:
                if event["type"] == "room_ready":
                    ready[event["room_id"]] = at(event)
                elif event["type"] == "arrival":
                    arrived[event["visit_id"]] = at(event)
                elif event["type"] == "roomed" and minutes(
                        at(event), arrived[event["visit_id"]]) > 10:
                    total += 1
                    hits += minutes(at(event), ready[event["room_id"]]) <= 2.5
        return hits / total

    assert right_after_room_ready("room_bound") > 0.75
    assert right_after_room_ready("overbooked") < 0.4


def test_quiet_specialty_has_few_long_visits() -> None:
    for seed in SEEDS:
        events = day("quiet_specialty", seed).events
        came = [e for e in events if e["type"] == "arrival"]
        busy = day("mixed", seed).events
        assert len(came) < len([e for e in busy if e["type"] == "arrival"]) / 2
        started = {e["visit_id"]: at(e) for e in events if e["type"] == "provider_in"}
        lengths = [minutes(at(e), started[e["visit_id"]]) for e in events
                   if e["type"] == "checkout"]
        assert sum(lengths) / len(lengths) > 25


def test_mixed_clinic_has_walk_ins_urgent_patients_and_two_room_pools() -> None:
    came = arrivals("mixed")
    assert 0.05 < sum(e["scheduled_at"] is None for e in came) / len(came) < 0.5
    assert any(e["priority"] == "urgent" for e in came)
    pools = {r["pool"] for r in day("mixed", 1).truth["clinics"][0]["rooms"]}
    assert pools == {0, 1}


def test_waits_are_neither_nil_nor_endless() -> None:
    for scenario in SCENARIO_NAMES:
        waits = []
        for seed in SEEDS:
            visits = day(scenario, seed).truth["visits"]
            waits += [minutes(datetime.fromisoformat(v["roomed_at"]),
                              datetime.fromisoformat(v["arrived_at"]))
                      for v in visits if v["roomed_at"]]
        waits.sort()
        assert 1 <= waits[len(waits) // 2] <= 40, scenario
        assert waits[int(0.9 * len(waits))] < 90, scenario
        assert len(set(round(w) for w in waits)) > 10, scenario  # not one number


# --------------------------------------------------------- many clinics, files


def test_many_clinics_merge_in_time_order_with_unique_visit_ids() -> None:
    simulated = simulate_clinics("all", 3, clinics=8)
    times = [at(e) for e in simulated.events]
    assert times == sorted(times)
    clinics = [c["clinic_id"] for c in simulated.truth["clinics"]]
    assert clinics == [f"c{i:03d}" for i in range(1, 9)]
    assert [c["scenario"] for c in simulated.truth["clinics"][:6]] == list(SCENARIO_NAMES)
    ids = [v["visit_id"] for v in simulated.truth["visits"]]
    assert len(ids) == len(set(ids))
    # each clinic's own day is kept whole and in its own order
    own = [e for e in simulated.events if e["clinic_id"] == "c002"]
    assert own == simulate_day(SCENARIO_NAMES[1], 3 * 10_000 + 1, "c002").events


def test_write_log_writes_json_lines_to_a_path_or_a_stream(tmp_path: Path) -> None:
    events = day("quiet_specialty", 1).events
    path = tmp_path / "day.jsonl"
    assert write_log(events, path) == len(events)
    assert [orjson.loads(line) for line in path.read_bytes().splitlines()] == events
    text = io.StringIO()
    write_log(events[:3], text)
    assert [orjson.loads(line) for line in text.getvalue().splitlines()] == events[:3]


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers())
    args = parser.parse_args(["simulate", *argv])
    return int(args.func(args))


def test_cli_writes_the_log_and_the_truth(tmp_path: Path) -> None:
    log, truth = tmp_path / "log.jsonl", tmp_path / "truth.json"
    assert run_cli("--scenario", "mixed", "--seed", "4", "--clinics", "2",
                   "--date", "2026-03-03", "--out", str(log), "--truth", str(truth)) == 0
    events = [orjson.loads(line) for line in log.read_bytes().splitlines()]
    expected = simulate_clinics("mixed", 4, 2, date(2026, 3, 3))
    assert events == expected.events
    assert orjson.loads(truth.read_bytes()) == expected.truth


def test_cli_lists_the_scenarios_and_refuses_unknown_ones(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert run_cli("--list") == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in SCENARIO_NAMES)
    assert run_cli("--scenario", "circus", "--out", str(tmp_path / "x.jsonl")) == 2
    assert "unknown scenario" in capsys.readouterr().err


def test_cli_writes_consecutive_days(tmp_path: Path) -> None:
    log = tmp_path / "days.jsonl"
    assert run_cli("--scenario", "quiet_specialty", "--seed", "5", "--days", "3",
                   "--out", str(log)) == 0
    events = [orjson.loads(line) for line in log.read_bytes().splitlines()]
    assert events == simulate_days("quiet_specialty", 5 * 10_000, 3, "c001").events
    assert run_cli("--scenario", "mixed", "--days", "0", "--out", str(log)) == 2
