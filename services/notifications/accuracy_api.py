"""``GET /clinics/{c}/accuracy?date=``: how right the waits told at a clinic were on one of
its days (manager only), for the operations screen."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import date, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from services.notifications.api import ClinicId
from services.notifications.schemas import COMMON_ERRORS, answer
from shared.auth import Principal, require_role
from shared.errors import Rejected

manager = require_role("manager")
DAYS_BACK = 400  # as long as the figures are kept (accuracy_store.DAY_SECONDS)


class Figures(BaseModel):
    """Told records scored, and how right they were."""

    scored: int = Field(description="told records whose visit was roomed after they were "
                        "told")
    mean_absolute_error_minutes: float | None = Field(
        description="mean |actual wait from the told instant - point told| (null: none "
        "scored)")
    share_inside_range: float | None = Field(
        description="share whose actual wait fell inside the range told (0-1)")
    rolling_average_mean_absolute_error_minutes: float | None = Field(
        description="the same error for the rolling average of recent waits, on the same "
        "told records (the reference to beat)")
    left: int = Field(description="told records whose patient left before being roomed "
                      "(not scored)")


class AccuracyAnswer(Figures):
    """A clinic day's figures, and the same by hour (clinic's clock), channel and
    provider ('-': first available or unknown)."""

    clinic_id: str
    date: date
    by_hour: dict[str, Figures]
    by_channel: dict[str, Figures]
    by_provider: dict[str, Figures]


_EXAMPLE_FIGURES = {"scored": 42, "mean_absolute_error_minutes": 6.8,
                    "share_inside_range": 0.76,
                    "rolling_average_mean_absolute_error_minutes": 11.2, "left": 2}
ACCURACY_EXAMPLE = {
    "clinic_id": "north", "date": "2026-03-02", **_EXAMPLE_FIGURES,
    "by_hour": {"09": _EXAMPLE_FIGURES}, "by_channel": {"kiosk": _EXAMPLE_FIGURES},
    "by_provider": {"p1": _EXAMPLE_FIGURES},
}


def make_accuracy_router(figures: Callable[[str, date], Awaitable[dict[str, Any]]],
                         today: Callable[[str], date]) -> APIRouter:
    """``figures(clinic, day)`` reads a day's figures; ``today(clinic)`` is the clinic's
    day now."""
    router = APIRouter(responses=COMMON_ERRORS)

    @router.get(
        "/clinics/{clinic_id}/accuracy", tags=["accuracy"], response_model=AccuracyAnswer,
        summary="How right the waits told at a clinic were, on one of its days",
        description="Every wait told to a patient (kiosk, status lookup, waiting-room TV, "
        "SMS/e-mail delay warnings, 'please come back now') scored once when the visit "
        "was roomed: mean absolute error, share inside the range told, and the rolling "
        "average's error on the same records; by hour, channel and provider. The day is "
        "the clinic's (its zone), today by default.",
        responses=answer(200, ACCURACY_EXAMPLE, "the day's figures", refusals={
            422: ("the date is more than 400 days before the clinic's today or after it",
                  "date 2020-01-01 is out of range: figures are kept from 2025-01-26 to "
                  "2026-03-02 (clinic north's today)", "date_out_of_range")}))
    async def accuracy(clinic_id: ClinicId,
                       day: Annotated[date | None, Query(
                           alias="date", description="the clinic's day (default today)",
                           examples=["2026-03-02"])] = None,
                       principal: Principal = Depends(manager)) -> AccuracyAnswer:
        principal.require_clinic(clinic_id)
        now = today(clinic_id)
        wanted = day or now
        earliest = now - timedelta(days=DAYS_BACK)
        if not earliest <= wanted <= now:
            raise Rejected(f"date {wanted.isoformat()} is out of range: figures are kept "
                           f"from {earliest.isoformat()} to {now.isoformat()} (clinic "
                           f"{clinic_id}'s today)", code="date_out_of_range")
        found = await figures(clinic_id, wanted)
        return AccuracyAnswer(clinic_id=clinic_id, date=wanted, **found)

    return router

