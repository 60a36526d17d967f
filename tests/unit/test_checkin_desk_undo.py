"""A scheduled arrival whose event cannot be published leaves nothing behind: the visit
and its ticket are forgotten and the appointment's claim released, whatever fails on the
way (building the event, publishing it, forgetting the visit, the one-step store call
itself); a claim another visit holds is never released by the refused one."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import timedelta
from typing import Any, cast

import pytest

from services.checkin.desk import CheckinDesk, DeskConfig
from services.checkin.domain import Appointment, AppointmentState
from shared import events as ev
from shared.clinics import ClinicDirectory
from shared.errors import Conflict, Unavailable
from tests.fakes import FakeClock

NOW = FakeClock().now()


class UndoStore:
    """The store calls of a scheduled arrival, each able to fail; records the undoing."""

    def __init__(self, *, opened: str | None = None, open_fails: bool = False,
                 forget_fails: bool = False) -> None:
        self.opened, self.open_fails, self.forget_fails = opened, open_fails, forget_fails
        self.released: list[tuple[str, str, str]] = []
        self.forgotten: list[str] = []
        self.dropped: list[str] = []

    async def open_visit(self, view: Any, *, claim: Any = None) -> Any:
        if self.open_fails:
            raise ConnectionError("Redis went away mid-script")
        return self.opened if self.opened is not None else replace(view, ticket_code="A-1")

    async def forget_visit(self, view: Any) -> None:
        self.forgotten.append(view.visit_id)
        if self.forget_fails:
            raise ConnectionError("Redis went away")

    async def release_arrival(self, clinic: str, appointment_id: str, visit_id: str) -> None:
        self.released.append((clinic, appointment_id, visit_id))

    async def drop_pending(self, _clinic: str, ids: Sequence[str]) -> None:
        self.dropped.extend(ids)


def desk_with(store: UndoStore, *, kafka_up: bool) -> CheckinDesk:
    async def publish(events: Sequence[ev.Event]) -> list[BaseException | None]:
        return [None if kafka_up else RuntimeError("no broker")] * len(events)

    return CheckinDesk(cast(Any, store), publish, DeskConfig(
        clinics=ClinicDirectory.parse(None), late_after=timedelta(minutes=10),
        no_show_after=timedelta(minutes=30), identity_secret=b"s" * 32))


STATE = AppointmentState(Appointment(
    appointment_id="apt-1", patient_ref="p-1", provider_id="dr-lee", visit_type="follow_up",
    scheduled_at=NOW + timedelta(minutes=10)))


async def arrive(desk: CheckinDesk) -> Any:
    return await desk.arrive_scheduled("north", "apt-1", channel="front_desk", now=NOW,
                                       ids=("v-1", "e-1"), state=STATE)


async def test_published_the_claim_stays_and_nothing_is_undone() -> None:
    store = UndoStore()
    result = await arrive(desk_with(store, kafka_up=True))
    assert (result.visit_id, result.ticket_code) == ("v-1", "A-1")
    # the no-show list is left to the projection and the sweep: no round trip here
    assert (store.released, store.forgotten, store.dropped) == ([], [], [])


async def test_kafka_down_forgets_the_visit_and_releases_the_claim() -> None:
    store = UndoStore()
    with pytest.raises(Unavailable):
        await arrive(desk_with(store, kafka_up=False))
    assert store.forgotten == ["v-1"] and store.released == [("north", "apt-1", "v-1")]
    assert store.dropped == []


async def test_the_claim_is_released_even_when_forgetting_the_visit_fails() -> None:
    store = UndoStore(forget_fails=True)
    with pytest.raises(ConnectionError):
        await arrive(desk_with(store, kafka_up=False))
    assert store.released == [("north", "apt-1", "v-1")]


async def test_an_event_that_cannot_be_built_is_undone_like_one_not_published(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise ValueError("not a valid event")

    monkeypatch.setattr(ev, "make_event", refuse)
    store = UndoStore()
    with pytest.raises(ValueError):
        await arrive(desk_with(store, kafka_up=True))
    assert store.forgotten == ["v-1"] and store.released == [("north", "apt-1", "v-1")]


async def test_a_store_call_failing_half_way_releases_this_visits_claim() -> None:
    store = UndoStore(open_fails=True)
    with pytest.raises(ConnectionError):
        await arrive(desk_with(store, kafka_up=True))
    assert store.released == [("north", "apt-1", "v-1")] and store.forgotten == []


async def test_another_visits_claim_is_refused_and_never_released() -> None:
    store = UndoStore(opened="v-0")
    with pytest.raises(Conflict, match="already checked in \\(visit v-0\\)"):
        await arrive(desk_with(store, kafka_up=True))
    assert (store.released, store.forgotten, store.dropped) == ([], [], [])
