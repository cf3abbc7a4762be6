"""Turn a request into the key it is counted under.

A key function returns ``None`` when it has nothing to count the request by
(an anonymous user for ``user``, a missing header for ``header:X``): the limit
then does not apply to that request. We chose this over a shared empty key,
which would let one client exhaust the limit for everybody who lacks the value.
Cover such requests with a second rule on ``ip``.

The client address is different (``addresses``): every request has one.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Callable
from typing import TypeAlias

from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest

from .addresses import MissingClientAddress, client_ip, ip_key, mask_ip
from .exceptions import ConfigurationError
from .loading import import_callable
from .logutil import log_throttled

__all__ = [
    "InvalidKey",
    "KeyFunc",
    "MissingClientAddress",
    "client_ip",
    "compile_key",
    "mask_ip",
    "normalize",
    "request_key",
    "resolve_key",
]

KeyFunc: TypeAlias = Callable[[str, HttpRequest], "str | None"]
MAX_KEY_BYTES = 256


class InvalidKey(ConfigurationError):
    """A key specification that names no known key type."""


def _user(group: str, request: HttpRequest) -> str | None:
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return None
    return str(user.pk)


def _user_or_ip(group: str, request: HttpRequest) -> str | None:
    user_key = _user(group, request)
    if user_key is not None:
        return f"user:{user_key}"
    return f"ip:{client_ip(request)}"


def _meta_key(name: str) -> str:
    name = name.upper().replace("-", "_")
    if name in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        return name
    return f"HTTP_{name}"


def _header(name: str) -> KeyFunc:
    meta = _meta_key(name)

    def header_key(group: str, request: HttpRequest) -> str | None:
        value = request.META.get(meta)
        return value if value else None

    return header_key


def _query(name: str, source: str) -> KeyFunc:
    def query_key(group: str, request: HttpRequest) -> str | None:
        value = getattr(request, source).get(name)
        return value if value else None

    return query_key


_SIMPLE: dict[str, KeyFunc] = {"ip": ip_key, "user": _user, "user_or_ip": _user_or_ip}
_PREFIXED = {
    "header": _header,
    "get": lambda n: _query(n, "GET"),
    "post": lambda n: _query(n, "POST"),
}


def compile_key(spec: object) -> KeyFunc:
    """Turn a key specification into a function ``(group, request) -> str | None``."""
    if callable(spec):
        return spec
    if not isinstance(spec, str) or not spec:
        raise InvalidKey(f"key {spec!r} must be a string or a callable")
    return _compile_key_string(spec)


@functools.lru_cache(maxsize=1024)
def _compile_key_string(spec: str) -> KeyFunc:
    if spec in _SIMPLE:
        return _SIMPLE[spec]
    kind, sep, name = spec.partition(":")
    if sep:
        if kind in _PREFIXED and name:
            return _PREFIXED[kind](name)  # type: ignore[no-untyped-call]
        raise InvalidKey(
            f"key {spec!r} has an unknown type {kind!r}; use header:NAME, get:NAME or post:NAME"
        )
    if "." in spec:
        return import_callable(spec, "key", InvalidKey)
    raise InvalidKey(
        f"key {spec!r} is unknown; use ip, user, user_or_ip, header:NAME, get:NAME, post:NAME, "
        "a callable or a dotted path to one"
    )


USER_KEYS = frozenset({"user", "user_or_ip"})


def request_key(spec: object) -> KeyFunc:
    """``compile_key(spec)``, returning the key as stored and logging a key function's errors.

    What a compiled limit calls per request: the ``ip`` key as it is (it masks and
    normalizes its address, and logs a raising IP_META_KEY callable itself), any
    other through ``key_value``.
    """
    func = compile_key(spec)
    return func if func is ip_key else functools.partial(key_value, func)


def may_read_user(spec: object) -> bool:
    """Could this key read ``request.user``? (user keys, and any callable we can't see into)."""
    if isinstance(spec, str):
        return spec in USER_KEYS or (":" not in spec and "." in spec)
    return callable(spec)


async def aload_user(request: HttpRequest) -> None:
    """Resolve ``request.user`` the async way before a sync key function reads it.

    Under ASGI, ``request.user`` is a lazy object whose first use queries the
    database, which Django forbids from async code; ``request.auser()`` does not.
    """
    auser = getattr(request, "auser", None)
    if auser is not None:
        request.user = await auser()


def normalize(value: object) -> str | None:
    """A key as stored: a str of at most 256 UTF-8 bytes (longer ones are hashed)."""
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    if not text:
        return None  # an empty key is no key: not a bucket shared by everybody
    if len(text) > MAX_KEY_BYTES // 4:
        raw = text.encode("utf-8", "surrogateescape")
        if len(raw) > MAX_KEY_BYTES:
            return "sha256:" + hashlib.sha256(raw).hexdigest()
    return text


def resolve_key(spec: object, group: str, request: HttpRequest) -> str | None:
    """The key this request counts under, or None; a key function that raises is logged.

    ImproperlyConfigured (no client address, a dotted path that does not
    import) is raised: a configuration error must not turn a limit off.
    """
    return key_value(compile_key(spec), group, request)


def key_value(func: KeyFunc, group: str, request: HttpRequest) -> str | None:
    """``resolve_key`` for a key function already compiled (``compile_key``)."""
    try:
        value = func(group, request)
        # The common key (a short str) is already normalized: skip the call.
        if value.__class__ is str and 0 < len(value) <= MAX_KEY_BYTES // 4:
            return value
        return normalize(value)
    except ImproperlyConfigured:
        raise
    except Exception:
        _log_failure(func, f"the key of group {group!r}")
        return None


def _log_failure(func: object, what: str) -> None:
    """Log (throttled) that a key function raised, with its traceback."""
    name = getattr(func, "__qualname__", repr(func))
    log_throttled(
        f"key:{name}",
        logging.ERROR,
        "dratelimit: key function %s raised (%s); the request is not counted",
        name,
        what,
        every=60.0,
        exc_info=True,
    )
