"""The live-stream hub both flow (boards) and notifications (nurse alerts) use: its limits,
its fan-out when a client falls behind, and that every way a stream can end gives the
client's place back. No Redis: messages are handed to ``deliver`` as the listener would."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, cast

import pytest
from fastapi import HTTPException, Request
from prometheus_client import CollectorRegistry, Gauge
from starlette.requests import ClientDisconnect

from shared import sse as sse_module
from shared.sse import HEARTBEAT, RETRY, SseHub, WhenFull


def make_hub(*, max_total: int = 10, max_per_credential: int | None = 2, queue_size: int = 4,
             when_full: WhenFull = "keep_newest", heartbeat_seconds: float = 15.0) -> SseHub:
    registry = CollectorRegistry()
    return SseHub(cast(Any, None), name="test-hub", pattern="t:changes:*",
                  clinic_of_channel=lambda channel: channel.rsplit(":", 1)[1],
                  gauge=Gauge("clinicflow_test_streams", "open test streams",
                              registry=registry),
                  max_total=max_total, max_per_credential=max_per_credential,
                  queue_size=queue_size, when_full=when_full,
                  heartbeat_seconds=heartbeat_seconds)


def hub_tasks() -> set[asyncio.Task[Any]]:
    """Running tasks whose code is the hub's or this module's (the event loop may run
    other fixtures' tasks, e.g. a Kafka client's, which come and go by themselves)."""
    ours = {sse_module.__file__, __file__}
    return {task for task in asyncio.all_tasks()
            if getattr(task.get_coro(), "cr_code", None) is not None
            and task.get_coro().cr_code.co_filename in ours}  # type: ignore[union-attr]


def gauge_of(hub: SseHub) -> float:
    return float(hub.gauge._value.get())  # type: ignore[attr-defined]


def refusal(action: Callable[[], object]) -> HTTPException:
    with pytest.raises(HTTPException) as refused:
        action()
    return refused.value


# ------------------------------------------------------------------- limits


def test_a_credential_past_its_share_gets_429_and_other_credentials_still_get_in() -> None:
    hub = make_hub(max_per_credential=2)
    hub.open("north", "lobby tv")
    hub.open("south", "lobby tv")  # the share counts every clinic the credential watches
    refused = refusal(lambda: hub.open("north", "lobby tv"))
    assert refused.status_code == 429 and "'lobby tv'" in refused.detail
    hub.open("north", "nurse station")
    assert hub.total == 3 and gauge_of(hub) == 3


def test_a_full_process_answers_503_with_retry_after_whoever_asks() -> None:
    hub = make_hub(max_total=3, max_per_credential=None)
    for _ in range(3):
        hub.open("north", "station")  # no share per credential: only the total limits
    refused = refusal(lambda: hub.open("north", "someone new"))
    assert refused.status_code == 503 and refused.headers == {"Retry-After": "5"}


def test_a_closed_stream_gives_its_place_back_once_however_often_it_is_closed() -> None:
    hub = make_hub(max_per_credential=1)
    first = hub.open("north", "lobby tv")
    hub.close(first)
    hub.close(first)  # the response and the generator both close it
    assert (hub.total, hub.per_credential, hub.subscribers, gauge_of(hub)) == (0, {}, {}, 0)
    second = hub.open("north", "lobby tv")
    assert hub.subscribers == {"north": {second}} and hub.per_credential == {"lobby tv": 1}


# ------------------------------------------------------------------ fan-out


def test_boards_reach_only_the_screens_of_their_clinic() -> None:
    hub = make_hub()
    north, south = hub.open("north", "a"), hub.open("south", "b")
    hub.deliver("north", b"board-n")
    hub.deliver("west", b"nobody watches west")
    assert north.queue.get_nowait() == b"board-n"
    assert south.queue.empty() and "west" not in hub.subscribers


def test_a_slow_screen_skips_to_the_newest_boards() -> None:
    hub = make_hub(queue_size=2, when_full="keep_newest")
    screen = hub.open("north", "lobby tv")
    for n in range(5):
        hub.deliver("north", b"board-%d" % n)
    assert [screen.queue.get_nowait() for _ in range(2)] == [b"board-3", b"board-4"]


def test_a_stalled_nurse_station_is_told_to_start_again_rather_than_miss_an_alert() -> None:
    hub = make_hub(queue_size=3, when_full="resync")
    station = hub.open("north", "station")
    for n in range(4):
        hub.deliver("north", b"change-%d" % n)
    assert station.queue.get_nowait() is None and station.queue.empty()


# ------------------------------------------------------------------ streams


class FakeClient:
    """The ASGI side of one client (as uvicorn speaks it, spec 2.3): what it received,
    and a switch to make it vanish."""

    def __init__(self, spec_version: str = "2.3") -> None:
        self.gone = asyncio.Event()
        self.chunks: list[bytes] = []
        self.scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": spec_version},
                      "method": "GET", "path": "/stream", "headers": [], "query_string": b""}

    async def receive(self) -> dict[str, Any]:
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        if self.gone.is_set():
            raise OSError("connection reset by peer")  # as a spec 2.4 server may say
        if message["type"] == "http.response.body":
            self.chunks.append(message["body"])

    def request(self) -> Request:
        return Request(self.scope, self.receive)  # type: ignore[arg-type]

    async def serve(self, hub: SseHub, first: Callable[[], Awaitable[bytes | None]]) -> None:
        response = hub.stream("north", "station", self.request(), first=first,
                              render=lambda raw: b"data: " + raw + b"\n\n")
        await response(self.scope, self.receive, self.send)  # type: ignore[arg-type]


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while not condition():
            await asyncio.sleep(0.01)


async def snapshot() -> bytes:
    return b"event: board\ndata: {}\n\n"


async def test_a_stream_sends_the_snapshot_then_changes_then_heartbeats_and_frees_its_place(
) -> None:
    hub = make_hub(heartbeat_seconds=0.05)
    tasks_before = hub_tasks()
    client = FakeClient()
    serving = asyncio.create_task(client.serve(hub, snapshot))
    await until(lambda: len(client.chunks) >= 2)
    hub.deliver("north", b"change")
    await until(lambda: HEARTBEAT in client.chunks)
    assert client.chunks[:3] == [RETRY, await snapshot(), b"data: change\n\n"]
    assert hub.total == 1
    client.gone.set()
    await asyncio.wait_for(serving, 10)
    assert (hub.total, hub.subscribers, gauge_of(hub)) == (0, {}, 0)
    assert hub_tasks() == tasks_before  # no task of the hub's or the stream's left


async def test_a_client_gone_before_its_stream_began_still_gives_its_place_back() -> None:
    hub = make_hub()
    client = FakeClient(spec_version="2.4")
    client.gone.set()  # reset before the headers could be written
    with pytest.raises(ClientDisconnect):
        await asyncio.wait_for(client.serve(hub, snapshot), 10)
    # the body was never started, so its own clean-up never ran: the response's did
    assert client.chunks == []
    assert (hub.total, hub.per_credential, gauge_of(hub)) == (0, {}, 0)


async def test_a_station_told_to_resync_has_its_stream_ended_and_its_place_freed() -> None:
    hub = make_hub(queue_size=1, when_full="resync")
    client = FakeClient()
    serving = asyncio.create_task(client.serve(hub, snapshot))
    await until(lambda: len(client.chunks) >= 2)
    subscription = next(iter(hub.subscribers["north"]))
    subscription.queue.put_nowait(b"unread")
    hub.deliver("north", b"one too many")
    await asyncio.wait_for(serving, 10)  # ended by the server, the client never left
    assert hub.total == 0 and not client.gone.is_set()


async def test_a_refused_stream_takes_no_place() -> None:
    hub = make_hub(max_per_credential=1)
    hub.open("north", "station")
    refused = refusal(lambda: hub.stream("north", "station", FakeClient().request(),
                                         first=snapshot, render=bytes))
    assert refused.status_code == 429 and hub.total == 1


# ------------------------------------------------------------ rendered once


def test_each_board_is_rendered_once_per_view_and_every_screen_of_it_gets_that_frame() -> None:
    hub = make_hub(max_per_credential=None)
    rendered: list[tuple[str, bytes]] = []

    def render_as(view: str) -> Callable[[bytes], bytes]:
        def render(raw: bytes) -> bytes:
            rendered.append((view, raw))
            return view.encode() + b":" + raw
        return render

    tvs = [hub.open("north", "tv", render_as("screen"), "screen") for _ in range(3)]
    stations = [hub.open("north", "station", render_as("nurse"), "nurse") for _ in range(2)]
    alone = hub.open("north", "other", render_as("own"))  # no view: rendered for itself
    hub.deliver("north", b"board-1")
    assert sorted(rendered) == [("nurse", b"board-1"), ("own", b"board-1"),
                                ("screen", b"board-1")]
    assert {tv.queue.get_nowait() for tv in tvs} == {b"screen:board-1"}
    assert {s.queue.get_nowait() for s in stations} == {b"nurse:board-1"}
    assert alone.queue.get_nowait() == b"own:board-1"


def test_a_board_that_cannot_be_rendered_ends_the_streams_of_that_view_only() -> None:
    hub = make_hub(max_per_credential=None)

    def broken(raw: bytes) -> bytes:
        raise ValueError("not a board")

    tv = hub.open("north", "tv", broken, "screen")
    station = hub.open("north", "station", lambda raw: raw, "nurse")
    hub.deliver("north", b"board-1")
    assert tv.queue.get_nowait() is None  # the screen reconnects and starts afresh
    assert station.queue.get_nowait() == b"board-1"
