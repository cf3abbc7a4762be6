"""Plain-text tables that fit a terminal, for ``manage.py ratelimit``."""

from __future__ import annotations

WIDTH = 80
GAP = "  "
ELLIPSIS = "…"


def table(
    headers: list[str],
    rows: list[list[str]],
    right: set[int],
    shrink: list[tuple[int, int]],
    keep_tail: frozenset[int] | set[int] = frozenset(),
    width: int = WIDTH,
) -> list[str]:
    """Plain-text columns within ``width``.

    ``shrink`` lists (column, narrowest) steps, taken in order until the table
    fits; a cut cell ends (or, for ``keep_tail`` columns, starts) with an ellipsis.
    """
    # Keys come from requests: a newline or escape sequence must not break the table.
    rows = [[_printable(c) for c in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    over = sum(widths) + len(GAP) * (len(widths) - 1) - width
    for column, narrowest in shrink:
        if over <= 0:
            break
        if column >= len(widths):
            continue
        spare = widths[column] - max(len(headers[column]), narrowest)
        cut = min(max(spare, 0), over)
        widths[column] -= cut
        over -= cut

    def cell(text: str, column: int) -> str:
        size = widths[column]
        if len(text) > size:
            text = (
                ELLIPSIS + text[-(size - 1) :]
                if column in keep_tail
                else text[: size - 1] + ELLIPSIS
            )
        return text.rjust(size) if column in right else text.ljust(size)

    lines = [GAP.join(cell(h, i) for i, h in enumerate(headers)).rstrip()]
    lines += [GAP.join(cell(c, i) for i, c in enumerate(row)).rstrip() for row in rows]
    return lines


def _printable(text: str) -> str:
    return text if text.isprintable() else "".join(c if c.isprintable() else "?" for c in text)
