"""A clinic's consecutive days: the same providers and rooms day after day, each day its
own patients, and drift (a new provider, a slower day, a room out for a week)."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import date, datetime
from functools import cache
from statistics import mean
from typing import Any

import pytest

from tools import replay
from tools.simulate import (
    SCENARIO_NAMES,
    SimulatedDay,
    clinic_days,
    drift_plan,
    get_scenario,
    simulate_clinics,
    simulate_day,
    simulate_days,
)

DAYS = 10


@cache
def run(scenario: str, seed: int) -> SimulatedDay:
    return simulate_days(scenario, seed, DAYS, clinic_id="c1")


def by_day(simulated: SimulatedDay) -> dict[date, list[dict[str, Any]]]:
    days: dict[date, list[dict[str, Any]]] = defaultdict(list)
    for event in simulated.events:
        days[datetime.fromisoformat(event["ts"]).date()].append(event)
    return days


def test_day_one_is_the_single_day_of_the_same_seed() -> None:
    for scenario in SCENARIO_NAMES:
        first = simulate_day(scenario, 3, clinic_id="c1")
        assert run(scenario, 3).events[:len(first.events)] == first.events


def test_the_same_seed_gives_the_same_days_and_another_seed_others() -> None:
    again = simulate_days("mixed", 2, DAYS, clinic_id="c1")
    assert again.events == run("mixed", 2).events
    assert again.truth == run("mixed", 2).truth
    assert run("mixed", 3).events != run("mixed", 2).events


def test_the_days_are_consecutive_working_days_in_time_order() -> None:
    simulated = run("room_bound", 1)
    assert list(by_day(simulated)) == clinic_days(date(2026, 3, 2), DAYS)
    assert clinic_days(date(2026, 3, 6), 2) == [date(2026, 3, 6), date(2026, 3, 9)]
    times = [datetime.fromisoformat(e["ts"]) for e in simulated.events]
    assert times == sorted(times)


def test_visit_ids_are_unique_across_the_days_and_the_replay_accepts_every_line() -> None:
    simulated = run("walk_in_urgent_care", 2)
    arrivals = [e["visit_id"] for e in simulated.events if e["type"] == "arrival"]
    assert len(arrivals) == len(set(arrivals))
    problems: list[tuple[int, str]] = []
    estimates = list(replay.replay_events((dict(e) for e in simulated.events),
                                          on_error=lambda n, r: problems.append((n, r))))
    assert problems == []
    assert estimates


def test_providers_keep_their_pace_from_day_to_day_until_one_is_replaced() -> None:
    scenario = "overbooked"
    plan = drift_plan(get_scenario(scenario), 1, DAYS)
    assert plan.new_provider_day is not None and plan.leaving is not None
    clinics = run(scenario, 1).truth["clinics"]
    assert len(clinics) == DAYS
    paces = [{p["provider_id"]: p["pace"] for p in c["providers"]} for c in clinics]
    for number, day_paces in enumerate(paces, start=1):
        if number == plan.slower_day:
            continue
        if number < plan.new_provider_day:
            assert day_paces == paces[0]
        else:
            assert plan.leaving not in day_paces
            joining = f"p{get_scenario(scenario).providers + 1}"
            assert day_paces[joining] == pytest.approx(plan.joining_pace, abs=0.001)
            assert {p: v for p, v in day_paces.items() if p != joining} == \
                {p: v for p, v in paces[0].items() if p != plan.leaving}
    seen_by = {v["seen_by"] for v in run(scenario, 1).truth["visits"]
               if v["visit_id"].startswith(f"c1-d{DAYS}-")}
    assert plan.leaving not in seen_by


def test_a_room_is_out_of_service_for_a_week_and_nobody_is_roomed_there() -> None:
    scenario = "room_bound"
    plan = drift_plan(get_scenario(scenario), 4, DAYS)
    assert plan.room_out is not None and len(plan.room_out_days) == 5
    days = list(by_day(run(scenario, 4)).values())
    for number, events in enumerate(days, start=1):
        outs = [e for e in events if e["type"] == "room_out_of_service"]
        roomed_there = [e for e in events if e["type"] == "roomed"
                        and e["room_id"] == plan.room_out]
        if number in plan.room_out_days:
            assert [e["room_id"] for e in outs] == [plan.room_out]
            assert roomed_there == []
        else:
            assert outs == []
            assert roomed_there


def test_the_slower_day_is_slower() -> None:
    scenario = "late_providers"
    plan = drift_plan(get_scenario(scenario), 2, DAYS)
    assert plan.slower_day is not None
    visits = run(scenario, 2).truth["visits"]

    def visit_minutes(number: int) -> float:
        prefix = "c1-v" if number == 1 else f"c1-d{number}-v"
        return mean((datetime.fromisoformat(v["ended_at"])
                     - datetime.fromisoformat(v["provider_in_at"])).total_seconds() / 60
                    for v in visits if v["visit_id"].startswith(prefix)
                    and v["outcome"] == "checked_out")

    slow = visit_minutes(plan.slower_day)
    others = [visit_minutes(n) for n in range(1, DAYS + 1) if n != plan.slower_day]
    assert slow > 1.1 * mean(others)
    drift = run(scenario, 2).truth["clinics"][plan.slower_day - 1]["drift"]
    assert "a slower day" in drift


def test_fridays_have_fewer_walk_ins_than_mondays() -> None:
    walk_ins: Counter[int] = Counter()
    for seed in (1, 2, 3):
        for day, events in by_day(run("walk_in_urgent_care", seed)).items():
            walk_ins[day.weekday()] += sum(1 for e in events if e["type"] == "arrival"
                                           and e["scheduled_at"] is None)
    assert walk_ins[4] < 0.9 * walk_ins[0]


def test_many_clinics_each_get_their_own_days() -> None:
    simulated = simulate_clinics("all", 3, clinics=2, days=3)
    own = [e for e in simulated.events if e["clinic_id"] == "c002"]
    assert own == simulate_days(SCENARIO_NAMES[1], 3 * 10_000 + 1, 3, "c002").events
    assert simulated.truth["days"] == 3
    with pytest.raises(ValueError):
        simulate_days("mixed", 1, 0)
