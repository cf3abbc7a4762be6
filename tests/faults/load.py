"""Load for the fault tests: every reply recorded (server, status, timing, body)."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tests.cluster import LOOPBACK, DemoServer

ERROR = 0  # the status of a request that got no HTTP answer (connection reset or refused)


@dataclass(frozen=True)
class Reply:
    port: int
    path: str
    status: int
    sent: float  # time.monotonic() when the request went out
    done: float  # ... and when its answer was read
    body: dict[str, Any]

    @property
    def latency(self) -> float:
        return self.done - self.sent


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Loader:
    """Threads that send GETs round-robin over servers until stopped (or a total is reached).

    ``path`` may be a callable (thread index, request number) -> path, and
    ``headers`` one returning the request's headers, for keys that vary.
    """

    servers: Sequence[DemoServer]
    path: str | Callable[[int, int], str] = "/faults/hit/"
    threads: int = 4
    total: int | None = None
    pause: float = 0.0  # seconds between two requests of one thread (a paced client)
    headers: Callable[[int, int], dict[str, str]] | None = None
    replies: list[Reply] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._workers = [
            threading.Thread(target=self._work, args=(i,), name=f"faults-load-{i}")
            for i in range(self.threads)
        ]

    def start(self) -> Loader:
        for worker in self._workers:
            worker.start()
        return self

    def stop(self) -> Loader:
        self._stop.set()
        return self.join()

    def join(self, timeout: float = 120) -> Loader:
        for worker in self._workers:
            worker.join(timeout)
        assert not any(w.is_alive() for w in self._workers), "a load thread is stuck"
        return self

    def run(self) -> Loader:
        return self.start().join()

    def snapshot(self) -> list[Reply]:
        with self._lock:
            return list(self.replies)

    def _work(self, index: int) -> None:
        connections: dict[int, http.client.HTTPConnection] = {}
        number = index
        try:
            while not self._stop.is_set() and (self.total is None or number < self.total):
                server = self.servers[number % len(self.servers)]
                path = self.path(index, number) if callable(self.path) else self.path
                headers = self.headers(index, number) if self.headers else {}
                connection = connections.get(server.port)
                if connection is None:
                    connection = http.client.HTTPConnection(LOOPBACK, server.port, timeout=15)
                    connections[server.port] = connection
                sent = time.monotonic()
                try:
                    connection.request("GET", path, headers=headers)
                    response = connection.getresponse()
                    raw = response.read()
                    status = response.status
                except (OSError, http.client.HTTPException):
                    connection.close()
                    connections.pop(server.port, None)
                    status, raw = ERROR, b""
                done = time.monotonic()
                try:
                    body = json.loads(raw) if raw else {}
                except ValueError:
                    body = {"raw": raw[:200].decode(errors="replace")}
                with self._lock:
                    self.replies.append(Reply(server.port, path, status, sent, done, body))
                number += self.threads
                if self.pause:
                    self._stop.wait(self.pause)
        finally:
            for connection in connections.values():
                connection.close()


def tally(replies: Sequence[Reply]) -> dict[str, int]:
    """Admitted (200), limited (429), errors (no answer) and 5xx among some replies."""
    return {
        "admitted": sum(r.status == 200 for r in replies),
        "limited": sum(r.status == 429 for r in replies),
        "no_answer": sum(r.status == ERROR for r in replies),
        "server_errors": sum(r.status >= 500 for r in replies),
        "other": sum(r.status not in (200, 429, ERROR) and r.status < 500 for r in replies),
    }
