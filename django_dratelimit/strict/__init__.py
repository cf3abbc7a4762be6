"""Strict consistency: exact counts in a shared Django cache (see ``counter``).

``counter`` is the request path's side, ``backends`` talks to the cache (one
Protocol, a Redis and a cache-API implementation), ``cache_keys`` names the
counters, ``kinds`` classifies cache backends, and ``checks`` holds the system
checks of ``STRICT_CACHE``.
"""

from .counter import StrictCounter, StrictUnavailable, StrictUnsupported, get_strict_counter

__all__ = ["StrictCounter", "StrictUnavailable", "StrictUnsupported", "get_strict_counter"]
