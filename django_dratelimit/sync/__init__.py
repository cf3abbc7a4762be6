"""The cluster sync: protocol v2, the node and its handlers, the thread, the layer helpers.

Nothing on the request path imports this package: the limiter starts the
thread lazily (``start_sync``) at the first request.
"""

from __future__ import annotations

from .layers import close_layer, is_idle_timeout, is_shared
from .node import SyncNode
from .thread import SyncThread, start_sync

__all__ = ["SyncNode", "SyncThread", "close_layer", "is_idle_timeout", "is_shared", "start_sync"]
