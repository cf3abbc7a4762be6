"""Items cut into lists: the sync's messages and the strict cache's batches both need it.

It lives in ``local/`` because every wing may import ``local/`` (see
tests/test_layout.py) and it needs nothing but Python.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice
from typing import TypeVar

T = TypeVar("T")


def chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """``items`` in lists of at most ``size``, read as they come; one empty list for none.

    The empty list is for the sync: a message with no entries still goes out
    (it carries the resets, or says ``last``). An iterator is not read ahead
    of the chunk being yielded, so a Redis SCAN streams through.
    """
    iterator = iter(items)
    batch = list(islice(iterator, size))
    while True:
        yield batch
        batch = list(islice(iterator, size))
        if not batch:
            return
