"""The checkout desk's commands over a ledger held in memory: what a checkout publishes
and in which order, a visit busy with another money command, entries posted but not yet
projected. Time is a FakeClock (entries' stamps) and a counter (the waits): nothing here
waits for a wall clock."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from services.billing.desk import Desk
from services.billing.domain.accounts import Posted
from services.billing.domain.money import stable_id
from services.billing.fees import EXAMPLE, FeeScheduleFile
from services.billing.projection import posted_of
from shared import events as ev
from shared.errors import Conflict, status_of
from tests.fakes import FakeClock

LEDGER, FLOOR = "ledger", "floor"


class HeldLedger:
    """The desk's side of Redis, in memory: what is published on the ledger is projected
    at once while ``projecting``; the visit's lock is held by another desk while ``busy``."""

    def __init__(self) -> None:
        self.posted: dict[str, Posted] = {}
        self.published: list[tuple[str, ev.Event]] = []
        self.projecting = True
        self.busy = False
        self.locks: dict[tuple[str, str], str] = {}

    async def publish(self, value: bytes, topic: str, _key: bytes | None) -> None:
        event = ev.decode(value)
        self.published.append((topic, event))
        posted = posted_of(event, len(self.published))
        if topic == LEDGER and self.projecting and posted is not None:
            self.posted.setdefault(posted.entry_id, posted)

    async def lock_visit(self, clinic_id: str, visit_id: str, token: str) -> bool:
        if self.busy:
            return False
        self.locks[(clinic_id, visit_id)] = token
        return True

    async def unlock_visit(self, clinic_id: str, visit_id: str, token: str) -> None:
        if self.locks.get((clinic_id, visit_id)) == token:
            del self.locks[(clinic_id, visit_id)]

    async def visit_entries(self, _clinic_id: str, visit_id: str) -> list[Posted]:
        return sorted((p for p in self.posted.values() if p.visit_id == visit_id),
                      key=lambda p: p.position)

    async def entries(self, _clinic_id: str, entry_ids: Sequence[str]) -> list[Posted]:
        return [self.posted[i] for i in entry_ids if i in self.posted]

    async def arrival_ref(self, _clinic_id: str, _visit_id: str) -> str | None:
        return "p-901"


class Seconds:
    """A monotonic clock that moves one second each time it is read."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def desk_over(ledger: HeldLedger, clock: FakeClock) -> Desk:
    desk = Desk(ledger, FeeScheduleFile(EXAMPLE), ledger.publish,  # type: ignore[arg-type]
                ledger_topic=LEDGER, floor_topic=FLOOR, timezone_of=lambda _c: "UTC",
                wait_seconds=5, clock=clock, monotonic=Seconds())
    desk.lock_poll_seconds = desk.projection_poll_seconds = 0.0
    return desk


async def test_a_checkout_posts_charge_and_share_then_ends_the_visit_on_the_floor() -> None:
    ledger, clock = HeldLedger(), FakeClock()
    result = await desk_over(ledger, clock).checkout("north", "v1", cpt_codes=["99213"])
    assert result.outcome == "priced" and result.entries == ("chg-v1", "shr-v1")
    assert [(topic, e.event_type) for topic, e in ledger.published] == [
        (LEDGER, "charge.posted"), (LEDGER, "patient_share.posted"),
        (FLOOR, "patient.checked_out")]
    assert {e.occurred_at for _topic, e in ledger.published} == {clock.now()}
    floor_event = ledger.published[-1][1]
    assert floor_event.envelope.event_id == result.checkout_event_id == stable_id("out", "v1")
    assert result.account.charges_cents == 13000 and result.account.patient_ref == "p-901"
    assert ledger.locks == {}  # released


async def test_a_visit_busy_with_another_money_command_is_refused_after_the_wait() -> None:
    ledger = HeldLedger()
    ledger.busy = True
    with pytest.raises(Conflict, match="busy with another money command") as busy:
        await desk_over(ledger, FakeClock()).checkout("north", "v1", cpt_codes=["99213"])
    assert status_of(busy.value) == 409
    assert ledger.published == []


async def test_entries_posted_but_not_projected_in_time_are_answered_from_what_is_known(
) -> None:
    ledger = HeldLedger()
    ledger.projecting = False  # the projection is far behind (another instance, a rebuild)
    result = await desk_over(ledger, FakeClock()).checkout("north", "v1", cpt_codes=["99213"])
    assert result.outcome == "priced" and result.account.charges_cents == 0
    assert [topic for topic, _e in ledger.published] == [LEDGER, LEDGER, FLOOR]
