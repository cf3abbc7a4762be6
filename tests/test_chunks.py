"""The one chunking helper, shared by the sync's messages and the strict cache's batches."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from django_dratelimit.local.chunks import chunks


@pytest.mark.parametrize(
    ("size", "expected"),
    [(2, [[1, 2], [3, 4], [5]]), (5, [[1, 2, 3, 4, 5]]), (9, [[1, 2, 3, 4, 5]])],
)
def test_chunks(size: int, expected: list[list[int]]) -> None:
    assert list(chunks([1, 2, 3, 4, 5], size)) == expected
    assert list(chunks([], size)) == [[]]


def test_an_iterator_is_read_one_chunk_at_a_time() -> None:
    read: list[int] = []

    def items() -> Iterator[int]:
        for item in range(5):
            read.append(item)
            yield item

    batches = chunks(items(), 2)
    assert next(batches) == [0, 1]
    assert read == [0, 1]
    assert list(batches) == [[2, 3], [4]]
    assert list(chunks(iter([]), 2)) == [[]]
