"""Which counter a django-ratelimit-style limit counts in: its scope, and its window.

django-ratelimit shares a count only between the same group, rate, key value
and HTTP methods, and staggers each key's windows. ``@ratelimit``,
``get_usage`` and ``is_ratelimited`` do the same here:

- **Scope.** The rate's limit and the methods are folded into the stored key:
  ``"203.0.113.7 [100/3600s GET]"``. The period is already part of every
  bucket. ``RULES`` count the same way (the rule's methods), so ``get_usage``
  reads them; ``limiter.hit`` keeps one bucket per (group, key, period), as
  documented.
- **Staggered windows** (``STAGGER_WINDOWS``, on by default; never for
  ``limiter.hit``, whose windows stay epoch-aligned). A window starts at an
  offset from the epoch derived from the group and the key (CRC-32, not
  Python's per-process ``hash()``), so every process computes the same window
  for the same key, as epoch-aligned windows did, while a whole user base
  does not get its quota back in the same second.

Resets name the key as the user gave it: ``base_key`` maps a scoped key back,
so a key reset reaches every scope of that key.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence

from .algorithms import window_start

# What scoped_key() appends; nothing else should end like this.
_SCOPE_RE = re.compile(r" \[\d+/\d+s(?: [^\[\] ]+)?\]\Z")


# django-ratelimit's ALL is (None,); ours is None. Both mean every method.
DJANGO_RATELIMIT_ALL: object = (None,)


def method_scope(method: str | Sequence[str] | None) -> str:
    """The methods part of a scope: ``""`` for all methods, else ``" GET,POST"`` (sorted)."""
    if method is None or method == DJANGO_RATELIMIT_ALL:
        return ""
    names = [method] if isinstance(method, str) else list(method)
    return " " + ",".join(sorted({str(name).upper() for name in names}))


def scoped_key(key: str, limit: int, period: int, scope: str) -> str:
    """The key a scoped limit is stored under: the key, then ``[limit/periods methods]``."""
    return f"{key} [{limit}/{period}s{scope}]"


def base_key(stored: str) -> str:
    """The key as the user gave it (a scoped key without its scope)."""
    if stored.endswith("]"):
        match = _SCOPE_RE.search(stored)
        if match is not None:
            return stored[: match.start()]
    return stored


def window_offset(group: str, key: str, period: int) -> int:
    """Seconds by which this key's windows are shifted from the epoch, in [0, period)."""
    data = f"{group}\0{key}".encode("utf-8", "surrogatepass")
    return zlib.crc32(data) % period


def bucket(
    group: str,
    key: str,
    limit: int,
    period: int,
    now: float,
    scope: str | None,
    stagger: bool,
) -> tuple[str, int]:
    """The stored key and the window start of one rate's bucket for ``key`` at ``now``."""
    stored = key if scope is None else scoped_key(key, limit, period, scope)
    offset = window_offset(group, key, period) if stagger else 0
    return stored, window_start(now, period, offset)
