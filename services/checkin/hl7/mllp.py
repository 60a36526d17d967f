"""The MLLP listener: HL7 v2 messages over TCP, each in a VT ... FS CR envelope (HL7's
Minimal Lower Layer Protocol), each answered on the same connection before the next is
read.

Memory is bounded whatever a sender does: a frame larger than the limit is skipped as it
streams past (only its first ``HEAD_BYTES`` are kept, to name it in the answer), bytes
outside a frame are dropped, a frame cut by a closed connection is forgotten, and a new
start block inside a frame starts over (a sender that gave up on a message and sent the
next one).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from services.checkin.hl7.messages import CR, FS, VT, frame
from shared.logging import get_logger

log = get_logger("clinicflow.checkin.mllp")

READ_BYTES = 64 * 1024
HEAD_BYTES = 8 * 1024  # enough for an MSH segment: what an answer to a refused frame needs


@dataclass(frozen=True, slots=True)
class Frame:
    """One message received: ``payload`` (None: larger than the limit, skipped),
    ``head`` its first bytes, ``size`` its length."""

    payload: bytes | None
    head: bytes
    size: int


class FrameReader:
    """Splits a byte stream into MLLP frames, holding at most ``max_bytes`` of one."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._buffer = bytearray()
        self._in_frame = False
        self._size = 0
        self._oversize = False
        self.skipped_bytes = 0  # outside any frame (garbage, stray CRs)

    def feed(self, data: bytes) -> list[Frame]:
        frames: list[Frame] = []
        at = 0
        while at < len(data):
            if not self._in_frame:
                start = data.find(VT, at)
                if start < 0:
                    self.skipped_bytes += len(data) - at
                    return frames
                self.skipped_bytes += start - at
                self._begin()
                at = start + 1
                continue
            end = data.find(FS, at)
            restart = data.find(VT, at, end if end >= 0 else len(data))
            if restart >= 0:
                # a new message began before this one ended: the cut one is dropped
                self._take(data[at:restart])
                self.skipped_bytes += self._size
                self._begin()
                at = restart + 1
                continue
            if end < 0:
                self._take(data[at:])
                return frames
            self._take(data[at:end])
            frames.append(self._finish())
            at = end + 1
            if at < len(data) and data[at:at + 1] == CR:
                at += 1
        return frames

    def _begin(self) -> None:
        self._in_frame = True
        self._buffer.clear()
        self._size = 0
        self._oversize = False

    def _take(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._oversize:
            return
        if self._size > self.max_bytes:
            self._oversize = True
            keep = HEAD_BYTES - len(self._buffer)
            if keep > 0:
                self._buffer.extend(chunk[:keep])
            del self._buffer[HEAD_BYTES:]
            return
        self._buffer.extend(chunk)

    def _finish(self) -> Frame:
        self._in_frame = False
        head = bytes(self._buffer[:HEAD_BYTES])
        payload = None if self._oversize else bytes(self._buffer)
        found = Frame(payload, head, self._size)
        self._buffer = bytearray()
        return found

    @property
    def pending_bytes(self) -> int:
        """Bytes held for a frame not yet ended."""
        return len(self._buffer)


# answers one frame with the bytes of its acknowledgement (no envelope)
Answer = Callable[[Frame], Awaitable[bytes]]


class MllpServer:
    """An asyncio TCP server answering every frame with ``answer``'s ACK, in order, one
    at a time per connection. ``port`` 0 binds a free port (read ``bound_port``)."""

    def __init__(self, answer: Answer, host: str, port: int, max_bytes: int) -> None:
        self.answer = answer
        self.host = host
        self.port = port
        self.max_bytes = max_bytes
        self._server: asyncio.base_events.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def bound_port(self) -> int:
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the MLLP listener is not running")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def connections(self) -> int:
        return len(self._connections)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port,
                                                  limit=READ_BYTES, backlog=256)
        log.info("mllp listener started", host=self.host, port=self.bound_port)

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for task in list(self._connections):
            task.cancel()
        for task in list(self._connections):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(Exception):
            await self._server.wait_closed()
        self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        frames = FrameReader(self.max_bytes)
        try:
            while True:
                data = await reader.read(READ_BYTES)
                if not data:
                    if frames.pending_bytes:
                        log.info("mllp connection closed mid-message; the message is "
                                 "dropped", bytes=frames.pending_bytes)
                    return
                for received in frames.feed(data):
                    writer.write(frame(await self.answer(received)))
                    await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            if task is not None:
                self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
