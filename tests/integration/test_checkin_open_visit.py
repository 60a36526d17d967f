"""Checkin's one-step arrival on a real Redis (``CheckinStore.open_visit``): the ticket code
the script makes is ``domain.ticket_code``'s for every number, and an appointment's
arrival is claimed once, in the same step as the visit is saved."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from redis.asyncio import Redis

from services.checkin.domain import (
    TICKET_LETTERS,
    TICKETS_PER_LETTER,
    Appointment,
    VisitView,
    ticket_code,
)
from services.checkin.store import CheckinStore

# keys expire a few days after their day: the day is today's (a fixed date would expire)
AT = datetime.now(UTC).replace(microsecond=0)
DAY = AT.date()


@pytest.fixture
async def store(redis_url: str, topic_prefix: str) -> AsyncIterator[CheckinStore]:
    redis = Redis.from_url(redis_url)
    yield CheckinStore(redis, topic_prefix.rstrip("."))
    await redis.aclose()


def new_visit(visit_id: str, appointment_id: str | None = None) -> VisitView:
    return VisitView(clinic_id="north", visit_id=visit_id, ticket_code="", day=DAY,
                     status="waiting", status_at=AT, appointment_id=appointment_id)


async def test_the_script_hands_out_the_codes_ticket_code_names(store: CheckinStore) -> None:
    wraps = TICKETS_PER_LETTER * len(TICKET_LETTERS)
    numbers = (1, 2, 10, TICKETS_PER_LETTER, TICKETS_PER_LETTER + 1,
               2 * TICKETS_PER_LETTER + 37, wraps, wraps + 1)
    for number in numbers:
        await store.redis.set(store._seq("north", DAY), number - 1)
        opened = await store.open_visit(new_visit(f"v-{number}"))
        assert isinstance(opened, VisitView)
        assert opened.ticket_code == ticket_code(number), number
        # stored with it: the visit, its ticket and its place in the day's index
        assert await store.visit("north", f"v-{number}") == opened
        assert await store.visit_for_ticket("north", [DAY], opened.ticket_code) == opened
    listed = {view.visit_id for view in await store.day_visits("north", DAY)}
    assert listed == {f"v-{number}" for number in numbers}


async def test_an_appointment_is_claimed_once_and_a_second_visit_saves_nothing(
    store: CheckinStore,
) -> None:
    appointment = Appointment(appointment_id="apt-1", patient_ref="p-1", provider_id="dr-a",
                              visit_type="follow_up", scheduled_at=AT + timedelta(minutes=5))
    first = await store.open_visit(new_visit("v-1", "apt-1"), claim=appointment)
    assert isinstance(first, VisitView) and first.ticket_code == "A-1"
    assert await store.redis.get(store._arrived("north", "apt-1")) == b"v-1"

    # another visit for the same appointment: the holder's id, no ticket, no visit
    assert await store.open_visit(new_visit("v-2", "apt-1"), claim=appointment) == "v-1"
    assert await store.visit("north", "v-2") is None
    assert await store.redis.get(store._seq("north", DAY)) == b"1"

    # the same visit again (a resent EHR message whose first try died after its claim)
    again = await store.open_visit(new_visit("v-1", "apt-1"), claim=appointment)
    assert isinstance(again, VisitView) and again.ticket_code == "A-2"

    # released (its event could not be published): the next visit takes the appointment
    await store.release_arrival("north", "apt-1", "v-1")
    third = await store.open_visit(new_visit("v-3", "apt-1"), claim=appointment)
    assert isinstance(third, VisitView)
    assert await store.redis.get(store._arrived("north", "apt-1")) == b"v-3"
