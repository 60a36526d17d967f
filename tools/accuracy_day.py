"""``clinicflow accuracy-day``: the live accuracy of one played day of ``make up`` next to
the backtest's figures for the same simulated day.

Live: each demo clinic's ``GET /clinics/{c}/accuracy?date=`` (notifications): every wait
told to a patient (kiosk, desk, status lookup, TV, SMS/e-mail, "you're next") scored
once when the visit was roomed: mean absolute error of the point told, share whose
actual wait fell inside the range told, and the rolling average's error on the same
told records. Backtest: the same simulated days (each demo clinic's scenario and seed
on that date, on its own clock, not slid: ``tools.live_demo.clinic_day`` with ``day``)
replayed offline through the estimator and scored as ``clinicflow backtest`` scores
(``tools.backtest.score``: a sample at arrival and every 5 minutes while waiting).

``clinicflow up --day --speed S`` plays such a day and calls this at its end; run it
by hand against a stack still up with ``clinicflow accuracy-day --date D``.

Pure except ``read_live`` and ``run``: ``comparison_rows``, ``channel_rows`` and
``markdown`` take the figures.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any

import httpx

from shared.clinics import ClinicDirectory
from tools.backtest import Score, format_markdown, score
from tools.live_demo import DEMO_CLINICS, DemoClinic, clinic_day, clinics_setting

Figures = Mapping[str, Any]  # one "Figures" object of the accuracy answer
MANAGER = {"Authorization": "Bearer dev-manager"}


def backtest_day(day: date, clinics: tuple[DemoClinic, ...] = DEMO_CLINICS,
                 directory: ClinicDirectory | None = None) -> Score:
    """The backtest's score of the demo clinics' simulated ``day`` (per clinic in
    ``Score.clinics``): the very days ``clinicflow up --day`` plays."""
    from tools.replay import replay_events

    directory = directory or ClinicDirectory.parse(clinics_setting(clinics))
    total = Score()
    for clinic in clinics:
        planned = clinic_day(clinic, directory.zone(clinic.clinic_id),
                             datetime.combine(day, time(0), UTC), day)
        estimates = list(replay_events(dict(r) for r in planned.records))
        total = total + score(planned.records, estimates)
    return total


def read_live(notifications_url: str, day: date, clinic_ids: Iterable[str],
              headers: Mapping[str, str] = MANAGER) -> dict[str, dict[str, Any]]:
    """Each clinic's accuracy answer for ``day`` (raises on a refusal)."""
    live: dict[str, dict[str, Any]] = {}
    with httpx.Client(base_url=notifications_url, timeout=30) as client:
        for clinic_id in clinic_ids:
            answer = client.get(f"/clinics/{clinic_id}/accuracy",
                                params={"date": day.isoformat()}, headers=dict(headers))
            answer.raise_for_status()
            live[clinic_id] = answer.json()
    return live


def pooled(figures: Iterable[Figures]) -> dict[str, Any]:
    """Several clinics' (or channels') figures as one: each mean weighted by how many
    told records it scored."""
    rows = list(figures)
    scored = sum(int(f.get("scored") or 0) for f in rows)

    def mean(key: str) -> float | None:
        weighed = [(f[key], int(f.get("scored") or 0)) for f in rows
                   if f.get(key) is not None and f.get("scored")]
        weight = sum(n for _v, n in weighed)
        return sum(v * n for v, n in weighed) / weight if weight else None

    return {"scored": scored, "mean_absolute_error_minutes": mean("mean_absolute_error_minutes"),
            "share_inside_range": mean("share_inside_range"),
            "rolling_average_mean_absolute_error_minutes":
                mean("rolling_average_mean_absolute_error_minutes"),
            "left": sum(int(f.get("left") or 0) for f in rows)}


def _minutes(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def _ratio(error: float | None, reference: float | None) -> str:
    return "-" if error is None or not reference else f"{error / reference:.2f}"


COMPARISON_HEADER = [
    "clinic", "live: told, scored", "live MAE (min)", "live inside range",
    "live rolling-avg MAE", "live ratio", "backtest: samples (visits)", "backtest MAE (min)",
    "backtest inside range", "backtest rolling-avg MAE", "backtest ratio",
]


def comparison_rows(live: Mapping[str, Figures], backtest: Score) -> list[list[str]]:
    """One row per clinic and one for all of them: the live figures (told records
    scored at rooming; ratio = told MAE / rolling average's MAE on the same records)
    next to the backtest's (samples every 5 minutes of each wait)."""
    rows = [COMPARISON_HEADER]
    clinic_ids = sorted(set(live) | set(backtest.clinics))
    for clinic_id in [*clinic_ids, "all"]:
        told = pooled(live.values()) if clinic_id == "all" else live.get(clinic_id) or {}
        offline = backtest if clinic_id == "all" else backtest.clinics.get(clinic_id, Score())
        mae = told.get("mean_absolute_error_minutes")
        rolling = told.get("rolling_average_mean_absolute_error_minutes")
        rows.append([
            clinic_id, str(told.get("scored", 0)), _minutes(mae),
            _share(told.get("share_inside_range")), _minutes(rolling), _ratio(mae, rolling),
            f"{offline.samples} ({offline.visits})", _minutes(offline.estimator_mae),
            _share(offline.coverage), _minutes(offline.baseline_mae),
            "-" if offline.ratio is None else f"{offline.ratio:.2f}",
        ])
    return rows


def channel_rows(live: Mapping[str, Mapping[str, Any]]) -> list[list[str]]:
    """The live figures by channel, all clinics pooled."""
    channels: dict[str, list[Figures]] = {}
    for answer in live.values():
        for channel, figures in (answer.get("by_channel") or {}).items():
            channels.setdefault(channel, []).append(figures)
    rows = [["channel", "told, scored", "MAE (min)", "inside range", "rolling-avg MAE",
             "ratio"]]
    for channel in sorted(channels):
        f = pooled(channels[channel])
        mae = f["mean_absolute_error_minutes"]
        rolling = f["rolling_average_mean_absolute_error_minutes"]
        rows.append([channel, str(f["scored"]), _minutes(mae), _share(f["share_inside_range"]),
                     _minutes(rolling), _ratio(mae, rolling)])
    return rows


def markdown(live: Mapping[str, Mapping[str, Any]], backtest: Score, *, day: date,
             notes: Iterable[str] = ()) -> str:
    """The side-by-side table, the live figures by channel, and ``notes`` (the command,
    the speed, the load...), as markdown."""
    lines = [f"Live accuracy of {day.isoformat()} (each clinic's own date and clock) "
             "next to the backtest of the same simulated day.", ""]
    lines += [f"- {note}" for note in notes]
    lines += ["", format_markdown(comparison_rows(live, backtest)), "",
              "Live figures by channel (all clinics):", "",
              format_markdown(channel_rows(live)), ""]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    day = args.date
    directory = ClinicDirectory.parse(clinics_setting())
    live = read_live(args.notifications, day, [c.clinic_id for c in DEMO_CLINICS])
    text = markdown(live, backtest_day(day, directory=directory), day=day,
                    notes=args.note or ())
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


def add_cli(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "accuracy-day", help="the live accuracy of a played `make up` day next to the "
        "backtest of the same simulated day (markdown)")
    parser.add_argument("--date", type=date.fromisoformat, required=True,
                        help="the played day (clinicflow up --day says which)")
    parser.add_argument("--notifications", default="http://127.0.0.1:8003",
                        help="notifications' base URL (default http://127.0.0.1:8003)")
    parser.add_argument("--out", help="also write the markdown to this file")
    parser.add_argument("--note", action="append",
                        help="a line to put above the table (repeatable)")
    parser.set_defaults(func=run)
