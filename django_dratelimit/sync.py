"""The sync thread: shares this process's counts with the cluster through a Channels group.

``SyncNode`` is the protocol, written against any channel layer and loop.
``SyncThread`` gives it one private thread, loop and layer instance per OS
process: channel-layer objects are bound to the loop that made them, and a
channels_redis instance made before a fork would be shared by the children.
Request threads never call into either; they only mark buckets dirty.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from channels.layers import channel_layers
from django.utils.module_loading import import_string

from .conf import conf
from .consumers import RateLimitConsumer
from .inspect import apply_reset_request, inspect_answer
from .logutil import log_throttled
from .metrics import Metrics
from .protocol import SYNC_REQUEST, VERSION, chunks, state_message
from .store import BucketKey, CounterStore, ResetState

logger = logging.getLogger("django_dratelimit")

MAX_BACKOFF = 5.0
MAX_QUEUED_HITS = 10_000
_IN_MEMORY = "channels.layers.InMemoryChannelLayer"


def is_idle_timeout(exc: BaseException) -> bool:
    """redis-py's socket timeout firing during an idle blocking receive."""
    return type(exc).__name__ == "TimeoutError" and type(exc).__module__.startswith("redis")


class SyncNode:
    """This process as a member of the sync group, on whatever loop runs it."""

    def __init__(
        self,
        store: CounterStore,
        layer: Any,
        *,
        group: str = "dratelimit",
        interval: float = 0.05,
        anti_entropy: float = 5.0,
        chunk: int = 500,
        clock: Callable[[], float] = time.time,
        layer_name: str = "",
    ) -> None:
        self.store = store
        self.layer = layer
        self.group = group
        self.interval = interval
        self.anti_entropy = anti_entropy
        self.chunk = chunk
        self.clock = clock
        self.layer_name = layer_name or type(layer).__name__
        self.metrics = Metrics()
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.channel = ""
        self.joined = asyncio.Event()
        self.first_peer = threading.Event()
        self._degraded = False
        self._failures = 0
        self._hits: asyncio.Queue[BucketKey] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle ---------------------------------------------------------------

    async def run(self) -> None:
        """Join the group, ask for state, then receive and send until cancelled."""
        self._loop = asyncio.get_running_loop()
        self.store.track_dirty = True
        if self.interval == 0:
            self._hits = asyncio.Queue()
            self.store.on_hit = self._queue_hit
        # The pub/sub layer subscribes here, so even this needs the broker.
        while not await self._attempt(self._open_channel):
            self.joined.set()
            await asyncio.sleep(self._backoff())
        self.consumer = RateLimitConsumer(self)
        await self._attempt(self._join_and_announce)
        self.joined.set()
        _raise_if_cancelling()
        tasks = [
            asyncio.ensure_future(self._receive_loop()),
            asyncio.ensure_future(self._send_loop()),
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def close(self) -> None:
        """Leave the group and release the layer's connections."""
        self.store.stop_tracking()
        if self.channel:
            # The broker may be down; the membership then expires on its own.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.layer.group_discard(self.group, self.channel), 2)
        await close_layer(self.layer)

    def _queue_hit(self, bucket_key: BucketKey) -> None:
        # Called from request threads when SYNC_INTERVAL = 0: wake the loop for this hit.
        loop, hits = self._loop, self._hits
        if loop is None or hits is None:
            return
        # The loop may close under us at shutdown; the dirty set still has the hit.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_put_hit, hits, bucket_key)

    def heard_from_peer(self) -> None:
        self.first_peer.set()

    # -- sending -----------------------------------------------------------------------

    async def _send_loop(self) -> None:
        next_anti_entropy = self.clock() + self.anti_entropy
        while True:
            idle = True
            if self._hits is not None:
                idle = not await self._send_next_hit()
            else:
                await asyncio.sleep(self.interval)
            if self._degraded:
                await asyncio.sleep(self._backoff())
                if not await self._attempt(self._recover):
                    continue
                self._degraded = False
                next_anti_entropy = self.clock() + self.anti_entropy
            # With one message per hit the dirty set only matters when idle (retries).
            await self._attempt(functools.partial(self.flush, buckets=idle))
            if self.clock() >= next_anti_entropy:
                next_anti_entropy = self.clock() + self.anti_entropy
                await self._attempt(self._anti_entropy)

    async def _send_next_hit(self) -> bool:
        """SYNC_INTERVAL = 0: one message per hit, as the seed did (kept to compare)."""
        assert self._hits is not None
        try:
            bucket_key = await asyncio.wait_for(self._hits.get(), timeout=0.5)
        except TimeoutError:
            return False
        states = self.store.states([bucket_key])
        if states:
            await self._attempt(lambda: self._group_send(state_message(self.store.origin, states)))
        return True

    async def flush(self, buckets: bool = True) -> None:
        """Send every bucket changed since the last round, in chunks."""
        states = self.store.take_dirty() if buckets else []
        resets = self.store.take_pending_resets()
        if not states and not resets:
            return
        try:
            await self._send_states(states, resets, None)
        except BaseException:
            self.store.mark_dirty(s[:4] for s in states)
            self._requeue_resets(resets)
            raise

    def _requeue_resets(self, resets: list[ResetState]) -> None:
        if resets and self.store.track_dirty:
            with self.store._lock:
                self.store._pending_resets[:0] = resets

    async def _send_states(
        self, states: list[Any], resets: list[ResetState], channel: str | None
    ) -> None:
        origin = self.store.origin
        batches = list(chunks(states, self.chunk)) or [[]]
        for index, batch in enumerate(batches):
            message = state_message(origin, batch, resets if index == 0 else ())
            if channel is None:
                await self._group_send(message)
            else:
                await self.layer.send(channel, message)
                self._sent(len(batch))

    async def _group_send(self, message: dict[str, Any]) -> None:
        await self.layer.group_send(self.group, message)
        self._sent(len(message.get("buckets", ())))

    def _sent(self, buckets: int) -> None:
        self.metrics.messages_sent += 1
        self.metrics.buckets_sent += buckets
        self.metrics.last_send_ok = self.clock()

    async def send_full_state(self, channel: str | None, own_only: bool) -> None:
        """Every live bucket (and every remembered reset) to a channel or the group."""
        states = self.store.live_states(self.clock(), own_only=own_only)
        await self._send_states(states, self.store.reset_states(), channel)

    async def _anti_entropy(self) -> None:
        # Re-join too: channels_redis forgets members after group_expiry, and a
        # Redis restart forgets every group.
        await self.layer.group_add(self.group, self.channel)
        await self.send_full_state(None, own_only=True)

    async def _open_channel(self) -> None:
        self.channel = await self.layer.new_channel()

    async def _join_and_announce(self) -> None:
        await self.layer.group_add(self.group, self.channel)
        await self.layer.group_send(
            self.group,
            {"type": SYNC_REQUEST, "v": VERSION, "node": self.store.origin, "reply": self.channel},
        )

    async def _recover(self) -> None:
        """Back after a broker error: re-join, re-send everything, catch up."""
        await self._join_and_announce()
        await self.send_full_state(None, own_only=True)
        logger.info("dratelimit: sync is back after %d failed attempt(s)", self._failures)
        self._failures = 0

    # -- receiving -------------------------------------------------------------------

    async def _receive_loop(self) -> None:
        while True:
            try:
                message = await self.layer.receive(self.channel)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                _raise_if_cancelling()
                if is_idle_timeout(exc):
                    self.metrics.receive_timeouts += 1
                    log_throttled(
                        "idle-timeout",
                        logging.WARNING,
                        "dratelimit: the channel layer's receive timed out while idle; set "
                        "socket_timeout above 5 s in the Redis host config (see README)",
                        every=3600.0,
                    )
                    continue
                self._broker_error("receive", exc)
                await asyncio.sleep(self._backoff())
                continue
            self.metrics.messages_received += 1
            await self.consumer.dispatch(message)

    # -- inspect / reset (answers to the management command) ----------------------

    def node_info(self) -> dict[str, Any]:
        return {
            "node": self.store.origin,
            "host": self.host,
            "pid": self.pid,
            "layer": self.layer_name,
            "group": self.group,
            "buckets": len(self.store),
            "sync_interval": self.interval,
            "metrics": self.metrics.as_dict(),
        }

    async def answer_inspect(self, reply: str, message: dict[str, Any]) -> None:
        await self.layer.send(reply, inspect_answer(self, message))

    async def answer_reset(self, reply: str | None, message: dict[str, Any]) -> None:
        answer = apply_reset_request(self, message)
        if reply is not None:
            await self.layer.send(reply, answer)

    # -- errors ------------------------------------------------------------------------

    async def _attempt(self, operation: Callable[[], Any]) -> bool:
        """Run a broker operation; on failure count it, log it (throttled), degrade."""
        try:
            await operation()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            _raise_if_cancelling()
            self._broker_error("send", exc)
            return False
        return True

    def _broker_error(self, where: str, exc: BaseException) -> None:
        self.metrics.broker_errors += 1
        self.metrics.last_error = f"{where}: {type(exc).__name__}: {exc}"
        self._failures += 1
        self._degraded = True
        log_throttled(
            f"broker-{where}:{self.store.origin}",
            logging.WARNING,
            "dratelimit: channel layer %s failed (%s: %s); limiting with local counts and retrying",
            where,
            type(exc).__name__,
            exc,
            every=max(self.anti_entropy, 5.0),
        )

    def _backoff(self) -> float:
        return float(min(MAX_BACKOFF, 0.1 * 2 ** min(self._failures, 10)))


def _raise_if_cancelling() -> None:
    """redis-py can turn a cancellation into a connection error; don't swallow it."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _put_hit(queue: asyncio.Queue[BucketKey], bucket_key: BucketKey) -> None:
    if queue.qsize() < MAX_QUEUED_HITS:
        queue.put_nowait(bucket_key)


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
        self._group = conf.GROUP
        self._interval = conf.SYNC_INTERVAL
        self._anti_entropy = conf.ANTI_ENTROPY_INTERVAL
        self._chunk = conf.MAX_MESSAGE_BUCKETS

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
            group=self._group,
            interval=self._interval,
            anti_entropy=self._anti_entropy,
            chunk=self._chunk,
            layer_name=str(config.get("BACKEND", "")),
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
    from django.conf import settings

    alias = conf.CHANNEL_LAYER
    if alias is None:
        return None
    config = (getattr(settings, "CHANNEL_LAYERS", None) or {}).get(alias)
    if not config:
        return None  # local only; the system checks say so
    if config.get("BACKEND") == _IN_MEMORY:
        return None  # nobody outside this process could hear us
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
        thread.node.first_peer.wait(wait)
    return thread


@atexit.register
def _stop_all() -> None:
    for thread in list(_threads):
        thread.stop(timeout=1.0)
    _threads.clear()


def _forget_after_fork() -> None:
    _threads.clear()  # those threads do not exist in the child


os.register_at_fork(after_in_child=_forget_after_fork)
