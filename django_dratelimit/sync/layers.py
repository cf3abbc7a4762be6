"""Facts about channel layers that both the sync thread and the operator tools need."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

logger = logging.getLogger("django_dratelimit")

IN_MEMORY = "channels.layers.InMemoryChannelLayer"


def is_shared(config: dict[str, Any] | None) -> bool:
    """Whether a CHANNEL_LAYERS entry can carry messages to other processes."""
    return bool(config) and config.get("BACKEND") != IN_MEMORY  # type: ignore[union-attr]


def layer_config(alias: str | None) -> dict[str, Any] | None:
    """The CHANNEL_LAYERS entry for ``alias`` (None when there is none)."""
    from django.conf import settings

    if alias is None:
        return None
    config: dict[str, Any] | None = (getattr(settings, "CHANNEL_LAYERS", None) or {}).get(alias)
    return config


def is_undecodable(exc: BaseException) -> bool:
    """The layer could not deserialize what arrived (msgpack, or channels' own checks)."""
    if type(exc).__module__.startswith("msgpack"):
        return True
    return isinstance(exc, ValueError | TypeError | UnicodeDecodeError) and not type(
        exc
    ).__module__.startswith("redis")


def is_idle_timeout(exc: BaseException) -> bool:
    """redis-py's socket timeout firing during an idle blocking receive."""
    return type(exc).__name__ == "TimeoutError" and type(exc).__module__.startswith("redis")


async def close_layer(layer: Any) -> None:
    """Release a layer's connections without deleting anything on the broker."""
    try:
        if type(layer).__name__ == "RedisPubSubChannelLayer":
            # pub/sub flush only drops local subscriptions
            await asyncio.wait_for(layer.flush(), 3)
        elif hasattr(layer, "close_pools"):
            # not flush(): that deletes every node's groups
            await asyncio.wait_for(layer.close_pools(), 3)
    except Exception:
        logger.debug("dratelimit: error while closing the channel layer", exc_info=True)


def raise_if_cancelling() -> None:
    """redis-py can turn a cancellation into a connection error; don't swallow it."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
