"""Read ``settings.DRATELIMIT`` with defaults, at call time (so override_settings works).

django-ratelimit's ``RATELIMIT_*`` settings are read as fallbacks under their
old names (see ``LEGACY``), so a project that only changed its imports keeps
its settings; ``checks_compat`` tells it where each one moves.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.utils.crypto import salted_hmac

DEFAULTS: dict[str, Any] = {
    "ENABLED": True,
    "ALGORITHM": "fixed_window",
    "RULES": [],
    "VIEW": "django_dratelimit.views.ratelimited",
    "HEADERS": True,
    # "most_restrictive": the headers describe one policy; "all": each of them.
    "HEADER_POLICIES": "most_restrictive",
    "IP_META_KEY": None,
    "IPV4_MASK": 32,
    "IPV6_MASK": 64,
    "MAX_KEYS": 100_000,
    # django-ratelimit's API
    "EXCEPTION_CLASS": None,  # None: Ratelimited
    "STAGGER_WINDOWS": True,
    # Cluster sync
    "CHANNEL_LAYER": "default",
    "GROUP": None,  # None: site_group(), one per SECRET_KEY
    "SYNC_INTERVAL": 0.05,
    # The most batched sync messages a second a process should have to read from its
    # peers: past that many peers, every process stretches its interval to match.
    "SYNC_RECEIVE_BUDGET": 35,
    "ANTI_ENTROPY_INTERVAL": 5.0,
    "MAX_MESSAGE_BUCKETS": 500,
    "STARTUP_SYNC_WAIT": 0.0,
    # Near-exact eventual mode: per-process shares of what remains of a limit.
    "BUDGETS": True,
    "BUDGET_HEADROOM": 2.0,
    # Strict mode (reserved for the strict-mode issue)
    "STRICT_CACHE": "default",
    "STRICT_FAIL_OPEN": False,
    # Operations: None registers the Prometheus collector when prometheus_client imports.
    "PROMETHEUS": None,
}

# django-ratelimit's settings that mean something here, and the DRATELIMIT key they
# fall back to. Its cache only ever held counts: strict mode is what counts in a cache.
LEGACY: dict[str, str] = {
    "RATELIMIT_ENABLE": "ENABLED",
    "RATELIMIT_VIEW": "VIEW",
    "RATELIMIT_IP_META_KEY": "IP_META_KEY",
    "RATELIMIT_IPV4_MASK": "IPV4_MASK",
    "RATELIMIT_IPV6_MASK": "IPV6_MASK",
    "RATELIMIT_EXCEPTION_CLASS": "EXCEPTION_CLASS",
    "RATELIMIT_USE_CACHE": "STRICT_CACHE",
    "RATELIMIT_FAIL_OPEN": "STRICT_FAIL_OPEN",
}
# ... and those that mean nothing here, with the reason.
IGNORED_LEGACY: dict[str, str] = {
    "RATELIMIT_HASH_ALGORITHM": "counters are not cache keys here: nothing is hashed with it",
    "RATELIMIT_CACHE_PREFIX": "strict-mode cache keys always start with 'dratelimit:'",
}


def legacy_values() -> dict[str, Any]:
    """The DRATELIMIT keys set through django-ratelimit's old setting names.

    Empty while django_ratelimit itself is installed: its settings are then its
    own (both apps side by side, during a migration or a benchmark).
    """
    if ratelimit_installed():
        return {}
    values: dict[str, Any] = {}
    for old, new in LEGACY.items():
        if hasattr(settings, old):
            value = getattr(settings, old)
            if new in ("ENABLED", "STRICT_FAIL_OPEN"):
                value = bool(value)  # django-ratelimit reads them as truthy or not
            elif new == "IP_META_KEY" and not value:
                value = None  # django-ratelimit: empty means REMOTE_ADDR
            values[new] = value
    return values


def ratelimit_installed(apps: Sequence[str] | None = None) -> bool:
    """Whether django_ratelimit is in INSTALLED_APPS (by name or by its AppConfig)."""
    if apps is None:
        apps = getattr(settings, "INSTALLED_APPS", ())
    return any(app == "django_ratelimit" or app.startswith("django_ratelimit.") for app in apps)


class Settings:
    """One typed property per key of ``settings.DRATELIMIT``.

    The merged dict is cached (reading ``django.conf.settings`` costs a few
    hundred ns, and the request path reads several keys) and dropped on
    ``setting_changed``, so ``override_settings`` still works.
    """

    _merged: dict[str, Any] | None = None

    def _get(self, name: str) -> Any:
        merged = self._merged
        if merged is None:
            value = getattr(settings, "DRATELIMIT", {})
            own = value if isinstance(value, dict) else {}
            merged = {**DEFAULTS, **legacy_values(), **own}
            self._merged = merged
        return merged[name]

    def clear(self) -> None:
        self._merged = None
        for forget in _on_clear:
            forget()

    @property
    def ENABLED(self) -> bool:
        return bool(self._get("ENABLED"))

    @property
    def ALGORITHM(self) -> str:
        return str(self._get("ALGORITHM"))

    @property
    def RULES(self) -> Sequence[dict[str, Any]]:
        return self._get("RULES")  # type: ignore[no-any-return]

    @property
    def VIEW(self) -> str | Callable[..., Any]:
        return self._get("VIEW")  # type: ignore[no-any-return]

    @property
    def HEADERS(self) -> bool:
        return bool(self._get("HEADERS"))

    @property
    def HEADER_POLICIES(self) -> str:
        return str(self._get("HEADER_POLICIES"))

    @property
    def IP_META_KEY(self) -> str | Callable[..., Any] | None:
        return self._get("IP_META_KEY")  # type: ignore[no-any-return]

    @property
    def IPV4_MASK(self) -> int:
        return int(self._get("IPV4_MASK"))

    @property
    def IPV6_MASK(self) -> int:
        return int(self._get("IPV6_MASK"))

    @property
    def MAX_KEYS(self) -> int:
        return int(self._get("MAX_KEYS"))

    @property
    def EXCEPTION_CLASS(self) -> str | type[Exception] | None:
        return self._get("EXCEPTION_CLASS")  # type: ignore[no-any-return]

    @property
    def STAGGER_WINDOWS(self) -> bool:
        return bool(self._get("STAGGER_WINDOWS"))

    @property
    def CHANNEL_LAYER(self) -> str | None:
        return self._get("CHANNEL_LAYER")  # type: ignore[no-any-return]

    @property
    def GROUP(self) -> str:
        group = self._get("GROUP")
        return site_group() if group is None else str(group)

    def group_setting(self) -> str | None:
        """GROUP as configured: None means derived from SECRET_KEY."""
        group = self._get("GROUP")
        return None if group is None else str(group)

    @property
    def SYNC_RECEIVE_BUDGET(self) -> float:
        return float(self._get("SYNC_RECEIVE_BUDGET"))

    @property
    def SYNC_INTERVAL(self) -> float:
        return float(self._get("SYNC_INTERVAL"))

    @property
    def ANTI_ENTROPY_INTERVAL(self) -> float:
        return float(self._get("ANTI_ENTROPY_INTERVAL"))

    @property
    def MAX_MESSAGE_BUCKETS(self) -> int:
        return int(self._get("MAX_MESSAGE_BUCKETS"))

    @property
    def STARTUP_SYNC_WAIT(self) -> float:
        return float(self._get("STARTUP_SYNC_WAIT"))

    @property
    def BUDGETS(self) -> bool:
        return bool(self._get("BUDGETS"))

    @property
    def BUDGET_HEADROOM(self) -> float:
        return float(self._get("BUDGET_HEADROOM"))

    @property
    def STRICT_CACHE(self) -> str:
        return str(self._get("STRICT_CACHE"))

    @property
    def STRICT_FAIL_OPEN(self) -> bool:
        return bool(self._get("STRICT_FAIL_OPEN"))

    @property
    def PROMETHEUS(self) -> bool | None:
        return self._get("PROMETHEUS")  # type: ignore[no-any-return]


conf = Settings()
# What values compiled from settings (the ``ip`` key's, the request path's) forget on clear().
_on_clear: list[Callable[[], None]] = []


def on_clear(forget: Callable[[], None]) -> None:
    """Call ``forget`` whenever the settings cache is dropped, so a value compiled from
    settings (read once, not per request) is compiled again from the new ones."""
    _on_clear.append(forget)


def site_group() -> str:
    """The default sync group: ``dratelimit-`` and 10 hex digits derived from SECRET_KEY.

    Redis pub/sub ignores the database number, so two sites (or staging and
    production) on one Redis would otherwise share one group, and with it their
    counters and resets. Every process of a site has the same SECRET_KEY; an
    HMAC of it tells nothing about the key.
    """
    try:
        secret = settings.SECRET_KEY
    except ImproperlyConfigured:
        return "dratelimit"
    return group_for_secret(secret)


def group_for_secret(secret: str) -> str:
    digest = salted_hmac(
        "django_dratelimit.conf.site_group", "sync group v2", secret=secret, algorithm="sha256"
    )
    return f"dratelimit-{digest.hexdigest()[:10]}"


@receiver(setting_changed)
def _clear_settings_cache(setting: str, **kwargs: Any) -> None:
    if setting in ("DRATELIMIT", "INSTALLED_APPS") or setting.startswith("RATELIMIT_"):
        conf.clear()
