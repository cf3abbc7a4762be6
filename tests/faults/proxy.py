"""A TCP proxy between one process and Redis: adds latency, or cuts the link and restores it.

It runs its own asyncio loop in a thread and listens on a free loopback port.
Each connection gets two pumps (one per direction); a chunk read at time t is
written at ``t + latency`` (the latency in force when it was read), in order,
so the link behaves like a slow wire: throughput stays, every byte is late.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any

from tests.cluster import LOOPBACK, free_port

CHUNK = 65536


class Proxy:
    """Forwards ``127.0.0.1:port`` to ``127.0.0.1:target``."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = free_port()
        self.latency = 0.0  # seconds added in each direction
        self.connections = 0  # accepted since start
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, name="faults-proxy")

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def start(self) -> Proxy:
        self._thread.start()
        self._call(self._listen())
        return self

    def set_latency(self, seconds: float) -> None:
        self.latency = seconds  # read by the pumps for every chunk

    def cut(self) -> None:
        """Refuse new connections and reset every open one (a lost link, both ways)."""
        self._call(self._cut())

    def restore(self) -> None:
        self._call(self._listen())

    def close(self) -> None:
        if self._thread.is_alive():
            self._call(self._shutdown())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop.close()

    # -- the loop's side ----------------------------------------------------------------

    def _call(self, coroutine: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)

    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._accept, LOOPBACK, self.port)

    async def _cut(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _shutdown(self) -> None:
        await self._cut()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            redis_r, redis_w = await asyncio.open_connection(LOOPBACK, self.target)
        except OSError:
            client_w.transport.abort()
            return
        self._writers.update((client_w, redis_w))
        try:
            await asyncio.gather(self._pump(client_r, redis_w), self._pump(redis_r, client_w))
        finally:
            for writer in (client_w, redis_w):
                self._writers.discard(writer)
                writer.transport.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    return
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                writer.write(data)
                await writer.drain()

        delivery = asyncio.ensure_future(deliver())
        try:
            while True:
                data = await reader.read(CHUNK)
                queue.put_nowait((loop.time() + self.latency, data))
                if not data:
                    break
            await delivery
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            delivery.cancel()
            with contextlib.suppress(BaseException):
                await delivery
            # One side is gone: end the other too, as a real link would.
            writer.transport.abort()
