"""Live streams (Server-Sent Events) fed by one Redis pub/sub listener per process.

Flow's board stream and notifications' nurse-alert stream are the same machine: a
service publishes each change on a Redis channel per clinic; one ``SseHub`` per process
listens to the channel pattern and fans each message out to the queues of the clients
watching that clinic. The hub also owns the limits (open streams in total: 503 with
``Retry-After``; per credential: 429), the heartbeats (a ``: keep-alive`` comment when a
stream has been quiet for ``heartbeat_seconds``) and the clean-up: a client's place is
given back however its stream ends (closed, reset, gone before the first byte).

Each message is rendered once per view, not once per client: a stream says which view it
shows (flow's: the role's), and the hub hands every client of that view the same frame.
A stream that names no view is rendered for itself.

A client that falls behind either loses its oldest messages (``when_full="keep_newest"``:
a board replaces the one before, only the newest matters) or has its stream ended so that
it reconnects and starts from a fresh snapshot (``"resync"``: alerts are changes, none may
be skipped silently).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Literal

from fastapi import HTTPException, Request
from fastapi.responses import StreamingResponse
from prometheus_client import Gauge
from starlette.types import Receive, Scope, Send

from shared.logging import get_logger
from shared.service import ServiceRuntime, stop_tasks

log = get_logger("clinicflow.sse")

WhenFull = Literal["keep_newest", "resync"]
HEARTBEAT = b": keep-alive\n\n"
RETRY = b"retry: 2000\n\n"


Render = Callable[[bytes], bytes]


def _as_is(data: bytes) -> bytes:
    return data


async def _message_as_is(message: list[bytes]) -> list[bytes]:
    """redis-py's own handler of a pub/sub message (8.x) builds ``"Push response: " +
    str(message)`` for a debug log whether or not it is logged: a board's every byte
    escaped: 9% of flow's CPU in the screens benchmark (bench/sse_bench.py)."""
    return message


@dataclass(eq=False)
class Subscription:
    """One open stream: the clinic it watches, the credential that opened it, its queue of
    rendered frames (``None`` in the queue ends the stream: the client reconnects and
    resyncs), how a message becomes its frame and the view that frame belongs to
    (``None``: its own)."""

    clinic_id: str
    credential: str
    queue: asyncio.Queue[bytes | None]
    render: Render = _as_is
    view: Hashable | None = None
    closed: bool = field(default=False)


class SseHub:
    """Fan-out of one Redis channel pattern to SSE clients, by clinic, within limits."""

    def __init__(self, runtime: ServiceRuntime, *, name: str, pattern: str,
                 clinic_of_channel: Callable[[str], str], gauge: Gauge, max_total: int,
                 max_per_credential: int | None = None, queue_size: int = 4,
                 when_full: WhenFull = "keep_newest", heartbeat_seconds: float = 15.0,
                 busy_detail: str = "too many live connections; try again shortly") -> None:
        self.runtime = runtime
        self.name = name
        self.pattern = pattern
        self.clinic_of_channel = clinic_of_channel
        self.gauge = gauge
        self.max_total = max_total
        self.max_per_credential = max_per_credential
        self.queue_size = queue_size
        self.when_full = when_full
        self.heartbeat_seconds = heartbeat_seconds
        self.busy_detail = busy_detail
        self.subscribers: dict[str, set[Subscription]] = {}
        self.per_credential: dict[str, int] = {}
        self.total = 0
        self.listening = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ the listener

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name=self.name)

    async def stop(self) -> None:
        await stop_tasks([self._task])

    async def _listen(self) -> None:
        delay = 0.5
        while True:
            try:
                async with self.runtime.redis.pubsub(push_handler_func=_message_as_is) as pubsub:
                    await pubsub.psubscribe(self.pattern)
                    self.listening.set()
                    delay = 0.5
                    async for message in pubsub.listen():
                        if message["type"] == "pmessage":
                            self.deliver(self.clinic_of_channel(message["channel"].decode()),
                                         message["data"])
                        elif message["type"] == "psubscribe":
                            # (re)subscribed: the client reconnects by itself after a
                            # dropped connection, and what was published meanwhile is lost
                            self.lost()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.listening.clear()
                self.lost()
                log.warning("live stream listener lost redis, retrying", hub=self.name,
                            error=repr(exc), retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    def lost(self) -> None:
        """The listener lost its subscription or subscribed again (messages may have been
        missed): what it delivered may no longer be the newest (a hub that keeps messages
        forgets them here)."""

    def deliver(self, clinic_id: str, data: bytes) -> None:
        """Render ``data`` once per view and queue the frame for every client watching
        ``clinic_id``; never blocks. A client whose frame could not be rendered has its
        stream ended (it reconnects and starts from a fresh snapshot)."""
        watching = self.subscribers.get(clinic_id)
        if not watching:
            return
        frames: dict[Hashable, bytes | None] = {}
        for subscription in list(watching):
            view = subscription if subscription.view is None else subscription.view
            if view in frames:
                frame = frames[view]
            else:
                try:
                    frame = subscription.render(data)
                except Exception as exc:
                    log.warning("live stream message not rendered: streams ended",
                                hub=self.name, clinic=clinic_id, error=repr(exc))
                    frame = None
                frames[view] = frame
            if frame is None:
                self._end(subscription)
                continue
            queue = subscription.queue
            if not queue.full():
                queue.put_nowait(frame)
            elif self.when_full == "keep_newest":
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
                queue.put_nowait(frame)
            else:  # a stalled client: end its stream, it reconnects and resyncs
                self._end(subscription)

    @staticmethod
    def _end(subscription: Subscription) -> None:
        """Drop what the client has not read and end its stream."""
        with contextlib.suppress(asyncio.QueueEmpty):
            while True:
                subscription.queue.get_nowait()
        subscription.queue.put_nowait(None)

    # ----------------------------------------------------------- the clients

    def open(self, clinic_id: str, credential: str, render: Render = _as_is,
             view: Hashable | None = None) -> Subscription:
        """A place for one more stream, or the refusal: 503 when the process is full,
        429 when this credential already has its share. ``render`` makes a message its
        frame; streams of the same ``view`` share one rendering (None: rendered for this
        stream alone)."""
        if self.total >= self.max_total:
            raise HTTPException(503, detail=self.busy_detail, headers={"Retry-After": "5"})
        held = self.per_credential.get(credential, 0)
        if self.max_per_credential is not None and held >= self.max_per_credential:
            raise HTTPException(429, detail=f"credential {credential!r} already has "
                                f"{self.max_per_credential} live connections")
        subscription = Subscription(clinic_id, credential, asyncio.Queue(self.queue_size),
                                    render, view)
        self.subscribers.setdefault(clinic_id, set()).add(subscription)
        self.per_credential[credential] = held + 1
        self.total += 1
        self.gauge.set(self.total)
        return subscription

    def close(self, subscription: Subscription) -> None:
        """Give a stream's place back (a second call does nothing)."""
        if subscription.closed:
            return
        subscription.closed = True
        watching = self.subscribers.get(subscription.clinic_id)
        if watching is not None:
            watching.discard(subscription)
            if not watching:
                del self.subscribers[subscription.clinic_id]
        left = self.per_credential[subscription.credential] - 1
        if left:
            self.per_credential[subscription.credential] = left
        else:
            del self.per_credential[subscription.credential]
        self.total -= 1
        self.gauge.set(self.total)

    def stream(self, clinic_id: str, credential: str, request: Request, *,
               first: Callable[[], Awaitable[bytes | None]], render: Render,
               view: Hashable | None = None) -> StreamingResponse:
        """Open a stream (or refuse, see ``open``) and answer with it: ``retry:``, then
        what ``first()`` returns (the snapshot, if any), then ``render(message)`` for each
        message (once per ``view``, see ``open``), keep-alive comments when quiet; it ends
        when the client goes away or falls behind (resync)."""
        subscription = self.open(clinic_id, credential, render, view)
        queue = subscription.queue

        async def events() -> AsyncIterator[bytes]:
            try:
                yield RETRY
                opening = await first()
                if opening is not None:
                    yield opening
                while True:
                    try:  # a frame already waiting needs no timer
                        frame = queue.get_nowait()
                    except asyncio.QueueEmpty:
                        try:
                            async with asyncio.timeout(self.heartbeat_seconds):
                                frame = await queue.get()
                        except TimeoutError:
                            if await request.is_disconnected():
                                return
                            yield HEARTBEAT
                            continue
                    if frame is None:
                        return
                    yield frame
            finally:
                self.close(subscription)

        return LiveResponse(events(), release=lambda: self.close(subscription))


class LiveResponse(StreamingResponse):
    """An SSE response that gives its stream's place back however it ends, even when the
    client is gone before the body was ever started (its generator's ``finally`` would then
    never run)."""

    def __init__(self, content: AsyncIterator[bytes], release: Callable[[], None]) -> None:
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
        self.release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.release()
