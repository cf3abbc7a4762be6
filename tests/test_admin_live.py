"""The live counters admin page, with Django's test client.

The cluster is faked at the client's public functions (inspect, merge_buckets,
reset_cluster) except where the real client's errors are the point; a last
test asks a real sync node over the test-owned redis-server.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client, override_settings
from django.urls import reverse

from django_dratelimit.admin import LiveCountersAdmin
from django_dratelimit.limiter import Limiter, set_limiter
from django_dratelimit.ops import client as cluster_client
from tests.cluster import ROOT, RedisServer, wait_for
from tests.conftest import layer_config

pytestmark = pytest.mark.django_db

LIVE = "admin:dratelimit_live"
DATA = "admin:dratelimit_live_data"
RESET = "admin:dratelimit_reset"


def view(group: str, key: str, total: int, low: int | None = None, **extra: Any) -> Any:
    now = int(time.time())
    fields: dict[str, Any] = {
        "group": group,
        "key": key,
        "period": 60,
        "window_start": now - now % 60,
        "total": total,
        "low": total if low is None else low,
        "per_node": {"n1": total, "n2": total if low is None else low},
        "counts": {"n1": total},
        "limit": 100,
        **extra,
    }
    return cluster_client.BucketView(**fields)


class FakeCluster:
    """Stands in for the processes: what inspect answers, what reset_cluster was asked."""

    def __init__(self) -> None:
        self.views: list[Any] = []
        self.error: Exception | None = None  # raised by inspect
        self.reset_error: Exception | None = None
        self.inspected: list[dict[str, Any]] = []
        self.resets: list[tuple[str, str | None, float]] = []

    def inspect(self, **kwargs: Any) -> Any:
        self.inspected.append(kwargs)
        if self.error is not None:
            raise self.error
        return SimpleNamespace(answers=[object(), object()], truncated=False, ignored=0)

    def merge_buckets(self, answers: list[Any], *args: Any) -> list[Any]:
        assert len(answers) == 2
        return list(self.views)

    def reset_cluster(self, group: str, key: str | None = None, timeout: float = 2.0) -> Any:
        self.resets.append((group, key, timeout))
        if self.reset_error is not None:
            raise self.reset_error
        return SimpleNamespace(confirmed=2, removed=1)


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> FakeCluster:
    fake = FakeCluster()
    monkeypatch.setattr(cluster_client, "inspect", fake.inspect)
    monkeypatch.setattr(cluster_client, "merge_buckets", fake.merge_buckets)
    monkeypatch.setattr(cluster_client, "reset_cluster", fake.reset_cluster)
    return fake


@pytest.fixture
def staff(client: Client) -> User:
    user = User.objects.create_user("staff", password="pw", is_staff=True)
    client.force_login(user)
    return user


@pytest.fixture
def resetter(client: Client) -> User:
    user = User.objects.create_user("resetter", password="pw", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="reset_counters"))
    client.force_login(user)
    return user


def text(response: Any) -> str:
    return str(response.content.decode())


# -- who may see and reset -------------------------------------------------------------


def test_the_url_names() -> None:
    assert reverse(LIVE) == "/admin/django_dratelimit/livecounters/"
    assert reverse(DATA) == "/admin/django_dratelimit/livecounters/data/"
    assert reverse(RESET) == "/admin/django_dratelimit/livecounters/reset/"


@pytest.mark.parametrize("name", [LIVE, DATA, RESET])
def test_anonymous_and_non_staff_users_go_to_the_login(
    client: Client, cluster: FakeCluster, name: str
) -> None:
    anonymous = client.get(reverse(name))
    client.force_login(User.objects.create_user("visitor", password="pw"))
    visitor = client.get(reverse(name))

    for response in (anonymous, visitor):
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("admin:login"))
    assert cluster.inspected == []


def test_staff_see_the_page_in_the_admin_index(client: Client, staff: User) -> None:
    response = client.get(reverse("admin:index"))

    assert response.status_code == 200
    assert f'href="{reverse(LIVE)}"' in text(response)
    assert "Live counters" in text(response)


def test_the_reset_permission_is_created_by_migrate() -> None:
    permission = Permission.objects.get(codename="reset_counters")

    assert permission.content_type.app_label == "django_dratelimit"
    assert permission.name == "Can reset rate-limit counters on every process"


def test_staff_without_the_permission_cannot_reset(
    client: Client, staff: User, cluster: FakeCluster
) -> None:
    cluster.views = [view("login", "203.0.113.7", 5)]
    page = client.get(reverse(LIVE))
    confirm = client.get(reverse(RESET), {"group": "login", "key": "203.0.113.7"})
    post = client.post(reverse(RESET), {"group": "login", "key": "203.0.113.7"})

    assert page.status_code == 200
    assert "203.0.113.7" in text(page)
    assert "dratelimit-reset" not in text(page)
    assert (confirm.status_code, post.status_code) == (403, 403)
    assert cluster.resets == []


# -- what the page shows ------------------------------------------------------------------


def test_the_hottest_buckets_per_group(client: Client, staff: User, cluster: FakeCluster) -> None:
    cluster.views = [
        view("api", "198.51.100.1", 250, low=240),
        view("login", "203.0.113.7", 7),
        view("api", "198.51.100.2", 3),
        *(view("crawl", f"bot-{n}", 1) for n in range(12)),
    ]
    response = client.get(reverse(LIVE))
    body = text(response)

    assert response.status_code == 200
    assert "2 processes answered" in body
    # Groups by their hottest bucket, buckets hottest first.
    assert body.index("198.51.100.1") < body.index("198.51.100.2") < body.index("203.0.113.7")
    assert body.index("<h2>api") < body.index("<h2>login") < body.index("<h2>crawl")
    row = response.context["snapshot"].groups[0].rows[0]
    assert (row.count, row.limit, row.spread, row.window, row.budget) == (250, 100, 10, "1m", None)
    assert 0 < row.seconds_left <= 60
    assert 'title="2 processes hold this bucket">10<' in body  # how far they disagree
    assert "&mdash;" in body  # budget mode: not built yet
    assert body.count('data-key="bot-') == LiveCountersAdmin.per_group
    assert "2 cooler buckets not shown" in body
    assert "dratelimit-over" in body  # 250 of 100


def test_budget_mode_shows_once_a_bucket_carries_it(
    client: Client, staff: User, cluster: FakeCluster
) -> None:
    cluster.views = [view("api", "k", 90, budget={"node-b": 5, "node-a": 95})]
    response = client.get(reverse(DATA))

    # Each process's level, in the order of their ids.
    assert response.json()["groups"][0]["rows"][0]["budget"] == "95 / 5"


def test_search_by_group_and_key(client: Client, staff: User, cluster: FakeCluster) -> None:
    response = client.get(reverse(LIVE), {"group": " login ", "key": "203.0"})
    client.get(reverse(LIVE), {"group": "", "key": ""})

    assert cluster.inspected[0]["group"] == "login"
    assert cluster.inspected[0]["key"] == "203.0"
    assert (cluster.inspected[1]["group"], cluster.inspected[1]["key"]) == (None, None)
    # The refresh asks the same question.
    assert f'data-url="{reverse(DATA)}?group=login&amp;key=203.0"' in text(response)
    assert 'value="login"' in text(response)


def test_the_json_endpoint(client: Client, resetter: User, cluster: FakeCluster) -> None:
    cluster.views = [view("api", "k1", 9, low=4)]
    response = client.get(reverse(DATA), {"group": "api"})
    data = response.json()

    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert data["processes"] == 2
    assert data["error"] is None
    assert data["can_reset"] is True
    [group] = data["groups"]
    assert group["group"] == "api"
    assert {k: group["rows"][0][k] for k in ("key", "count", "limit", "spread", "window")} == {
        "key": "k1",
        "count": 9,
        "limit": 100,
        "spread": 5,
        "window": "1m",
    }
    assert "k1" in data["html"]
    assert "dratelimit-reset-key" in data["html"]
    assert cluster.inspected[0]["group"] == "api"
    assert client.post(reverse(DATA)).status_code == 405


def test_keys_are_escaped(client: Client, staff: User, cluster: FakeCluster) -> None:
    cluster.views = [view("api", "<script>alert(1)</script>", 1)]
    body = text(client.get(reverse(LIVE)))
    html = client.get(reverse(DATA)).json()["html"]

    assert "<script>alert(1)" not in body
    assert "<script>alert(1)" not in html
    assert "&lt;script&gt;" in html


# -- when the cluster cannot be asked -------------------------------------------------------


def test_an_in_memory_layer_says_why_nothing_can_be_seen(client: Client, staff: User) -> None:
    response = client.get(reverse(LIVE))  # the real client, on the test settings' layer

    assert response.status_code == 200
    assert "Counters cannot be seen from here" in text(response)
    assert "InMemoryChannelLayer" in text(response)


@override_settings(DRATELIMIT={"CHANNEL_LAYER": None})
def test_local_only_settings_say_so_in_the_json_too(client: Client, staff: User) -> None:
    data = client.get(reverse(DATA)).json()

    assert "CHANNEL_LAYER'] = None" in data["error"]
    assert data["groups"] == []


@pytest.mark.parametrize(
    ("error", "shown"),
    [
        (cluster_client.NoAnswer("nobody (waited 1 s)"), "No process answered. nobody"),
        (cluster_client.ClusterError("broker down"), "Cannot ask the cluster: broker down"),
        (RuntimeError("a bug"), "Unexpected error while asking the cluster: RuntimeError"),
    ],
)
def test_cluster_errors_are_messages_not_500s(
    client: Client,
    staff: User,
    cluster: FakeCluster,
    caplog: pytest.LogCaptureFixture,
    error: Exception,
    shown: str,
) -> None:
    cluster.error = error
    page = client.get(reverse(LIVE))
    data = client.get(reverse(DATA)).json()

    assert page.status_code == 200
    assert shown in text(page)
    assert shown in data["error"]
    assert 'id="dratelimit-error"' in data["html"]
    assert ("Traceback" in caplog.text) == isinstance(error, RuntimeError)


# -- resets ------------------------------------------------------------------------------------


def test_a_key_reset_asks_for_confirmation_then_resets_every_process(
    client: Client, resetter: User, cluster: FakeCluster, caplog: pytest.LogCaptureFixture
) -> None:
    cluster.views = [view("login", "203.0.113.7", 5)]
    page = text(client.get(reverse(LIVE)))
    confirm = client.get(reverse(RESET), {"group": "login", "key": "203.0.113.7"})

    assert f'href="{reverse(RESET)}?group=login&amp;key=203.0.113.7"' in page
    assert confirm.status_code == 200
    assert "Reset key <strong>203.0.113.7</strong> in group <strong>login</strong>" in text(confirm)
    assert cluster.resets == []  # nothing happens on GET
    with caplog.at_level(logging.INFO, logger="django_dratelimit"):
        done = client.post(reverse(RESET), {"group": "login", "key": "203.0.113.7"}, follow=True)

    assert cluster.resets == [("login", "203.0.113.7", LiveCountersAdmin.reset_timeout)]
    assert done.redirect_chain == [(reverse(LIVE), 302)]
    assert "Reset key &#x27;203.0.113.7&#x27; in group &#x27;login&#x27;: 2 processes" in text(done)
    assert "resetter reset key '203.0.113.7' in group 'login' from the admin" in caplog.text


def test_a_group_reset(client: Client, resetter: User, cluster: FakeCluster) -> None:
    cluster.views = [view("login", "203.0.113.7", 5)]
    page = text(client.get(reverse(LIVE)))
    confirm = text(client.get(reverse(RESET), {"group": "login"}))
    client.post(reverse(RESET), {"group": "login"})

    assert f'href="{reverse(RESET)}?group=login"' in page
    assert "Reset every counter of group <strong>login</strong>" in confirm
    assert 'name="key"' not in confirm
    assert cluster.resets == [("login", None, LiveCountersAdmin.reset_timeout)]


@pytest.mark.parametrize(
    ("error", "shown"),
    [
        (cluster_client.NoAnswer("nobody answered"), "No process answered. nobody answered"),
        (ValueError("key must be a non-empty string"), "key must be a non-empty string"),
        (RuntimeError("a bug"), "Unexpected error: RuntimeError: a bug"),
    ],
)
def test_a_failed_reset_says_why(
    client: Client,
    resetter: User,
    cluster: FakeCluster,
    caplog: pytest.LogCaptureFixture,
    error: Exception,
    shown: str,
) -> None:
    cluster.reset_error = error
    done = client.post(reverse(RESET), {"group": "login", "key": "k"}, follow=True)

    assert done.status_code == 200
    assert "Reset of key &#x27;k&#x27; in group &#x27;login&#x27; failed. " + shown in text(done)
    assert "resetter could not reset key 'k' in group 'login'" in caplog.text
    assert ("Traceback" in caplog.text) == isinstance(error, RuntimeError)


def test_a_reset_without_a_group_changes_nothing(
    client: Client, resetter: User, cluster: FakeCluster
) -> None:
    done = client.post(reverse(RESET), {"group": " "}, follow=True)

    assert "Choose a group to reset" in text(done)
    assert cluster.resets == []


def test_resets_need_the_csrf_token(resetter: User, cluster: FakeCluster) -> None:
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(resetter)
    refused = browser.post(reverse(RESET), {"group": "login", "key": "k"})
    confirm = browser.get(reverse(RESET), {"group": "login", "key": "k"})
    token = confirm.context["csrf_token"]
    accepted = browser.post(
        reverse(RESET), {"group": "login", "key": "k", "csrfmiddlewaretoken": token}
    )

    assert refused.status_code == 403
    assert accepted.status_code == 302
    assert cluster.resets == [("login", "k", LiveCountersAdmin.reset_timeout)]


def test_only_get_and_post(client: Client, resetter: User, cluster: FakeCluster) -> None:
    assert client.put(reverse(RESET)).status_code == 405
    assert client.post(reverse(LIVE)).status_code == 405


# -- costs nothing until opened -----------------------------------------------------------------


def test_startup_imports_no_client_and_starts_no_thread() -> None:
    script = (
        "import sys, threading, django; django.setup(); "
        "from django.contrib import admin; admin.site.get_urls(); "
        "print(json.dumps([sorted(m for m in sys.modules if m.startswith('django_dratelimit')), "
        "[t.name for t in threading.enumerate()]]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", "import json; " + script],
        cwd=ROOT,
        env={"DJANGO_SETTINGS_MODULE": "tests.settings", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    modules, threads = json.loads(result.stdout)

    assert "django_dratelimit.admin" in modules
    assert "django_dratelimit.ops.client" not in modules
    assert "django_dratelimit.ops.live" not in modules
    assert threads == ["MainThread"]


# -- a real sync node, over Redis ---------------------------------------------------------------


@pytest.fixture
def synced_limiter(redis_db: RedisServer) -> Iterator[Limiter]:
    layers = {"default": layer_config("pubsub", redis_db.url)}
    with override_settings(CHANNEL_LAYERS=layers, DRATELIMIT={"SYNC_INTERVAL": 0.01}):
        limiter = Limiter()
        set_limiter(limiter)
        limiter.get("warm-up", "-", "1/m")  # the first use starts the sync thread
        # Asked before it subscribes to the group, a pub/sub node never hears the request.
        node = limiter.sync.node if limiter.sync is not None else None
        assert node is not None
        wait_for(lambda: node.joined.is_set() and node.channel, 5, "the node to join")
        yield limiter
        set_limiter(None)


def test_a_real_node_answers_and_resets(
    client: Client, resetter: User, synced_limiter: Limiter
) -> None:
    for _ in range(3):
        synced_limiter.hit("admin-test", "hot-key", "50/h")
    synced_limiter.hit("admin-test", "cool-key", "50/h")
    data = client.get(reverse(DATA), {"group": "admin-test"}).json()

    assert data["error"] is None
    assert data["processes"] == 1
    rows = {row["key"]: row for row in data["groups"][0]["rows"]}
    assert (rows["hot-key"]["count"], rows["hot-key"]["limit"]) == (3, None)
    assert rows["cool-key"]["count"] == 1
    client.post(reverse(RESET), {"group": "admin-test", "key": "hot-key"})
    after = client.get(reverse(DATA), {"group": "admin-test"}).json()

    assert [row["key"] for row in after["groups"][0]["rows"]] == ["cool-key"]
    assert synced_limiter.get("admin-test", "hot-key", "50/h").count == 0
