"""The process's limiter: the ``limiter`` facade, ``get_limiter`` and ``set_limiter``.

One object for the life of the process. Its state is built from settings on
first use and rebuilt in place when ``DRATELIMIT`` or ``CHANNEL_LAYERS``
change; the sync thread is stopped then, and started again on next use, in a
forked child too.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from django.core.signals import setting_changed
from django.dispatch import receiver

from .conf import conf
from .limiter import Limiter
from .logutil import log_throttled
from .usage import Usage


class ProcessLimiter(Limiter):
    """The one process limiter: ``limiter`` is this object, for the life of the process.

    Its state (store, clock, sync thread) is built from settings on first use
    and rebuilt in place when they change, so ``limiter.hit`` is this object's
    own method and a method kept from before (``check = limiter.hit``) follows
    every change. ``set_limiter(other)`` makes it share ``other``'s state (one
    ``__dict__``): the facade, kept methods and ``other`` are then one limiter.
    """

    # While unbuilt, hit() takes its slow path, which builds. Both flags are read
    # as attributes: reading ``__dict__`` would cost hit() ~25 ns from then on.
    _fast = False
    _built = False

    def __init__(self) -> None:
        """Nothing yet: settings may not be configured when this module is imported."""

    def is_built(self) -> bool:
        return self._built

    def build(self) -> None:
        """Build the state from settings (in place: its own attributes), once."""
        if self._built:
            return
        with _lock:
            if not self._built:
                Limiter.__init__(self)  # if it raises, _built stays False: built again
                self._built = True

    # The entry points that can find it unbuilt (get_limiter() builds it first).
    def _hit(self, *args: Any) -> Usage:
        self.build()
        return super()._hit(*args)

    def get(self, *args: Any, **kwargs: Any) -> Usage:
        self.build()
        return super().get(*args, **kwargs)

    def reset(self, group: str, key: str | None = None) -> int:
        self.build()
        return super().reset(group, key)

    def close(self) -> None:
        if self._built:
            super().close()

    def __repr__(self) -> str:
        return f"<the process limiter facade, sharing {_installed or 'its own state'!r}>"


_lock = threading.RLock()  # set_limiter() builds the state it closes under it
_process = ProcessLimiter()
# The limiter given to set_limiter(), whose state the process limiter shares.
_installed: Limiter | None = None
# The process limiter's own state while it shares another's (set_limiter(limiter) restores it).
_own_state: dict[str, Any] = {}

limiter: Limiter = _process  # the facade users import


def get_limiter() -> Limiter:
    """This process's limiter, built from settings on first use."""
    installed = _installed
    if installed is not None:
        return installed
    if not _process._built:
        _process.build()
    return _process


def set_limiter(new: Limiter | None) -> Limiter | None:
    """Install ``new`` as this process's limiter (tests); None: a fresh one from settings.

    The old one is closed (its sync thread stopped) and returned. Installing the
    process limiter itself (what ``get_limiter()`` returned before) brings back its
    own state.
    """
    global _installed, _own_state
    with _lock:
        old: Limiter | None = _installed or (_process if _process.is_built() else None)
        if new is not old:
            _process.close()  # the old one's state: _process shares it
            if new is None and _installed is None:
                # Its own state, rebuilt in place on next use (hit() first takes its slow path).
                _process._built = _process._fast = False
            elif new is None or new is _process:
                # Back to its own state (a fresh one for None), from the installed one's.
                _process.__dict__ = {} if new is None else _own_state
                _installed, _own_state = None, {}
            else:
                if _installed is None:
                    _own_state = _process.__dict__  # to come back to
                _process.__dict__ = new.__dict__
                _process._built = True  # stored in the shared state: it is new's
                _installed = new
        if new is not None and _process.is_built():
            _process.rearm()  # a limiter installed again joins the cluster again
    return old


@receiver(setting_changed)
def _rebuild_limiter(setting: str, **kwargs: Any) -> None:
    if setting in ("DRATELIMIT", "CHANNEL_LAYERS"):
        set_limiter(None)  # the same object, with a fresh state from the new settings


def start_sync_on_request(**kwargs: Any) -> None:
    """``request_started``: a process joins the cluster at its first request of any kind.

    Joining at the first *limited* request would decide that request, and every
    limited request until the peers' answer arrives, on this process's counts
    alone. Connected in ``AppConfig.ready()``; after the first request it costs
    two attribute reads.
    """
    if _process._built and _process.sync_checked:
        return
    try:
        if conf.ENABLED:
            get_limiter().ensure_sync()
    except Exception:
        # Bad settings (system checks do not run under gunicorn or uvicorn): only the
        # limited routes may fail, never a health check.
        log_throttled(
            "sync-start", logging.ERROR, "dratelimit: cannot start the limiter", exc_info=True
        )


def _after_fork() -> None:
    global _lock
    _lock = threading.RLock()  # another thread may have held it at the fork
    if _process.is_built():
        _process.after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork)
