"""Distributed rate limiting for Django: local counters synced through a Channels group."""

from __future__ import annotations

from .core import ALL, UNSAFE, get_usage, is_ratelimited
from .decorators import ratelimit
from .exceptions import Ratelimited
from .usage import Usage, UsageDict

__all__ = [
    "ALL",
    "UNSAFE",
    "Ratelimited",
    "Usage",
    "UsageDict",
    "get_usage",
    "is_ratelimited",
    "ratelimit",
]
__version__ = "0.1.0"
