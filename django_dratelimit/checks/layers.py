"""The sync settings and the channel layer they name: intervals, group, alias, backend."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage
from django.utils.module_loading import import_string

from ..conf import DEFAULTS
from .messages import error, warning

REDIS_CORE = "channels_redis.core.RedisChannelLayer"
_GROUP_NAME_RE = re.compile(r"^[a-zA-Z\d\-_.]{1,99}$")


def check_sync(get: Callable[[str], Any], raw: dict[str, Any]) -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    for name in ("SYNC_INTERVAL", "ANTI_ENTROPY_INTERVAL", "STARTUP_SYNC_WAIT"):
        value = get(name)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            errors.append(error(f"DRATELIMIT[{name!r}] must be a number of seconds >= 0.", "", 20))
    interval = get("SYNC_INTERVAL")
    if isinstance(interval, int | float) and not isinstance(interval, bool) and interval == 0:
        errors.append(
            warning(
                "DRATELIMIT['SYNC_INTERVAL'] = 0 sends one sync message per hit. It is kept "
                "to compare against; under load the sync thread falls behind its own "
                "traffic, and the over-admission bound in README no longer holds.",
                "Leave SYNC_INTERVAL at its default (0.05) or set a small positive value.",
                3,
            )
        )
    budget = get("SYNC_RECEIVE_BUDGET")
    if isinstance(budget, bool) or not isinstance(budget, int | float) or not budget > 0:
        errors.append(
            error(
                "DRATELIMIT['SYNC_RECEIVE_BUDGET'] must be a number of messages a second > 0.",
                "35 (the default) keeps the sync under 1.5% of a core per process at 16 "
                "processes and 2% at 32; more syncs faster and costs more.",
                60,
            )
        )
    if not isinstance(get("BUDGETS"), bool):
        errors.append(error("DRATELIMIT['BUDGETS'] must be True or False.", "", 61))
    headroom = get("BUDGET_HEADROOM")
    if isinstance(headroom, bool) or not isinstance(headroom, int | float) or headroom < 0:
        errors.append(
            error(
                "DRATELIMIT['BUDGET_HEADROOM'] must be a number >= 0.",
                "2 (the default): budget mode starts when what remains is at most twice "
                "what one sync round may admit.",
                62,
            )
        )
    anti = get("ANTI_ENTROPY_INTERVAL")
    if isinstance(anti, int | float) and not isinstance(anti, bool) and anti == 0:
        errors.append(
            error(
                "DRATELIMIT['ANTI_ENTROPY_INTERVAL'] must be more than 0.",
                "5 seconds is a good default.",
                20,
            )
        )
    group = get("GROUP")
    if group is not None and (not isinstance(group, str) or not _GROUP_NAME_RE.match(group)):
        errors.append(
            error(
                f"DRATELIMIT['GROUP'] = {group!r} is not a valid Channels group name.",
                "Use 1 to 99 ASCII letters, digits, '-', '_' or '.'.",
                21,
            )
        )
    alias = get("CHANNEL_LAYER")
    if alias is None:
        return errors
    layers = getattr(settings, "CHANNEL_LAYERS", {}) or {}
    if alias == DEFAULTS["CHANNEL_LAYER"] and "CHANNEL_LAYER" not in raw and alias not in layers:
        return errors  # no Channels configured and none asked for: local limiting, as documented
    if not isinstance(alias, str) or alias not in layers:
        errors.append(
            error(
                f"DRATELIMIT['CHANNEL_LAYER'] = {alias!r} is not an alias in CHANNEL_LAYERS.",
                "Configure CHANNEL_LAYERS (see README, 'Running a cluster'), or set "
                "DRATELIMIT['CHANNEL_LAYER'] = None to limit with local counts only.",
                19,
            )
        )
        return errors
    errors += check_layer_config(alias, layers[alias])
    return errors


def check_layer_config(alias: str, config: Any) -> list[CheckMessage]:
    """The layer must load; warn about channels_redis settings that break a long receive."""
    backend = config.get("BACKEND") if isinstance(config, dict) else None
    try:
        if not isinstance(backend, str):
            raise ImportError("BACKEND is not a dotted path")
        import_string(backend)
    except Exception as exc:
        # At run time the sync thread would log once and limit every process alone.
        return [
            error(
                f"CHANNEL_LAYERS[{alias!r}]['BACKEND'] = {backend!r} cannot be imported "
                f"({exc}); the cluster sync would not run.",
                "Install the package that provides it (channels-redis: pip install "
                "'django-dratelimit[redis]'), or set DRATELIMIT['CHANNEL_LAYER'] = None "
                "to limit with local counts only.",
                26,
            )
        ]
    if backend != REDIS_CORE:
        return []
    hosts = (config.get("CONFIG") or {}).get("hosts") or ["redis://localhost:6379"]
    for host in hosts:
        timeout: Any = None
        if isinstance(host, dict):
            if "socket_timeout" in host and host["socket_timeout"] is None:
                continue  # None: no timeout at all, which is fine
            timeout = host.get("socket_timeout")
            if timeout is None and "socket_timeout=" in str(host.get("address", "")):
                timeout = str(host["address"]).split("socket_timeout=", 1)[1].split("&")[0]
        elif isinstance(host, str) and "socket_timeout=" in host:
            timeout = host.split("socket_timeout=", 1)[1].split("&")[0]
        try:
            ok = timeout is not None and float(timeout) > 5
        except ValueError:
            ok = False
        if not ok:
            return [
                warning(
                    f"CHANNEL_LAYERS[{alias!r}] uses RedisChannelLayer with a socket_timeout "
                    "of at most 5 s (redis-py's default); its 5 s blocking receive then "
                    "times out and reconnects every 5 seconds.",
                    'Use {"address": "redis://...", "socket_timeout": 10} as the host.',
                    2,
                )
            ]
    return []
