"""A walk-in names its provider: the desk checks the clinic knows them (configured,
imported, scheduled). A provider known a moment ago is taken as known without asking
Redis again (PROVIDERS_KEPT of clinic time); a provider it did not know is always asked
for afresh, so one imported since is accepted at once and a stranger is always refused."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import timedelta
from typing import Any, cast

import pytest

from services.checkin.desk import PROVIDERS_KEPT, CheckinDesk, DeskConfig, WalkIn
from shared import events as ev
from shared.clinics import ClinicDirectory
from shared.errors import NotFound
from tests.fakes import FakeClock


class ProviderStore:
    """The few store calls a walk-in makes; counts the reads of the known providers."""

    def __init__(self) -> None:
        self.scheduled = {"dr-lee"}
        self.provider_reads = 0
        self.tickets = 0

    async def names(self, _clinic: str) -> tuple[dict[str, str], dict[str, str]]:
        self.provider_reads += 1
        return {}, {}

    async def scheduled_providers(self, _clinic: str) -> set[str]:
        return set(self.scheduled)

    async def open_visit(self, view: Any, *, claim: Any = None) -> Any:
        self.tickets += 1
        return replace(view, ticket_code=f"A-{self.tickets}")


async def published(events: Sequence[ev.Event]) -> list[BaseException | None]:
    return [None] * len(events)


def walk_in(provider_id: str) -> WalkIn:
    return WalkIn(provider_id=provider_id, visit_type="follow_up", priority="routine",
                  patient_ref=None)


async def test_a_known_provider_is_asked_for_once_in_a_while_and_a_stranger_every_time() -> None:
    store = ProviderStore()
    clock = FakeClock()
    desk = CheckinDesk(cast(Any, store), published, DeskConfig(
        clinics=ClinicDirectory.parse(None), late_after=timedelta(minutes=10),
        no_show_after=timedelta(minutes=30), identity_secret=b"s" * 32))

    for _ in range(5):
        await desk.arrive_walk_in("north", walk_in("dr-lee"), channel="front_desk",
                                  now=clock.now())
        clock.advance(seconds=0.5)
    assert store.provider_reads == 1 and store.tickets == 5

    for _ in range(2):  # not known: asked again each time, refused, no ticket taken
        with pytest.raises(NotFound, match="dr-new"):
            await desk.arrive_walk_in("north", walk_in("dr-new"), channel="front_desk",
                                      now=clock.now())
    assert store.provider_reads == 3 and store.tickets == 5

    store.scheduled.add("dr-new")  # imported since: accepted at once
    await desk.arrive_walk_in("north", walk_in("dr-new"), channel="front_desk",
                              now=clock.now())
    assert store.provider_reads == 4 and store.tickets == 6

    clock.advance(seconds=PROVIDERS_KEPT.total_seconds())  # kept no longer: asked again
    await desk.arrive_walk_in("north", walk_in("dr-lee"), channel="front_desk",
                              now=clock.now())
    assert store.provider_reads == 5
