"""django-ratelimit 4.1's own test suite, run against this app with only its imports changed.

The suite ships in django-ratelimit's wheel (``django_ratelimit/tests.py``).
It is read from the installed package when this module is collected, never
copied into this repository. Its ``from django_ratelimit... import ...``
statements are rewritten to this app's equivalents (``IMPORTS``); nothing
else in it changes. It runs under its own module name, so the dotted paths it
gives to itself (``"django_ratelimit.tests.mykey"``) resolve to the rewritten
module, and with its own settings (``SUITE_SETTINGS``: its repository's
``test_settings.py``, which the wheel does not ship), including its
``RATELIMIT_*`` settings under their old names.

Each of its tests runs on a fresh limiter with a clock that does not move:
the equivalent of its ``cache.clear()`` in ``setUp``, without a real window
boundary falling inside a test. Every test must pass, except the
``EXPECTED_FAILURES``, each with its reason: they test django-ratelimit's
cache, which this app does not count in.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import sys
import types
import unittest
from collections.abc import Iterator

import pytest
from django.test import override_settings

from django_dratelimit.limiter import Limiter, set_limiter
from django_dratelimit.local.store import CounterStore
from tests.conftest import FakeClock

SUITE_MODULE = "django_ratelimit.tests"
SUITE_VERSION = "4.1.0"

# Each name the suite imports from django_ratelimit -> where this app has it.
IMPORTS: dict[tuple[str, str], tuple[str, str]] = {
    ("django_ratelimit.decorators", "ratelimit"): ("django_dratelimit.decorators", "ratelimit"),
    ("django_ratelimit.exceptions", "Ratelimited"): ("django_dratelimit.exceptions", "Ratelimited"),
    ("django_ratelimit.core", "get_usage"): ("django_dratelimit.core", "get_usage"),
    ("django_ratelimit.core", "is_ratelimited"): ("django_dratelimit.core", "is_ratelimited"),
    # Its private helpers, which its tests call directly.
    ("django_ratelimit.core", "_split_rate"): ("django_dratelimit.rates", "split_rate"),
    ("django_ratelimit.core", "_get_ip"): ("django_dratelimit.keys", "client_ip"),
}

# django-ratelimit's test_settings.py, restated: RATELIMIT_USE_CACHE and the caches
# its cache tests name (a LocMem default; memcached and Redis that cannot be reached;
# a cache that forgets at once).
SUITE_SETTINGS: dict[str, object] = {
    "RATELIMIT_USE_CACHE": "default",
    "CACHES": {
        "default": {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            "LOCATION": "ratelimit-tests",
        },
        "connection-errors": {
            "BACKEND": "django.core.cache.backends.memcached.PyMemcacheCache",
            "LOCATION": "test-connection-errors",
        },
        "connection-errors-redis": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": "redis://test-connection-errors",
            "OPTIONS": {"IGNORE_EXCEPTIONS": True},
        },
        "instant-expiration": {"BACKEND": "django.core.cache.backends.dummy.DummyCache"},
    },
}

# Counts live in process memory here (a cache only for strict mode), so what
# these tests check of django-ratelimit's cache cannot happen.
_NO_CACHE = "counts live in process memory, not in RATELIMIT_USE_CACHE (read as STRICT_CACHE)"
# test id -> (why it fails here, the exception its failure report must end with)
EXPECTED_FAILURES: dict[str, tuple[str, str]] = {
    "CacheFailTests.test_bad_cache": (
        f"expects InvalidCacheBackendError for a cache that does not exist; {_NO_CACHE}, "
        "so no cache is opened",
        "AssertionError: InvalidCacheBackendError not raised",
    ),
    "CacheFailTests.test_cache_timeout": (
        "expects a cache that forgets at once (DummyCache) never to limit; "
        f"{_NO_CACHE}, which does not forget, so the second request is limited",
        "django_dratelimit.exceptions.Ratelimited",
    ),
    "CacheFailTests.test_fail_open_setting": (
        "expects RATELIMIT_FAIL_OPEN to admit every request when the cache is unreachable; "
        f"{_NO_CACHE}, which is always reachable, so the second request is limited",
        "AssertionError",
    ),
    "CacheFailTests.test_limit_on_cache_connection_error": (
        "expects the first request to be limited because memcached is unreachable; "
        f"{_NO_CACHE}, so it is admitted",
        "AssertionError",
    ),
    "CacheFailTests.test_is_ratelimited_cache_connection_error_with_increment": (
        "expects the first hit to be limited because memcached is unreachable; "
        f"{_NO_CACHE}, so it is admitted",
        "AssertionError",
    ),
    "CacheFailTests.test_is_ratelimited_cache_connection_error_with_increment_redis": (
        "expects the first hit to be limited because Redis is unreachable; "
        f"{_NO_CACHE}, so it is admitted",
        "AssertionError",
    ),
}


class _RewriteImports(ast.NodeTransformer):
    """``from django_ratelimit.X import a, b`` -> this app's modules, per IMPORTS."""

    def __init__(self) -> None:
        self.rewritten: list[tuple[str, str]] = []

    def visit_Import(self, node: ast.Import) -> ast.Import:
        for alias in node.names:
            if alias.name.split(".")[0] == "django_ratelimit":
                raise AssertionError(f"the suite imports {alias.name}: map it in IMPORTS")
        return node

    def visit_ImportFrom(self, node: ast.ImportFrom) -> ast.AST | list[ast.AST]:
        module = node.module or ""
        if module.split(".")[0] != "django_ratelimit":
            return node
        replacements: list[ast.AST] = []
        for alias in node.names:
            if (module, alias.name) not in IMPORTS:
                raise AssertionError(f"the suite imports {alias.name} from {module}: map it")
            ours, name = IMPORTS[module, alias.name]
            self.rewritten.append((module, alias.name))
            local = alias.asname or alias.name
            replacement = ast.ImportFrom(
                module=ours, names=[ast.alias(name, None if local == name else local)], level=0
            )
            replacements.append(ast.copy_location(replacement, node))
        return replacements


def load_suite() -> types.ModuleType:
    """django-ratelimit's tests.py from its installed wheel, with the imports rewritten."""
    assert importlib.metadata.version("django-ratelimit") == SUITE_VERSION
    spec = importlib.util.find_spec(SUITE_MODULE)
    assert spec is not None
    assert spec.origin is not None
    assert spec.loader is not None
    source = spec.loader.get_source(SUITE_MODULE)  # type: ignore[attr-defined]
    rewriter = _RewriteImports()
    tree = ast.fix_missing_locations(rewriter.visit(ast.parse(source, spec.origin)))
    assert sorted(rewriter.rewritten) == sorted(IMPORTS), "every mapped import is used"
    module = types.ModuleType(SUITE_MODULE)
    module.__file__ = spec.origin
    module.__spec__ = importlib.util.spec_from_loader(SUITE_MODULE, loader=None)
    exec(compile(tree, spec.origin, "exec"), module.__dict__)
    return module


def suite_cases(module: types.ModuleType) -> dict[str, unittest.TestCase]:
    """``{"Class.test_name": TestCase instance}`` for every test in the suite."""
    cases = {}
    loader = unittest.TestLoader()
    for value in vars(module).values():
        if isinstance(value, type) and issubclass(value, unittest.TestCase):
            for name in loader.getTestCaseNames(value):
                cases[f"{value.__name__}.{name}"] = value(name)
    return cases


SUITE = load_suite()
CASES = suite_cases(SUITE)


@pytest.fixture
def as_the_suite(monkeypatch: pytest.MonkeyPatch, clock: FakeClock) -> Iterator[None]:
    """Its module name, its settings, and a fresh fake-clock limiter."""
    monkeypatch.setitem(sys.modules, SUITE_MODULE, SUITE)
    with override_settings(**SUITE_SETTINGS):
        set_limiter(Limiter(CounterStore(), clock=clock, sync=False))
        yield


def run(test_id: str) -> unittest.TestResult:
    result = unittest.TestResult()
    unittest.TestSuite([CASES[test_id]]).run(result)  # with setUpClass / tearDownClass
    return result


def test_the_suite_is_the_one_these_expectations_are_for() -> None:
    assert len(CASES) == 52
    assert set(EXPECTED_FAILURES) <= set(CASES)
    assert len(CASES) - len(EXPECTED_FAILURES) == 46


@pytest.mark.django_db
@pytest.mark.parametrize("test_id", sorted(set(CASES) - set(EXPECTED_FAILURES)))
def test_passes(test_id: str, as_the_suite: None) -> None:
    result = run(test_id)

    problems = [text for _, text in result.errors + result.failures]
    assert result.testsRun == 1
    assert result.wasSuccessful(), "\n".join(problems)


@pytest.mark.django_db
@pytest.mark.parametrize("test_id", sorted(EXPECTED_FAILURES))
def test_fails_for_its_reason(test_id: str, as_the_suite: None) -> None:
    reason, symptom = EXPECTED_FAILURES[test_id]
    result = run(test_id)

    # It ran up to its check of the cache and failed there, not on an import or in a setup.
    [(_, report)] = result.errors + result.failures
    assert result.testsRun == 1
    assert report.splitlines()[-1].startswith(symptom), f"{reason}; got:\n{report}"
    assert f"in {test_id.split('.')[1]}" in report  # raised in the test's own body
