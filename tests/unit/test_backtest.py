"""Scoring wait estimates as replay-format.md says, on tiny days worked out by hand."""

from __future__ import annotations

import argparse
from datetime import date
from pathlib import Path
from typing import Any

import orjson
import pytest

from tools import backtest
from tools.backtest import (
    Score,
    add_cli,
    markdown_report,
    rolling_average_estimates,
    run_multi_day,
    run_scenarios,
    score,
    score_days,
)
from tools.simulate import SCENARIO_NAMES, simulate_day, simulate_days


def ts(clock: str, clinic_offset: str = "-05:00") -> str:
    return f"2026-03-02T{clock}:00{clinic_offset}"


def arrival(clock: str, visit_id: str, clinic_id: str = "c1") -> dict[str, Any]:
    return {"ts": ts(clock), "type": "arrival", "clinic_id": clinic_id, "visit_id": visit_id,
            "provider_id": "p1", "visit_type": "follow_up", "scheduled_at": None,
            "priority": "routine"}


def roomed(clock: str, visit_id: str, clinic_id: str = "c1") -> dict[str, Any]:
    return {"ts": ts(clock), "type": "roomed", "clinic_id": clinic_id, "visit_id": visit_id,
            "room_id": "r1"}


def estimate(clock: str, visit_id: str, wait: float, low: float, high: float,
             ) -> dict[str, Any]:
    return {"ts": ts(clock), "visit_id": visit_id, "wait_minutes": wait, "low": low,
            "high": high}


def test_an_estimate_ages_with_the_clock_between_samples() -> None:
    # waits 08:00-08:12: sampled at 08:00, 08:05, 08:10 (true 12, 7, 2)
    log = [arrival("08:00", "v1"), roomed("08:12", "v1")]
    # 10 [5, 15] at 08:00 ages to 5 [0, 10] at 08:05 and 0 [0, 5] at 08:10
    result = score(log, [estimate("08:00", "v1", 10, 5, 15)])
    assert result.samples == 3
    assert result.visits == 1
    assert result.estimator_mae == pytest.approx((2 + 2 + 2) / 3)
    assert result.coverage == 1.0
    # nobody has finished waiting yet: the rolling average says 0
    assert result.baseline_mae == pytest.approx((12 + 7 + 2) / 3)
    assert result.ratio == pytest.approx(6 / 21)
    assert result.missing_estimates == 0


def test_a_range_that_ends_exactly_at_the_true_wait_covers_it() -> None:
    # roomed at 08:06:24: true waits 6.4 at 08:00 and 1.4 at 08:05, where the range
    # [6.4, 6.4] aged by 5 minutes is 6.4 - 5.0 = 1.4000000000000004 in floating point
    log = [arrival("08:00", "v1"),
           {**roomed("08:06", "v1"), "ts": "2026-03-02T08:06:24-05:00"}]
    result = score(log, [estimate("08:00", "v1", 6.4, 6.4, 6.4)])
    assert result.samples == 2
    assert result.coverage == 1.0
    assert result.interval_score == pytest.approx(0.0)


def test_width_and_interval_score_reward_a_narrow_range_and_charge_ten_times_the_miss(
) -> None:
    log = [arrival("08:00", "v1"), roomed("08:12", "v1")]
    # 10 [5, 15] ages to [0, 10] and [0, 5]: widths 10, 10, 5, every sample covered
    covering = score(log, [estimate("08:00", "v1", 10, 5, 15)])
    assert covering.mean_width == pytest.approx(25 / 3)
    assert covering.interval_score == pytest.approx(25 / 3)
    # 2 [1, 3] for a 12-minute wait: [1, 3] misses 12 by 9, then [0, 0] misses 7 and 2
    missing = score(log, [estimate("08:00", "v1", 2, 1, 3)])
    assert missing.coverage == 0.0
    assert missing.mean_width == pytest.approx(2 / 3)
    assert missing.interval_score == pytest.approx((2 + 10 * 9 + 10 * 7 + 10 * 2) / 3)
    # no estimate at all: a range [0, 0] that misses the whole wait
    assert score(log, []).interval_score == pytest.approx(10 * (12 + 7 + 2) / 3)
    pooled = covering + missing
    assert pooled.interval_score == pytest.approx((25 + 182) / 6)
    assert covering.summary()["mean_width"] == 8.33


def test_the_latest_estimate_stands_and_a_later_line_wins_a_tie() -> None:
    log = [arrival("08:00", "v1"), roomed("08:20", "v1")]  # true 20, 15, 10, 5
    estimates = [
        estimate("08:00", "v1", 30, 20, 40),
        estimate("08:07", "v1", 8, 6, 10),  # replaced by the next line, same ts
        estimate("08:07", "v1", 12, 10, 12.5),
        estimate("08:21", "v1", 99, 0, 99),  # after rooming: never used
    ]
    result = score(log, estimates)
    # 08:00: 30 vs 20 (err 10, [20, 40] covers)  08:05: 25 vs 15 (10, [15, 35] covers)
    # 08:10: 9 vs 10 (1, [7, 9.5] misses)        08:15: 4 vs 5 (1, [2, 4.5] misses)
    assert result.estimator_mae == pytest.approx(22 / 4)
    assert result.coverage == pytest.approx(2 / 4)


def test_a_missing_estimate_is_counted_and_not_free() -> None:
    log = [arrival("08:00", "v1"), roomed("08:11", "v1")]  # true 11, 6, 1
    result = score(log, [estimate("08:06", "v1", 5, 3, 8)])
    # 08:00 and 08:05 have no estimate yet: predicted 0, not covered
    # 08:10: 5 aged 4 minutes = 1 vs 1, [0, 4] covers
    assert result.missing_estimates == 2
    assert result.estimator_mae == pytest.approx((11 + 6 + 0) / 3)
    assert result.coverage == pytest.approx(1 / 3)


def test_rolling_average_is_the_last_five_finished_waits_minus_time_waited() -> None:
    log = [
        arrival("08:00", "v1"), roomed("08:01", "v1"),  # waits 1
        arrival("08:02", "v2"), roomed("08:04", "v2"),  # 2
        arrival("08:05", "v3"), roomed("08:08", "v3"),  # 3
        arrival("08:10", "v4"), roomed("08:14", "v4"),  # 4
        arrival("08:15", "v5"), roomed("08:20", "v5"),  # 5
        arrival("08:25", "v6"),
        arrival("08:30", "v7"), roomed("08:30", "v6"),  # 5, finished as v7 comes in
        roomed("08:52", "v7"),  # 22
    ]
    perfect = [estimate(c, v, w, w - 1, w + 1) for c, v, w in (
        ("08:00", "v1", 1), ("08:02", "v2", 2), ("08:05", "v3", 3), ("08:10", "v4", 4),
        ("08:15", "v5", 5), ("08:25", "v6", 5))]
    result = score(log, [*perfect, estimate("08:30", "v7", 20, 15, 25)])
    # v1..v6 are sampled once, at arrival; the rolling average then stood at:
    #   v1: nothing finished -> 0 (err 1)   v2: mean(1) = 1 (err 1)
    #   v3: mean(1, 2) = 1.5 (err 1.5)      v4: mean(1, 2, 3) = 2 (err 2)
    #   v5: mean(1..4) = 2.5 (err 2.5)      v6: mean(1..5) = 3 (err 2)
    # v7 at 08:30 (v6 roomed at that very time counts; v1 has dropped out):
    #   mean(2, 3, 4, 5, 5) = 3.8 vs 22 (err 18.2); then 3.8 - waited is 0:
    #   08:35 err 17, 08:40 err 12, 08:45 err 7, 08:50 err 2
    baseline_errors = [1, 1, 1.5, 2, 2.5, 2, 18.2, 17, 12, 7, 2]
    assert result.samples == 11
    assert result.baseline_mae == pytest.approx(sum(baseline_errors) / 11)
    # the estimator is exact for v1..v6 and off by 2 at each of v7's five samples
    assert result.estimator_mae == pytest.approx(10 / 11)
    assert result.ratio == pytest.approx(10 / sum(baseline_errors))
    assert result.coverage == 1.0


def test_each_clinic_has_its_own_rolling_average_and_score() -> None:
    log = [
        arrival("08:00", "a1", "A"), roomed("08:30", "a1", "A"),  # 6 samples: 30..5
        arrival("08:40", "b1", "B"), roomed("08:43", "b1", "B"),  # 1 sample: 3
    ]
    result = score(log, [])
    assert result.clinics["A"].samples == 6 and result.clinics["B"].samples == 1
    assert result.missing_estimates == 7
    # no estimate: predicted 0; and B has no finished wait of its own, so its rolling
    # average predicts 0 too (A's 30 minutes do not count at B)
    assert result.clinics["A"].estimator_mae == pytest.approx(105 / 6)
    assert result.clinics["B"].baseline_mae == pytest.approx(3)
    assert result.clinics["B"].ratio == pytest.approx(1.0)
    assert result.estimator_mae == pytest.approx(108 / 7)
    assert result.coverage == 0.0


def test_only_visits_that_waited_and_were_roomed_are_sampled() -> None:
    log = [
        arrival("08:00", "v0"), roomed("08:00", "v0"),  # roomed at once: no sample
        arrival("08:00", "v1"),
        {"ts": ts("09:00"), "type": "cancel", "clinic_id": "c1", "visit_id": "v1",
         "reason": "left_without_being_seen"},  # never roomed: no sample
        arrival("08:10", "v2"), roomed("08:16", "v2"),  # 08:10 and 08:15
        roomed("08:20", "ghost"),  # roomed without an arrival in the log: skipped
    ]
    result = score(log, [estimate("08:10", "v2", 6, 5, 7), estimate("08:10", "elsewhere", 1, 1, 1)])
    assert (result.samples, result.visits) == (2, 1)
    # v0's wait of 0 is a finished wait: the rolling average says 0 - waited = 0
    assert result.baseline_mae == pytest.approx((6 + 1) / 2)
    assert result.estimator_mae == 0.0


def test_estimates_compare_instants_across_utc_offsets() -> None:
    log = [arrival("08:00", "v1"), roomed("08:10", "v1")]  # 13:00Z to 13:10Z
    utc = {"ts": "2026-03-02T13:00:00+00:00", "visit_id": "v1", "wait_minutes": 10.0,
           "low": 9.0, "high": 11.0}
    result = score(log, [utc])
    assert result.missing_estimates == 0 and result.estimator_mae == 0.0


def test_unusable_records_are_reported_and_skipped() -> None:
    problems: list[tuple[int, str]] = []
    log = [arrival("08:00", "v1"), {"type": "roomed", "visit_id": "v1"}, roomed("08:06", "v1")]
    estimates = [{"visit_id": "v1"}, estimate("08:00", "v1", 6, 5, 7)]
    result = score(log, estimates, on_error=lambda n, reason: problems.append((n, reason)))
    assert [n for n, _ in problems] == [2, 1]
    assert result.samples == 2 and result.estimator_mae == 0.0


def test_scores_add_up_by_pooling_samples() -> None:
    one = score([arrival("08:00", "v1"), roomed("08:12", "v1")], [])
    two = score([arrival("08:00", "w1", "c2"), roomed("08:01", "w1", "c2")], [])
    both = one + two
    assert both.samples == 4
    assert both.estimator_mae == pytest.approx((12 + 7 + 2 + 1) / 4)
    assert set(both.clinics) == {"c1", "c2"}
    assert Score().estimator_mae is None and Score().ratio is None


# ------------------------------------------------------- the scenario runner


def test_the_rolling_average_scores_a_ratio_of_one_against_itself() -> None:
    events = simulate_day("mixed", 3).events
    result = score(events, rolling_average_estimates(events))
    assert result.samples > 100
    assert result.missing_estimates == 0
    assert result.ratio == pytest.approx(1.0, abs=0.01)


def test_scenario_runner_simulates_replays_and_scores_every_shape() -> None:
    results = run_scenarios(SCENARIO_NAMES, [1, 2], replay=rolling_average_estimates)
    assert [r.scenario for r in results] == list(SCENARIO_NAMES)
    for result in results:
        assert result.score.samples == sum(s.samples for s in result.seed_scores.values())
        assert result.score.ratio == pytest.approx(1.0, abs=0.01)
        assert 0.0 <= (result.score.coverage or 0.0) <= 1.0
    report = markdown_report(results, [1, 2], "clinicflow backtest --scenarios all --seeds 2")
    assert all(f"| {name} |" in report for name in SCENARIO_NAMES)
    assert "Mean ratio across shapes: **1.000**" in report


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers())
    args = parser.parse_args(["backtest", *argv])
    return int(args.func(args))


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> str:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return str(path)


def test_cli_scores_a_log_and_its_estimates(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    log = write_jsonl(tmp_path / "log.jsonl", [arrival("08:00", "v1"), roomed("08:12", "v1")])
    estimates = write_jsonl(tmp_path / "est.jsonl", [estimate("08:00", "v1", 10, 5, 15)])
    assert run_cli(log, estimates, "--json") == 0
    printed = orjson.loads(capsys.readouterr().out)
    assert printed["estimator_mae"] == 2.0 and printed["rolling_average_mae"] == 7.0
    assert printed["clinics"]["c1"]["samples"] == 3
    assert run_cli(log, estimates) == 0
    table = capsys.readouterr().out
    assert "overall" in table and "0.286" in table


def test_cli_runs_every_scenario_and_writes_the_markdown_table(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backtest, "_default_replay", lambda: rolling_average_estimates)
    doc = tmp_path / "backtest.md"
    assert run_cli("--scenarios", "all", "--seeds", "1", "--markdown", str(doc)) == 0
    assert "mean ratio across shapes: 1.000" in capsys.readouterr().out
    assert "| quiet_specialty |" in doc.read_text()
    assert run_cli("--scenarios", "circus") == 2
    assert run_cli() == 2


# ---------------------------------------------------------- consecutive days


def test_each_day_of_a_log_is_scored_alone_with_its_own_rolling_average() -> None:
    monday = [arrival("08:00", "v1"), roomed("08:12", "v1")]
    tuesday = [dict(e, ts=e["ts"].replace("03-02", "03-03")) for e in
               (arrival("08:00", "w1"), roomed("08:20", "w1"))]
    estimates = [estimate("08:00", "v1", 10, 5, 15),
                 dict(estimate("08:00", "w1", 20, 15, 25), ts=ts("08:00").replace("03-02",
                                                                                  "03-03"))]
    days = score_days(monday + tuesday, estimates)
    assert [d.isoformat() for d in days] == ["2026-03-02", "2026-03-03"]
    assert days[date(2026, 3, 2)] == score(monday, estimates[:1])
    tuesday_score = days[date(2026, 3, 3)]
    assert tuesday_score.samples == 4 and tuesday_score.estimator_mae == 0.0
    # Tuesday's rolling average knows no wait yet: Monday's 12 minutes do not count
    assert tuesday_score.baseline_mae == pytest.approx((20 + 15 + 10 + 5) / 4)


def test_multi_day_runner_scores_day_one_the_later_days_and_the_same_days_alone() -> None:
    results = run_multi_day(["quiet_specialty", "mixed"], [1], 3,
                            replay=rolling_average_estimates)
    assert [r.scenario for r in results] == ["quiet_specialty", "mixed"]
    for result in results:
        events = simulate_days(result.scenario, 1, 3,
                               clinic_id=f"{result.scenario}-1").events
        first = simulate_day(result.scenario, 1, clinic_id=f"{result.scenario}-1").events
        assert result.first_day.score == score(first, rolling_average_estimates(first))
        later = list(score_days(events, list(rolling_average_estimates(events))).values())
        assert result.remembered.score == later[1] + later[2]
        # alone, the stand-in is the scorer's own rolling average: a ratio of one
        assert result.alone.score.samples == result.remembered.score.samples
        assert result.alone.score.ratio == pytest.approx(1.0, abs=0.01)
        assert set(result.remembered.seed_scores) == {1}


def test_cli_scores_consecutive_days_and_writes_both_tables(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backtest, "_default_replay", lambda: rolling_average_estimates)
    doc = tmp_path / "backtest.md"
    assert run_cli("--scenarios", "quiet_specialty", "--seeds", "1", "--days", "3",
                   "--markdown", str(doc)) == 0
    assert "days 2-3" in capsys.readouterr().out
    text = doc.read_text()
    assert "## Days 2-3" in text and "--days 3" in text
    assert text.count("| quiet_specialty |") == 2
    assert run_cli("--scenarios", "quiet_specialty", "--seeds", "1", "--days", "2",
                   "--json") == 0
    printed = orjson.loads(capsys.readouterr().out)
    assert printed["days"] == 2
    assert printed["later_days"]["scenarios"]["quiet_specialty"]["alone"]["samples"] > 0
    assert run_cli("--scenarios", "mixed", "--days", "0") == 2
