"""A loopback TCP proxy that a test can cut and restore: the network between a service
and one of its servers (Redis), failing the two ways a real network does.

* ``cut("reset")``: every open connection is dropped at once and new ones are refused
  (the listening socket is closed): the client sees errors straight away.
* ``cut("blackhole")``: nothing is forwarded any more, in either direction, and new
  connections are accepted but get no answer: the client sees silence, and only its own
  socket timeouts get it out (the nasty case). Bytes are held, not lost: like a partition
  that heals, connections the client kept resume when the network is ``restore()``d.

Runs in the test's event loop: ``async with TcpProxy(target_port) as proxy`` listens on
127.0.0.1 (``proxy.port``) and, on leaving, closes the listener and every connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Literal, Self

Cut = Literal["reset", "blackhole"]
CHUNK = 64 * 1024


class TcpProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.accepted = 0  # connections accepted, for a test to see clients came back
        self._server: asyncio.Server | None = None
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Self:
        await self._listen()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self._close_listener()
        self._drop_connections()
        self._flowing.set()  # held connections wake up, find themselves closed and end
        tasks = list(self._tasks)
        if tasks:
            _done, stuck = await asyncio.wait(tasks, timeout=5)
            for task in stuck:
                task.cancel()
            await asyncio.gather(*stuck, return_exceptions=True)

    async def cut(self, how: Cut = "reset") -> None:
        """Cut the network: see the module docstring for the two ways."""
        self._flowing.clear()
        if how == "reset":
            await self._close_listener()
            self._drop_connections()
        elif self._server is None:  # from a reset to a black hole: accept, answer nothing
            await self._listen()

    async def restore(self) -> None:
        """The network is back: connections are accepted and bytes flow again."""
        if self._server is None:
            await self._listen()
        self._flowing.set()

    async def _listen(self) -> None:
        # the same port again after a reset, so the client's URL stays right
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port,
                                                  reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close_listener(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    def _drop_connections(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _accept(self, client_reader: asyncio.StreamReader,
                      client_writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.add(client_writer)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._flowing.wait()  # a black hole: the connection hangs unanswered
            if client_writer.transport.is_closing():
                return
            try:
                upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
            except OSError:
                client_writer.transport.abort()
                return
            self._writers.add(upstream_writer)
            await asyncio.gather(self._pump(client_reader, upstream_writer),
                                 self._pump(upstream_reader, client_writer))
        finally:
            self._tasks.discard(task)
            self._writers.discard(client_writer)
            client_writer.transport.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Copy one direction while the network flows; a cut holds the bytes (black hole)
        or has already aborted both ends (reset)."""
        try:
            while True:
                await self._flowing.wait()
                chunk = await reader.read(CHUNK)
                if not chunk:
                    break
                await self._flowing.wait()
                if writer.transport.is_closing():
                    break
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.transport.abort()
