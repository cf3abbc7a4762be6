"""A Redis master, its replica and one Sentinel, on free loopback ports, owned by a test.

Needs Debian's ``redis-sentinel`` (``apt-get install redis-sentinel``) next to
``redis-server``.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from tests.cluster import LOOPBACK, free_port, wait_for

MASTER_NAME = "dratelimit-faults"
# With min-replicas-to-write: a replica whose last ack is older than this (s) does not count.
MIN_REPLICAS_MAX_LAG = 1


def binaries() -> tuple[str, str] | None:
    server, sentinel = shutil.which("redis-server"), shutil.which("redis-sentinel")
    return (server, sentinel) if server and sentinel else None


class Instance:
    """One redis-server (or redis-sentinel) process with a config file of its own."""

    def __init__(self, binary: str, directory: Path, name: str, lines: list[str]) -> None:
        self.port = free_port()
        self.config = directory / f"{name}.conf"
        self.config.write_text(
            "\n".join(
                [
                    f"port {self.port}",
                    f"bind {LOOPBACK}",
                    f"dir {directory}",
                    "save ''",
                    "appendonly no",
                    "loglevel notice",
                    f"logfile {directory / name}.log",
                    *lines,
                ]
            )
            + "\n"
        )
        self.log = directory / f"{name}.log"
        self.process = subprocess.Popen(
            [binary, str(self.config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for(lambda: self.client().ping(), 10, f"{name} to answer PING")

    def client(self) -> redis.Redis:
        return redis.Redis(host=LOOPBACK, port=self.port, socket_timeout=2)

    def command(self, *args: Any) -> Any:
        with self.client() as client:
            return client.execute_command(*args)

    def role(self) -> str:
        with self.client() as client:
            return str(client.info("replication")["role"])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


class SentinelSet:
    """master + replica (``replicaof``) + one sentinel (quorum 1) monitoring them."""

    def __init__(self, min_replicas: int = 0) -> None:
        found = binaries()
        if found is None:
            raise RuntimeError("redis-server and redis-sentinel are needed (apt: redis-sentinel)")
        server, sentinel = found
        self.dir = Path(tempfile.mkdtemp(prefix="dratelimit-sentinel-"))
        self.instances: list[Instance] = []
        try:
            # min-replicas-to-write: a master that lost its replicas refuses writes.
            lines = ["repl-diskless-sync-delay 0", f"min-replicas-to-write {min_replicas}"]
            if min_replicas:
                lines.append(f"min-replicas-max-lag {MIN_REPLICAS_MAX_LAG}")
            master = self._start(server, "master", lines)
            replica = self._start(
                server, "replica", [*lines, f"replicaof {LOOPBACK} {master.port}"]
            )
            self.sentinel = self._start(
                sentinel,
                "sentinel",
                [
                    "sentinel resolve-hostnames no",
                    f"sentinel monitor {MASTER_NAME} {LOOPBACK} {master.port} 1",
                    f"sentinel down-after-milliseconds {MASTER_NAME} 1000",
                    f"sentinel failover-timeout {MASTER_NAME} 10000",
                ],
            )
            self.redis = {master.port: master, replica.port: replica}
            wait_for(self._replica_known, 30, "the sentinel to know the replica")
        except BaseException:
            self.close()
            raise

    def _start(self, binary: str, name: str, lines: list[str]) -> Instance:
        instance = Instance(binary, self.dir, name, lines)
        self.instances.append(instance)
        return instance

    @property
    def sentinels(self) -> str:
        """``REDIS_SENTINELS`` for the demo."""
        return f"{LOOPBACK}:{self.sentinel.port}"

    def master_port(self) -> int:
        _host, port = self.sentinel.command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME)
        return int(port)

    def master(self) -> Instance:
        return self.redis[self.master_port()]

    def _replica_known(self) -> bool:
        replicas = self.sentinel.command("SENTINEL", "REPLICAS", MASTER_NAME)
        for raw in replicas:
            fields = _fields(raw)
            if fields.get("flags") == "slave" and fields.get("master-link-status") == "ok":
                return True
        return False

    def failover(self, timeout: float = 60) -> tuple[float, float, float]:
        """Fail the master over; return when it started, was promoted and was done (monotonic).

        Promoted: the sentinel names the replica as master. Done: the old master
        has been turned into a replica of it (its clients were disconnected then).
        """
        old = self.master_port()
        started = time.monotonic()
        # -NOGOODSLAVE while the sentinel's view of the replica is not fresh: retry.
        wait_for(
            lambda: self.sentinel.command("SENTINEL", "FAILOVER", MASTER_NAME),
            30,
            "the sentinel to accept FAILOVER",
            interval=0.2,
        )
        wait_for(lambda: self.master_port() != old, timeout, "the sentinel to promote")
        promoted = time.monotonic()
        new = self.master_port()
        wait_for(
            lambda: self.redis[new].role() == "master" and self.redis[old].role() == "slave",
            timeout,
            "the old master to become a replica",
        )
        return started, promoted, time.monotonic()

    def close(self) -> None:
        for instance in self.instances:
            instance.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def _fields(raw: Any) -> dict[str, str]:
    """SENTINEL REPLICAS' flat [name, value, ...] list (or redis-py's parsed dict)."""
    if isinstance(raw, dict):
        return {_text(k): _text(v) for k, v in raw.items()}
    items = [_text(x) for x in raw]
    return dict(zip(items[::2], items[1::2], strict=False))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
