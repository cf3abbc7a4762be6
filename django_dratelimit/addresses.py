"""The client address of a request: REMOTE_ADDR or ``IP_META_KEY``, masked.

Every request has one, so when it cannot be found (``REMOTE_ADDR`` empty
behind a Unix-socket proxy, ``IP_META_KEY`` naming a header the request
lacks) that is a configuration error, raised as :class:`MissingClientAddress`
on the request, as django-ratelimit does. An ``ip`` limit that quietly stopped
limiting would be the worst way to fail.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from typing import Any, TypeAlias

from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest
from django.utils.module_loading import import_string

from .conf import conf, on_clear
from .logutil import log_throttled


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
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif ip.scope_id:
            # A zone id (fe80::1%eth0) means nothing here, and a client could make it
            # any length: without it, the ip key is short, a key as stored as it is.
            ip = ipaddress.IPv6Address(int(ip))
    prefix = ipv4_mask if ip.version == 4 else ipv6_mask
    network = ipaddress.ip_network(f"{ip}/{prefix}", strict=False)
    return str(network.network_address) if prefix < ip.max_prefixlen else str(ip)


AddressReader: TypeAlias = Callable[[HttpRequest], str]
IpKeyReader: TypeAlias = Callable[[HttpRequest], "str | None"]
MAX_MASKED = 4096  # addresses whose masked form is kept, per settings
# client_ip() compiled from the settings, on first use after each settings change:
# reading three settings per request cost about a third of an ``ip`` key.
_address_reader: AddressReader | None = None
_ip_reader: IpKeyReader | None = None


def client_ip(request: HttpRequest) -> str:
    """The client address, from REMOTE_ADDR or IP_META_KEY, masked.

    Raises MissingClientAddress when there is none to be had (see the module doc).
    """
    return (_address_reader or _compile_readers()[0])(request)


def _compile_readers() -> tuple[AddressReader, IpKeyReader]:
    """client_ip()'s reader, and the ip key's."""
    global _address_reader, _ip_reader
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
    ipv4_mask, ipv6_mask = conf.IPV4_MASK, conf.IPV6_MASK
    # raw address -> masked: a dict lookup costs half an lru_cache's, and the same
    # clients come back; bounded, as a crawler's many addresses would grow it.
    masks: dict[str, str] = {}

    def reader(request: HttpRequest) -> str:
        raw = request.META.get(meta_key) if read is None else read(request)
        if not isinstance(raw, str):
            raise MissingClientAddress(_no_address(where, raw))
        if forwarded and "," in raw:
            # X-Forwarded-For: the right-most entry was added by your own proxy;
            # the left-most is whatever the client chose to send.
            raw = raw.rsplit(",", 1)[1]
        masked = masks.get(raw)
        if masked is None:
            masked = mask_ip(raw, ipv4_mask, ipv6_mask)
            if masked is None:
                raise MissingClientAddress(_no_address(where, raw))
            if len(masks) >= MAX_MASKED:
                masks.clear()
            masks[raw] = masked
        return masked

    # The ip key's: an IP_META_KEY callable that raises is logged, the request not counted.
    ip_reader = reader if read is None else _logging_errors(reader)
    _address_reader, _ip_reader = reader, ip_reader
    return reader, ip_reader


def _logging_errors(reader: AddressReader) -> IpKeyReader:
    """What ``keys.key_value`` does for other keys, for the ``ip`` key, called without it."""

    def logged(request: HttpRequest) -> str | None:
        try:
            return reader(request)
        except ImproperlyConfigured:
            raise
        except Exception:
            name = getattr(conf.IP_META_KEY, "__qualname__", conf.IP_META_KEY)
            log_throttled(
                "key:ip",
                logging.ERROR,
                "dratelimit: the IP_META_KEY callable %s raised; the request is not counted",
                name,
                every=60.0,
                exc_info=True,
            )
            return None

    return logged


def _forget_address_reader() -> None:
    global _address_reader, _ip_reader
    _address_reader = _ip_reader = None


on_clear(_forget_address_reader)


def _no_address(where: str, raw: object) -> str:
    found = "is missing" if raw is None else ("is empty" if raw == "" else f"is {raw!r:.60}")
    return (
        f"no client address for an ip limit: {where} {found}, so the request cannot be "
        "counted. Behind a proxy (or a Unix socket, which leaves REMOTE_ADDR empty), set "
        "DRATELIMIT['IP_META_KEY'] to the header your proxy sets, e.g. 'HTTP_X_FORWARDED_FOR'."
    )


def ip_key(group: str, request: HttpRequest) -> str | None:
    """The ``ip`` key: ``client_ip``, but a raising IP_META_KEY callable is logged, not raised."""
    return (_ip_reader or _compile_readers()[1])(request)
