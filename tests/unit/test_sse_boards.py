"""Flow's live boards at scale (services/flow/api.py): a board is rendered once per role
however many screens watch it, and screens reconnecting together read each clinic's
board from Redis once, a few clinics at a time."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import orjson

from services.flow.api import BoardViews, SnapshotReads, view_for

BOARD = {"clinic_id": "north", "as_of": "2026-03-02T14:00:00+00:00",
         "waiting": [{"visit_id": "v-1", "ticket_code": "A-1", "provider_id": "dr-lee",
                      "position": 1, "wait_minutes": 5, "low": 2, "high": 9,
                      "patient_ref": "p-1"}],
         "in_rooms": [], "rooms": [], "providers": [], "clinic_delay": None,
         "operations": {"bottleneck": None}}


def test_a_board_is_shown_to_each_role_as_that_role_may_see_it_and_rendered_once() -> None:
    views = BoardViews()
    raw = orjson.dumps(BOARD)
    screen = views.render("north", "screen", raw, frame=False)
    assert orjson.loads(screen) == view_for(BOARD, "screen")
    assert b"patient_ref" not in screen and b"operations" not in screen
    assert orjson.loads(views.render("north", "nurse", raw, frame=False)) == view_for(
        BOARD, "nurse")
    assert views.render("north", "manager", raw, frame=False) == raw
    frame = views.render("north", "screen", raw, frame=True)
    assert frame == b"event: board\ndata: " + screen + b"\n\n"
    # the same board again (equal bytes, another object): the same rendering
    assert views.render("north", "screen", bytes(bytearray(raw)), frame=False) is screen
    changed = orjson.dumps({**BOARD, "as_of": "2026-03-02T14:01:00+00:00"})
    assert b"14:01" in views.render("north", "screen", changed, frame=False)


def test_only_the_last_renderings_are_kept() -> None:
    views = BoardViews(size=2)
    for clinic in ("north", "south", "west"):
        views.render(clinic, "screen", orjson.dumps({**BOARD, "clinic_id": clinic}),
                     frame=False)
    assert len(views._kept) == 2


class SlowStore:
    """A board store whose reads wait until the test lets them finish."""

    def __init__(self) -> None:
        self.reads: list[str] = []
        self.at_once = 0
        self.most_at_once = 0
        self.go = asyncio.Event()

    async def board(self, clinic_id: str) -> bytes | None:
        self.reads.append(clinic_id)
        self.at_once += 1
        self.most_at_once = max(self.most_at_once, self.at_once)
        await self.go.wait()
        self.at_once -= 1
        return b"board of " + clinic_id.encode()


async def test_screens_reconnecting_together_read_each_board_once_a_few_at_a_time() -> None:
    store = SlowStore()
    reads = SnapshotReads(cast(Any, store), at_once=3)
    clinics = [f"c{n}" for n in range(10)]
    streams = [asyncio.create_task(reads.read(clinic)) for clinic in clinics for _ in range(20)]
    await asyncio.sleep(0.01)
    assert store.most_at_once == 3
    store.go.set()
    answers = await asyncio.gather(*streams)
    assert sorted(store.reads) == sorted(clinics)  # 200 streams, one read per clinic
    assert answers[0] == b"board of c0" and answers[-1] == b"board of c9"
    assert reads.reading == {}
    await reads.read("c0")  # a later stream reads the board again
    assert store.reads.count("c0") == 2


async def test_a_stream_gone_while_waiting_leaves_the_read_to_the_others() -> None:
    store = SlowStore()
    reads = SnapshotReads(cast(Any, store))
    first = asyncio.create_task(reads.read("north"))
    second = asyncio.create_task(reads.read("north"))
    await asyncio.sleep(0.01)
    first.cancel()
    store.go.set()
    assert await second == b"board of north" and store.reads == ["north"]


def test_views_on_the_clinic_clock_follow_every_new_board_and_a_changed_zone() -> None:
    from zoneinfo import ZoneInfo

    from services.flow.api import on_clinic_clock

    zones = {"north": ZoneInfo("America/New_York")}
    views = BoardViews(zone_of=lambda clinic_id: zones[clinic_id])
    first = {**BOARD, "in_rooms": [{"visit_id": "v-2", "ticket_code": "A-2",
                                    "provider_id": "dr-lee", "status": "roomed",
                                    "room_id": "r1", "since": "2026-03-02T13:59:00+00:00"}]}
    boards = [first, {**first, "as_of": "2026-03-02T14:01:00+00:00"},
              {**first, "waiting": [], "as_of": "2026-03-02T14:02:30.250000+00:00"}]
    for board in boards:
        raw = orjson.dumps(board)
        local = orjson.loads(on_clinic_clock(raw, zones["north"]))
        for role in ("screen", "nurse"):
            assert orjson.loads(views.render("north", role, raw, frame=False)) == view_for(
                local, role)
    assert orjson.loads(views.render("north", "screen", raw, frame=False))["as_of"] == (
        "2026-03-02T09:02:30.250000-05:00")
    # the clinic moves to another zone: its times are converted afresh, not remembered
    zones["north"] = ZoneInfo("Europe/Paris")
    moved = orjson.dumps({**boards[-1], "as_of": "2026-03-02T14:03:00+00:00"})
    shown = orjson.loads(views.render("north", "nurse", moved, frame=False))
    assert shown["as_of"] == "2026-03-02T15:03:00+01:00"
    assert shown["in_rooms"][0]["since"] == "2026-03-02T14:59:00+01:00"
