"""The strict cache's key for a bucket: ``dratelimit:{group}:{key}:{period}:{window start}``.

Names are percent-escaped (or hashed when long), so a key is safe for
memcached and for Redis ``SCAN`` patterns, and parses back to its bucket.
"""

from __future__ import annotations

import hashlib
import re
from urllib.parse import quote, unquote

from ..local.store import BucketKey

PREFIX = "dratelimit"
# Longer components are hashed, so a whole key (with a short KEY_PREFIX and
# Django's ":1:" version) stays under memcached's 250 characters.
MAX_COMPONENT = 80
HASH_LENGTH = 40  # hex digits of sha256 kept: 160 bits
# What a scoped key ("k [5/60s GET]") adds to its key's component, then a glob.
SCOPE_MARK = quote(" [", safe="") + "*"
GLOB_SPECIAL = re.compile(r"([*?[])")


def escape(value: str) -> str:
    """Percent-encode ``value``; leave nothing a glob or a separator could mistake."""
    # Only [A-Za-z0-9_.~%-] remain: no ':' (the separator), no whitespace or
    # control characters (memcached), no glob characters (SCAN).
    return quote(value, safe="", errors="surrogatepass")


def component(value: str) -> str:
    """One name of a key: escaped, or ``=`` and a hash when that is too long."""
    escaped = escape(value)
    if len(escaped) <= MAX_COMPONENT:
        return escaped
    # '=' never comes out of quote(), so a hashed component cannot be mistaken for a key.
    return "=" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:HASH_LENGTH]


def uncomponent(escaped: str) -> str:
    """The name back from its component (a hashed one stays as it is)."""
    if escaped.startswith("="):
        return escaped  # a hashed long value: the original is not recoverable
    return unquote(escaped, errors="surrogatepass")


def glob_escape(text: str) -> str:
    """``text`` matched literally in a Redis glob pattern."""
    return GLOB_SPECIAL.sub(r"[\1]", text)


def cache_key(bucket_key: BucketKey) -> str:
    """``dratelimit:{group}:{key}:{period}:{window start}``, each name escaped or hashed."""
    group, key, period, start = bucket_key
    return f"{PREFIX}:{component(group)}:{component(key)}:{period}:{start}"


def parse_cache_key(raw: str) -> BucketKey | None:
    """The bucket of a cache key (with or without the cache's prefix), or None if not ours."""
    parts = raw.rsplit(":", 4)
    if len(parts) != 5:
        return None
    head, group, key, period, start = parts
    if head != PREFIX and not head.endswith(":" + PREFIX):
        return None
    try:
        return (uncomponent(group), uncomponent(key), int(period), int(start))
    except ValueError:
        return None
