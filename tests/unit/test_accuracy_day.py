"""``clinicflow up --day`` and ``clinicflow accuracy-day``: the played day's plan and
clock, and the live-versus-backtest table (pure parts; no day is played here)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from shared import events as ev
from shared.clinics import ClinicDirectory
from shared.clock import WarpClock
from tools.accuracy_day import channel_rows, comparison_rows, markdown, pooled
from tools.backtest import Score
from tools.devup import DAY_LEAD, START_WALL_SECONDS, day_clock, day_env
from tools.ehr_sender import ehr_day
from tools.live_demo import DEMO_CLINICS, clinic_day, clinics_setting, day_span, demo_day

DAY = date(2026, 3, 2)
DIRECTORY = ClinicDirectory.parse(clinics_setting())


def _figures(scored: int, mae: float | None, inside: float | None,
             rolling: float | None, left: int = 0) -> dict[str, object]:
    return {"scored": scored, "mean_absolute_error_minutes": mae, "share_inside_range": inside,
            "rolling_average_mean_absolute_error_minutes": rolling, "left": left}


def test_the_whole_day_is_played_as_simulated_on_each_clinics_date_not_slid() -> None:
    events = demo_day(now=datetime(2026, 3, 2, 23, 50, tzinfo=UTC), day=DAY)
    first, last = day_span(DAY)
    assert (events[0].at, events[-1].at) == (first, last)
    for clinic in DEMO_CLINICS:
        planned = clinic_day(clinic, DIRECTORY.zone(clinic.clinic_id),
                             datetime(2026, 3, 2, 23, 50, tzinfo=UTC), DAY)
        assert planned.day == DAY and planned.shift == timedelta(0)
        opening = min(datetime.fromisoformat(r["ts"]) for r in planned.records)
        assert opening.astimezone(planned.zone).date() == DAY
        assert 7 <= opening.astimezone(planned.zone).hour < 8  # before its doors open
    # started before the day, nothing of it is past yet: every step is played live
    plan = ehr_day(DEMO_CLINICS[0], DIRECTORY, started=first - DAY_LEAD, day=DAY)
    assert plan.past == [] and plan.future and plan.bookings
    assert all(isinstance(e.payload, ev.Payload) for e in plan.future)


def test_the_played_days_clock_starts_before_its_first_fact_and_its_jobs_keep_pace() -> None:
    first = datetime(2026, 3, 2, 12, 45, tzinfo=UTC)
    clock = day_clock(first, 40.0, wall_now=1_000.0)
    assert clock == WarpClock(first - DAY_LEAD, 1_000.0 + START_WALL_SECONDS, 40.0)
    env = day_env(clock, {"CLINICFLOW_CHECKIN_NO_SHOW_CHECK_SECONDS": "5"})
    assert WarpClock.parse(env["CLINICFLOW_CLOCK_WARP"]) == clock
    assert env["CLINICFLOW_FLOW_TICK_SECONDS"] == "0.5"  # 20 s of the day, as unwarped
    assert env["CLINICFLOW_NOTIFICATIONS_TICK_SECONDS"] == "0.25"  # never faster than that
    assert "CLINICFLOW_CHECKIN_NO_SHOW_CHECK_SECONDS" not in env  # what was set is kept


def test_clinics_are_pooled_by_how_many_told_records_each_scored() -> None:
    both = pooled([_figures(30, 6.0, 0.8, 12.0, left=1), _figures(10, 10.0, 0.4, None, 2),
                   _figures(0, None, None, None)])
    assert both["scored"] == 40 and both["left"] == 3
    assert both["mean_absolute_error_minutes"] == 7.0
    assert abs(both["share_inside_range"] - 0.7) < 1e-9
    assert both["rolling_average_mean_absolute_error_minutes"] == 12.0
    assert pooled([])["mean_absolute_error_minutes"] is None


def test_the_table_puts_each_clinics_live_figures_next_to_the_backtests() -> None:
    backtest = (Score(samples=10, visits=4, covered_samples=8, estimator_error_minutes=50.0,
                      baseline_error_minutes=100.0,
                      clinics={"north": Score(samples=10, visits=4, covered_samples=8,
                                              estimator_error_minutes=50.0,
                                              baseline_error_minutes=100.0)}))
    live = {"north": {**_figures(20, 6.0, 0.75, 12.0), "by_channel": {
                "kiosk": _figures(5, 4.0, 1.0, 8.0), "tv": _figures(15, 6.6, 0.6, 13.0)}},
            "south": {**_figures(0, None, None, None), "by_channel": {}}}
    rows = comparison_rows(live, backtest)
    assert rows[0][0] == "clinic" and [r[0] for r in rows[1:]] == ["north", "south", "all"]
    assert rows[1] == ["north", "20", "6.0", "75%", "12.0", "0.50", "10 (4)", "5.0", "80%",
                       "10.0", "0.50"]
    assert rows[2] == ["south", "0", "-", "-", "-", "-", "0 (0)", "-", "-", "-", "-"]
    assert rows[3][1:6] == ["20", "6.0", "75%", "12.0", "0.50"]
    channels = channel_rows(live)
    assert channels[1:] == [["kiosk", "5", "4.0", "100%", "8.0", "0.50"],
                            ["tv", "15", "6.6", "60%", "13.0", "0.51"]]
    text = markdown(live, backtest, day=DAY, notes=["speed 40"])
    assert "2026-03-02" in text and "- speed 40" in text
    assert "| north | 20 | 6.0 | 75% |" in text
