"""The one chunking helper, shared by the sync's messages and the strict cache's batches."""

from __future__ import annotations

import pytest

from django_dratelimit.local.chunks import chunks


@pytest.mark.parametrize(
    ("size", "expected"),
    [(2, [[1, 2], [3, 4], [5]]), (5, [[1, 2, 3, 4, 5]]), (9, [[1, 2, 3, 4, 5]])],
)
def test_chunks(size: int, expected: list[list[int]]) -> None:
    assert list(chunks([1, 2, 3, 4, 5], size)) == expected
    assert list(chunks([], size)) == [[]]
