"""Turn a request into the key it is counted under.

A key function returns ``None`` when it has nothing to count the request by
(an anonymous user for ``user``, a missing header for ``header:X``): the limit
then does not apply to that request. We chose this over a shared empty key,
which would let one client exhaust the limit for everybody who lacks the value.
Cover such requests with a second rule on ``ip``.

The client address is different: every request has one, so when it cannot be
found (``REMOTE_ADDR`` empty behind a Unix-socket proxy, ``IP_META_KEY``
naming a header the request lacks) that is a configuration error, raised as
:class:`MissingClientAddress` on the request, as django-ratelimit does. An
``ip`` limit that quietly stopped limiting would be the worst way to fail.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import logging
from collections.abc import Callable
from typing import Any, TypeAlias

from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest
from django.utils.module_loading import import_string

from .conf import conf, on_clear
from .exceptions import ConfigurationError
from .loading import import_callable
from .logutil import log_throttled

KeyFunc: TypeAlias = Callable[[str, HttpRequest], "str | None"]
MAX_KEY_BYTES = 256


class InvalidKey(ConfigurationError):
    """A key specification that names no known key type."""


class MissingClientAddress(ImproperlyConfigured):
    """The request's client address is missing, empty or not an address."""


def mask_ip(address: str, ipv4_mask: int, ipv6_mask: int) -> str | None:
    """Mask an address to its network (IPv4 /32, IPv6 /64 by default); None if invalid."""
    address = address.strip()
    if address.startswith("[") and "]" in address:  # [v6]:port
        address = address[1 : address.index("]")]
    elif address.count(":") == 1:  # v4:port
        address = address.split(":", 1)[0]
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    prefix = ipv4_mask if ip.version == 4 else ipv6_mask
    network = ipaddress.ip_network(f"{ip}/{prefix}", strict=False)
    return str(network.network_address) if prefix < ip.max_prefixlen else str(ip)


AddressReader: TypeAlias = Callable[[HttpRequest], str]
# client_ip() compiled from the settings, on first use after each settings change:
# reading three settings per request cost about a third of an ``ip`` key.
_address_reader: AddressReader | None = None


def client_ip(request: HttpRequest) -> str:
    """The client address, from REMOTE_ADDR or IP_META_KEY, masked.

    Raises MissingClientAddress when there is none to be had (see the module doc).
    """
    return (_address_reader or _compile_address_reader())(request)


def _compile_address_reader() -> AddressReader:
    global _address_reader
    source = conf.IP_META_KEY
    # A request.META key (REMOTE_ADDR, or a header), else ``read``: a callable.
    meta_key = "REMOTE_ADDR"
    read: Callable[[HttpRequest], Any] | None = None
    if source is None:
        where = meta_key
    elif callable(source):
        where = f"the IP_META_KEY callable {getattr(source, '__qualname__', source)!r}"
        read = source
    elif "." in source:
        where = f"the IP_META_KEY callable {source!r}"
        path = source

        def read(request: HttpRequest) -> Any:
            return import_string(path)(request)  # imported on the request, as before

    else:
        where = f"request.META[{source!r}] (IP_META_KEY)"
        meta_key = source
    forwarded = source is not None and read is None  # a header: maybe a list of hops
    # One argument, so the cache's key is the address itself (no tuple to build).
    mask = functools.lru_cache(maxsize=4096)(
        functools.partial(mask_ip, ipv4_mask=conf.IPV4_MASK, ipv6_mask=conf.IPV6_MASK)
    )

    def reader(request: HttpRequest) -> str:
        raw = request.META.get(meta_key) if read is None else read(request)
        if forwarded and isinstance(raw, str) and "," in raw:
            # X-Forwarded-For: the right-most entry was added by your own proxy;
            # the left-most is whatever the client chose to send.
            raw = raw.rsplit(",", 1)[1]
        masked = mask(raw) if isinstance(raw, str) else None
        if masked is None:
            raise MissingClientAddress(_no_address(where, raw))
        return masked

    _address_reader = reader
    return reader


def _forget_address_reader() -> None:
    global _address_reader
    _address_reader = None


on_clear(_forget_address_reader)


def _no_address(where: str, raw: object) -> str:
    found = "is missing" if raw is None else ("is empty" if raw == "" else f"is {raw!r:.60}")
    return (
        f"no client address for an ip limit: {where} {found}, so the request cannot be "
        "counted. Behind a proxy (or a Unix socket, which leaves REMOTE_ADDR empty), set "
        "DRATELIMIT['IP_META_KEY'] to the header your proxy sets, e.g. 'HTTP_X_FORWARDED_FOR'."
    )


def _user(group: str, request: HttpRequest) -> str | None:
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return None
    return str(user.pk)


def _ip(group: str, request: HttpRequest) -> str | None:
    return (_address_reader or _compile_address_reader())(request)  # client_ip(), one call less


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


_SIMPLE: dict[str, KeyFunc] = {"ip": _ip, "user": _user, "user_or_ip": _user_or_ip}
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
        name = getattr(func, "__qualname__", repr(func))
        log_throttled(
            f"key:{name}",
            logging.ERROR,
            "dratelimit: key function %s raised for group %r; the request is not counted",
            name,
            group,
            every=60.0,
            exc_info=True,
        )
        return None
