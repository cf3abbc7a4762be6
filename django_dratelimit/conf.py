"""Read ``settings.DRATELIMIT`` with defaults, at call time (so override_settings works)."""

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
    "IP_META_KEY": None,
    "IPV4_MASK": 32,
    "IPV6_MASK": 64,
    "MAX_KEYS": 100_000,
    # Cluster sync
    "CHANNEL_LAYER": "default",
    "GROUP": None,  # None: site_group(), one per SECRET_KEY
    "SYNC_INTERVAL": 0.05,
    "ANTI_ENTROPY_INTERVAL": 5.0,
    "MAX_MESSAGE_BUCKETS": 500,
    "STARTUP_SYNC_WAIT": 0.0,
    # Strict mode (reserved for the strict-mode issue)
    "STRICT_CACHE": "default",
    "STRICT_FAIL_OPEN": False,
    # Operations: None registers the Prometheus collector when prometheus_client imports.
    "PROMETHEUS": None,
}


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
            merged = {**DEFAULTS, **(value if isinstance(value, dict) else {})}
            self._merged = merged
        return merged[name]

    def clear(self) -> None:
        self._merged = None

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
    def CHANNEL_LAYER(self) -> str | None:
        return self._get("CHANNEL_LAYER")  # type: ignore[no-any-return]

    @property
    def GROUP(self) -> str:
        group = self._get("GROUP")
        return site_group() if group is None else str(group)

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
    def STRICT_CACHE(self) -> str:
        return str(self._get("STRICT_CACHE"))

    @property
    def STRICT_FAIL_OPEN(self) -> bool:
        return bool(self._get("STRICT_FAIL_OPEN"))

    @property
    def PROMETHEUS(self) -> bool | None:
        return self._get("PROMETHEUS")  # type: ignore[no-any-return]


conf = Settings()


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
    digest = salted_hmac("django_dratelimit.conf.site_group", "sync group", secret=secret)
    return f"dratelimit-{digest.hexdigest()[:10]}"


@receiver(setting_changed)
def _clear_settings_cache(setting: str, **kwargs: Any) -> None:
    if setting == "DRATELIMIT":
        conf.clear()
