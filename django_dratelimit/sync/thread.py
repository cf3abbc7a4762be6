"""The sync thread: one private thread, loop and channel-layer instance per OS process.

Channel-layer objects are bound to the loop that made them, and a channels_redis
instance made before a fork would be shared by the children, so the thread
builds its own layer after any fork and nobody else touches it. Request
threads never call into it; they only mark buckets dirty.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import threading

from channels.layers import channel_layers
from django.utils.module_loading import import_string

from ..conf import conf
from ..local.store import CounterStore
from .keys import signing_keys, sync_groups
from .layers import is_shared, layer_config
from .node import SyncNode

logger = logging.getLogger("django_dratelimit")


class SyncThread:
    """One daemon thread with its own loop, running a SyncNode for this process."""

    def __init__(self, store: CounterStore, alias: str) -> None:
        self.store = store
        self.alias = alias
        self.node: SyncNode | None = None
        self.started = threading.Event()
        self.error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="dratelimit-sync", daemon=True)
        # Read now, in the caller's thread: settings may be overridden per test.
        self._groups = sync_groups()
        self._keys = signing_keys()
        self._interval = conf.SYNC_INTERVAL
        self._anti_entropy = conf.ANTI_ENTROPY_INTERVAL
        self._chunk = conf.MAX_MESSAGE_BUCKETS
        self._receive_budget = conf.SYNC_RECEIVE_BUDGET
        self._budgets = conf.BUDGETS
        self._budget_headroom = conf.BUDGET_HEADROOM

    def start(self) -> None:
        self._thread.start()
        self.started.wait(10)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._main(loop))
        except BaseException as exc:  # pragma: no cover - logged, the limiter stays local
            self.error = exc
            logger.exception("dratelimit: the sync thread stopped")
        finally:
            self.started.set()
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                asyncio.set_event_loop(None)
                loop.close()

    async def _main(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._stop = asyncio.Event()
        try:
            # A private instance, made in this thread after any fork: never the cached one.
            layer = channel_layers.make_backend(self.alias)
        except Exception as exc:
            self.error = exc
            logger.error(
                "dratelimit: cannot build channel layer %r (%s); counts stay local", self.alias, exc
            )
            return
        config = channel_layers.configs.get(self.alias, {})
        node = SyncNode(
            self.store,
            layer,
            groups=self._groups,
            interval=self._interval,
            anti_entropy=self._anti_entropy,
            chunk=self._chunk,
            layer_name=str(config.get("BACKEND", "")),
            keys=self._keys,
            receive_budget=self._receive_budget,
            budgets=self._budgets,
            budget_headroom=self._budget_headroom,
        )
        self.node = node
        # The caller only waits for this point, never for the broker.
        self.started.set()
        task = asyncio.ensure_future(node.run())
        stop = asyncio.ensure_future(self._stop.wait())
        await asyncio.wait([task, stop], return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        # Redis clients can swallow a cancellation that lands mid-connect and
        # carry on, so cancel until the node has really stopped.
        while not task.done():
            task.cancel()
            await asyncio.wait([task], timeout=0.5)
        await asyncio.gather(task, stop, return_exceptions=True)
        if not task.cancelled() and task.exception() is not None:
            logger.error("dratelimit: sync node failed", exc_info=task.exception())
        # Best effort: what changed since the last round (a reset made by a
        # short script, say) goes out before we leave.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(node.flush(), 1.0)
        await node.close()

    def stop(self, timeout: float = 5.0) -> None:
        """Leave the group, close connections and end the thread."""
        self.store.on_hit = None
        self.started.wait(10)
        if self in _threads:
            _threads.remove(self)
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop.set)
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)


_threads: list[SyncThread] = []


def start_sync(store: CounterStore) -> SyncThread | None:
    """Start this process's sync thread if a shared channel layer is configured."""
    alias = conf.CHANNEL_LAYER
    config = layer_config(alias)
    if alias is None or config is None or not is_shared(config):
        return None  # local only (nobody outside this process could hear us); checks say so
    # Import the backend here, not in the sync thread: a fork (gunicorn
    # --preload) during an import in another thread leaves the child a
    # half-initialised module. The sync thread must never import anything.
    try:
        import_string(config["BACKEND"])
    except Exception as exc:
        logger.error(
            "dratelimit: cannot import channel layer %r (%s); counts stay local",
            config.get("BACKEND"),
            exc,
        )
        return None
    thread = SyncThread(store, alias)
    # From now on changes are queued for the thread, even before its loop runs:
    # a reset made right after the first use must not be lost.
    store.track_dirty = True
    thread.start()
    if thread.node is None:
        thread.stop()  # the layer could not be built (logged); limit locally
        store.stop_tracking()
        return None
    _threads.append(thread)
    wait = conf.STARTUP_SYNC_WAIT
    if wait > 0:
        thread.node.caught_up.wait(wait)
    return thread


@atexit.register
def _stop_all() -> None:
    for thread in list(_threads):
        thread.stop(timeout=1.0)
    _threads.clear()


def _forget_after_fork() -> None:
    _threads.clear()  # those threads do not exist in the child


os.register_at_fork(after_in_child=_forget_after_fork)
