"""Lists cut into chunks: the sync's messages and the strict cache's batches both need it.

It lives in ``local/`` because every wing may import ``local/`` (see
tests/test_layout.py) and it needs nothing but Python.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TypeVar

T = TypeVar("T")


def chunks(items: list[T], size: int) -> Iterator[list[T]]:
    """``items`` in lists of at most ``size``; one empty list when there are none.

    The empty list is for the sync: a message with no entries still goes out
    (it carries the resets, or says ``last``).
    """
    if not items:
        yield []
    for start in range(0, len(items), size):
        yield items[start : start + size]
