"""``manage.py ratelimit`` as a user runs it: a subprocess against uvicorn and gunicorn servers."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.test import override_settings

from django_dratelimit.local.scopes import base_key
from testproject import settings as demo_settings
from tests.cluster import ROOT, DemoServer, RedisServer, load, wait_for
from tests.command.conftest import (
    fresh_hour,
    run,
    run_json,
)
from tests.conftest import layer_config
from tests.helpers import server_env


def manage(
    redis: RedisServer | None, *args: str, layer: str = "core"
) -> subprocess.CompletedProcess[str]:
    """``python manage.py ratelimit ...`` in a process of its own, as a user runs it."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "testproject.settings", "DJANGO_DEBUG": "0"}
    env.pop("REDIS_URL", None)
    if redis is not None:
        env["REDIS_URL"] = redis.url
        env["DRATELIMIT_LAYER"] = layer  # the same layer as the servers it asks
    return subprocess.run(
        [sys.executable, "manage.py", "ratelimit", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def servers() -> Iterator[Callable[[list[str], dict[str, str]], list[DemoServer]]]:
    """Start demo servers side by side; every one is stopped at the end."""
    started: list[DemoServer] = []

    def start(kinds: list[str], env: dict[str, str]) -> list[DemoServer]:
        made = [DemoServer(kind, env) for kind in kinds]
        started.extend(made)
        with ThreadPoolExecutor(len(made)) as pool:
            list(pool.map(DemoServer.start, made))
        return made

    yield start
    for server in started:
        server.stop()


def counts(servers: list[DemoServer]) -> list[int]:
    return [int(server.state()["count"]) for server in servers]


class TestRealProcesses:
    pytestmark = pytest.mark.cluster

    def test_inspect_nodes_and_reset_on_uvicorn_and_gunicorn(
        self,
        redis_db: RedisServer,
        servers: Callable[[list[str], dict[str, str]], list[DemoServer]],
    ) -> None:
        fresh_hour()
        demo = servers(
            ["uvicorn", "uvicorn", "gunicorn"], server_env(redis_db.url, "core", "100/h")
        )
        result = load(demo, 150)
        assert result["errors"] == 0
        wait_for(lambda: counts(demo) == [150, 150, 150], 5, "every server to count 150")
        states = [server.state() for server in demo]
        node_ids = {state["node"] for state in states}

        inspected = manage(redis_db, "inspect", "--json", "--timeout", "1")
        assert inspected.returncode == 0, inspected.stderr
        data = json.loads(inspected.stdout)
        assert data["answered"] == 3
        (shared,) = [
            b for b in data["buckets"] if (b["group"], base_key(b["key"])) == ("cluster", "shared")
        ]
        assert shared["nodes"] == dict.fromkeys(node_ids, 150)  # every node holds all 150
        assert sum(shared["counts"].values()) == 150
        assert shared["limit"] is None  # the demo's rate is a callable: known per request

        listed = manage(redis_db, "nodes", "--json", "--timeout", "1")
        assert listed.returncode == 0, listed.stderr
        data = json.loads(listed.stdout)
        assert {(n["node"], n["pid"]) for n in data["nodes"]} == {
            (s["node"], s["pid"]) for s in states
        }
        assert all(n["messages_received"] > 0 and n["broker_errors"] == 0 for n in data["nodes"])

        table_run = manage(redis_db, "inspect", "--group", "cluster", "--timeout", "1")
        assert table_run.returncode == 0, table_run.stderr
        lines = table_run.stdout.splitlines()
        assert lines[1].split()[:2] == ["cluster", "shared"]
        assert lines[1].split()[-3:] == ["150", "?", "150..150"]
        # The demo's own SECRET_KEY names its group.
        assert re.fullmatch(
            r"3 nodes answered within 1 s \(sync group 'dratelimit-[0-9a-f]{10}'\)\.", lines[-1]
        )

        reset = manage(redis_db, "reset", "cluster", "shared", "--timeout", "1")
        assert reset.returncode == 0, reset.stderr
        assert reset.stdout == (
            "Reset key 'shared' in group 'cluster': 3 nodes confirmed, 3 buckets removed.\n"
        )
        assert counts(demo) == [0, 0, 0]
        assert [server.get("/cluster/hit/")[0] for server in demo] == [200, 200, 200]
        # Anti-entropy rounds (every second) carry the three new hits, not the old 150.
        wait_for(lambda: counts(demo) == [3, 3, 3], 5, "every server to count 3")

    def test_call_command_against_pubsub_servers(
        self,
        redis_db: RedisServer,
        servers: Callable[[list[str], dict[str, str]], list[DemoServer]],
    ) -> None:
        fresh_hour()
        demo = servers(["uvicorn", "gunicorn"], server_env(redis_db.url, "pubsub", "100/h"))
        load(demo, 40)
        wait_for(lambda: counts(demo) == [40, 40], 5, "every server to count 40")
        # The site's settings: its layer, and its SECRET_KEY, which names its sync group.
        with override_settings(
            CHANNEL_LAYERS={"default": layer_config("pubsub", redis_db.url)},
            SECRET_KEY=demo_settings.SECRET_KEY,
        ):
            data = run_json("inspect", "--group", "cluster", "--timeout", "1")
            rows = [(base_key(b["key"]), b["min"], b["max"]) for b in data["buckets"]]
            assert rows == [("shared", 40, 40)]
            assert run("reset", "cluster", "--timeout", "1") == (
                "Reset group 'cluster': 2 nodes confirmed, 2 buckets removed.\n"
            )
        assert counts(demo) == [0, 0]
        assert [server.get("/cluster/hit/")[0] for server in demo] == [200, 200]

    def test_a_subprocess_says_when_nothing_answers(self, redis_db: RedisServer) -> None:
        nothing = manage(redis_db, "nodes", "--timeout", "0.5")
        assert nothing.returncode == 1
        assert nothing.stdout == ""
        assert (
            "CommandError: no running process answered; is the site running and configured "
            "with the same CHANNEL_LAYERS?" in nothing.stderr
        )
        local = manage(None, "inspect")  # the demo without REDIS_URL: in-memory layer
        assert local.returncode == 1
        assert "cannot be seen from another process" in local.stderr
        checked = manage(None, "check", "5/m")
        assert checked.returncode == 0
        assert checked.stdout.startswith("5/m: 5 per 1 minute\n")
        wrong = manage(None, "inspect", "--limit", "x")
        assert wrong.returncode == 2  # argparse's usage error, from the command line
        assert "invalid int value: 'x'" in wrong.stderr
