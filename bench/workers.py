"""Driven Django processes for the benchmarks, and Redis statistics through redis-py."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent


def emit(event: str, **data: Any) -> None:
    """A driven process's answer to its parent: one JSON line with an ``event``."""
    print(json.dumps({"event": event, **data}), flush=True)


def setup_django() -> None:
    """Django set up with the demo project's settings, in a driven process."""
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testproject.settings")
    django.setup()


def redis_info(port: int, section: str) -> dict[str, Any]:
    """``INFO section`` of the redis-server on this loopback port."""
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)
    try:
        info: dict[str, Any] = client.info(section)
        return info
    finally:
        client.close()


class Worker:
    """A Django process (``script --worker``) driving the limiter, steered over stdin.

    Commands go in as JSON lines; the worker answers with JSON lines carrying an
    ``event`` name, which :meth:`expect` waits for.
    """

    def __init__(self, script: Path, env: dict[str, str]) -> None:
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115 (closed in stop())
            prefix="dratelimit-bench-worker-", suffix=".log", delete=False
        )
        self.process: subprocess.Popen[str] | None = subprocess.Popen(
            [sys.executable, str(script.resolve()), "--worker"],
            cwd=ROOT,
            env={
                **os.environ,
                "PYTHONPATH": str(ROOT),
                "DJANGO_SETTINGS_MODULE": "testproject.settings",
                **env,
            },
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            start_new_session=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        process = self.process
        if process is None or process.stdout is None:
            return
        for line in process.stdout:
            self.lines.put(line)

    def send(self, **command: Any) -> None:
        assert self.process is not None
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    def expect(self, event: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"worker: no {event!r} within {timeout} s\n{self.output()}")
            try:
                line = self.lines.get(timeout=min(left, 0.5))
            except queue.Empty:
                if self.process is None or self.process.poll() is not None:
                    raise RuntimeError(f"worker exited before {event!r}\n{self.output()}") from None
                continue
            with contextlib.suppress(ValueError):
                message: dict[str, Any] = json.loads(line)
                if message.get("event") == event:
                    return message

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            if process.stdin is not None:
                with contextlib.suppress(OSError):
                    process.stdin.close()  # EOF: the worker stops its sync thread and exits
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
            if process.stdout is not None:
                process.stdout.close()
        self.log.close()
        Path(self.log.name).unlink(missing_ok=True)
