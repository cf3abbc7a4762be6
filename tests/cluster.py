"""Real processes for the cluster tests: a test-owned redis-server and demo servers.

Everything here listens on 127.0.0.1 only, on free ports, and is always torn down.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import redis

# Polling with a deadline lives with the other shared helpers; kept importable from here.
from tests.helpers import wait_for as wait_for

ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """A throwaway redis-server on a free port; can be stopped and restarted."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (bash .ci/run installs it)")
        self.binary = binary
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="dratelimit-redis-")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                LOOPBACK,
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir,
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self.ping, 10, "redis-server to answer PING")

    def client(self) -> redis.Redis:
        return redis.Redis(host=LOOPBACK, port=self.port, socket_timeout=2)

    def ping(self) -> bool:
        try:
            with self.client() as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def command(self, *args: str) -> Any:
        """Run one command through redis-py and return its reply."""
        with self.client() as client:
            return client.execute_command(*args)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class DemoServer:
    """The demo project under uvicorn (ASGI) or gunicorn (WSGI), in its own process group."""

    def __init__(
        self, kind: str, env: dict[str, str], workers: int = 1, preload: bool = False
    ) -> None:
        self.kind = kind
        self.port = free_port()
        self.env = env
        self.workers = workers
        self.preload = preload
        self.process: subprocess.Popen[bytes] | None = None
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115 (closed in stop())
            prefix=f"dratelimit-{kind}-", suffix=".log", delete=False
        )

    def command(self) -> list[str]:
        if self.kind == "uvicorn":
            return [
                sys.executable,
                "-m",
                "uvicorn",
                "testproject.asgi:application",
                "--host",
                LOOPBACK,
                "--port",
                str(self.port),
                "--no-access-log",
                "--log-level",
                "warning",
                "--workers",
                str(self.workers),
            ]
        command = [
            sys.executable,
            "-m",
            "gunicorn",
            "testproject.wsgi:application",
            "-b",
            f"{LOOPBACK}:{self.port}",
            "-w",
            str(self.workers),
            "--no-control-socket",
            "--log-level",
            "warning",
            "--graceful-timeout",
            "3",
        ]
        if self.preload:
            command.append("--preload")
        return command

    def start(self) -> DemoServer:
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "DJANGO_DEBUG": "0",
            "DJANGO_SETTINGS_MODULE": "testproject.settings",
            **self.env,
        }
        self.process = subprocess.Popen(
            self.command(),
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

        def serving() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"{self.kind} exited:\n{self.output()}")
            return self.get("/cluster/noop/")[0] == 200

        try:
            wait_for(serving, 30, f"{self.kind} to serve")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; output:\n{self.output()}") from None
        return self

    def get(self, path: str) -> tuple[int, dict[str, Any]]:
        connection = http.client.HTTPConnection(LOOPBACK, self.port, timeout=10)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            body = response.read()
            return response.status, json.loads(body) if body else {}
        finally:
            connection.close()

    def state(self, **params: str) -> dict[str, Any]:
        query = "&".join(f"{k}={v}" for k, v in params.items())
        status, body = self.get(f"/cluster/state/?{query}")
        assert status == 200, body
        return body

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        self.process = None
        self.log.close()
        Path(self.log.name).unlink(missing_ok=True)


def meet(nodes: list[DemoServer], timeout: float = 10) -> None:
    """Let every process join (each joins at its first request) and know all the others."""
    for _ in range(3):
        for node in nodes:
            node.get("/cluster/noop/")
    others = len(nodes) - 1
    wait_for(
        lambda: all((n.state()["sync"] or {}).get("peers") == others for n in nodes),
        timeout,
        "every process to know the others",
    )


def load(
    servers: Iterable[DemoServer], total: int, path: str = "/cluster/hit/", threads: int = 6
) -> dict[str, int]:
    """Send ``total`` GETs round-robin over the servers on keep-alive connections."""
    targets = list(servers)

    def worker(index: int) -> dict[str, int]:
        counts = {"admitted": 0, "limited": 0, "errors": 0}
        connections: dict[int, http.client.HTTPConnection] = {}
        try:
            for n in range(index, total, threads):
                server = targets[n % len(targets)]
                connection = connections.get(server.port)
                if connection is None:
                    connection = http.client.HTTPConnection(LOOPBACK, server.port, timeout=10)
                    connections[server.port] = connection
                try:
                    connection.request("GET", path)
                    response = connection.getresponse()
                    response.read()
                    status = response.status
                except (OSError, http.client.HTTPException):
                    connection.close()
                    connections.pop(server.port, None)
                    counts["errors"] += 1
                    continue
                if status == 200:
                    counts["admitted"] += 1
                elif status == 429:
                    counts["limited"] += 1
                else:
                    counts["errors"] += 1
        finally:
            for connection in connections.values():
                connection.close()
        return counts

    with ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(worker, range(threads)))
    return {k: sum(r[k] for r in results) for k in ("admitted", "limited", "errors")}
