"""``GET /clinics/{c}/satisfaction``: waits and satisfaction side by side, for a clinic's
ISO week or range of days (manager only)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime, time, timedelta
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Query

from services.notifications.api import ClinicId
from services.notifications.satisfaction import report
from services.notifications.satisfaction_store import SatisfactionStore
from services.notifications.schemas import COMMON_ERRORS, answer
from shared.auth import Principal, require_role
from shared.clock import Clock
from shared.errors import Rejected

MANAGER = require_role("manager")
LONGEST_DAYS = 93
_BAND = {"visits": 12, "ratings": 7, "mean_rating": 3.43, "complaints": 1,
         "complaints_by_category": {"wait": 1}}
EXAMPLE = {
    "clinic_id": "north", "from": "2026-03-02", "to": "2026-03-08", **_BAND,
    "by_wait_band": {"0-10": _BAND}, "by_told_band": {"longer_20_plus": _BAND},
    "by_provider": {"p1": {**_BAND, "by_told_band": {"within": _BAND}}},
    "finding": "Patients who waited 20+ minutes longer than told rate 1.3 points lower "
               "(2.40 from 5 ratings) than those who waited about as told or less (3.70 "
               "from 30).",
}


def week_range(week: str) -> tuple[date, date]:
    """``2026-W10`` -> its Monday and Sunday."""
    try:
        year, number = week.split("-W")
        monday = date.fromisocalendar(int(year), int(number), 1)
    except ValueError:
        raise Rejected(f"week {week!r} is not an ISO week like 2026-W10",
                       code="bad_week") from None
    return monday, monday + timedelta(days=6)


def make_satisfaction_router(store: SatisfactionStore, clock: Clock,
                             zone: Callable[[str], ZoneInfo]) -> APIRouter:
    router = APIRouter(responses=COMMON_ERRORS)

    @router.get(
        "/clinics/{clinic_id}/satisfaction", tags=["accuracy"],
        summary="Waits and satisfaction side by side: ratings and complaints by wait band "
        "and by told-versus-actual error, per provider",
        description="The visits roomed in the clinic's ISO week (week=2026-W10; default "
        "this week) or days from..to (inclusive, the clinic's clock, at most 93 days): "
        "visits, ratings and their mean, complaints by category; by the wait actually "
        "waited (arrival to rooming: 0-10, 10-20, 20-30, 30+ minutes), by the error "
        "against what the patient was first told (longer_20_plus, within, "
        "shorter_20_plus, not_told), per provider; and the finding in a sentence.",
        responses=answer(200, EXAMPLE, "the report", refusals={
            422: ("a bad week, or a range reversed or longer than 93 days",
                  "week '2026-10' is not an ISO week like 2026-W10", "bad_week")}))
    async def satisfaction(
            clinic_id: ClinicId,
            week: Annotated[str | None, Query(
                description="the clinic's ISO week (default: this week)",
                examples=["2026-W10"])] = None,
            start: Annotated[date | None, Query(
                alias="from", description="first day (the clinic's), instead of a week",
                examples=["2026-03-02"])] = None,
            end: Annotated[date | None, Query(
                alias="to", description="last day, inclusive", examples=["2026-03-08"])
            ] = None,
            principal: Principal = Depends(MANAGER)) -> dict[str, Any]:
        principal.require_clinic(clinic_id)
        tz = zone(clinic_id)
        if start is not None or end is not None:
            today = clock.now().astimezone(tz).date()
            first, last = start or end or today, end or start or today
        else:
            first, last = week_range(week or
                                     "{}-W{:02d}".format(*clock.now().astimezone(tz)
                                                         .isocalendar()[:2]))
        if last < first or (last - first).days >= LONGEST_DAYS:
            raise Rejected(f"the range {first.isoformat()} to {last.isoformat()} must run "
                           f"forward and span at most {LONGEST_DAYS} days",
                           code="bad_range")
        found = await store.rows(clinic_id, datetime.combine(first, time(), tz),
                                 datetime.combine(last + timedelta(days=1), time(), tz))
        return {"clinic_id": clinic_id, "from": first.isoformat(), "to": last.isoformat(),
                **report(found)}

    return router
