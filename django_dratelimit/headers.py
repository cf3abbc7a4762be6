"""The IETF RateLimit headers (draft-ietf-httpapi-ratelimit-headers) and Retry-After."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

from django.http import HttpResponseBase

from .conf import conf
from .usage import Usage, most_restrictive

# DRATELIMIT["HEADER_POLICIES"]: which policies a response's headers describe.
MOST_RESTRICTIVE = "most_restrictive"
ALL_POLICIES = "all"
HEADER_POLICY_CHOICES = (MOST_RESTRICTIVE, ALL_POLICIES)


@functools.lru_cache(maxsize=1024)  # policies are group names: few, and on every response
def _sf_string(text: str) -> str:
    """A Structured Field string: printable ASCII, with quotes and backslashes escaped."""
    safe = "".join(c if " " <= c <= "~" else "?" for c in text)
    return '"' + safe.replace("\\", "\\\\").replace('"', '\\"') + '"'


def policy_header(usage: Usage, name: str | None = None) -> str:
    return f"{_sf_string(usage.policy if name is None else name)};q={usage.limit};w={usage.period}"


def ratelimit_header(usage: Usage, name: str | None = None) -> str:
    policy = _sf_string(usage.policy if name is None else name)
    return f"{policy};r={usage.remaining};t={max(0, math.ceil(usage.time_left))}"


def set_headers(response: HttpResponseBase, usage: Usage, retry_after: bool = False) -> None:
    response.headers["RateLimit-Policy"] = policy_header(usage)
    response.headers["RateLimit"] = ratelimit_header(usage)
    if retry_after:
        response.headers["Retry-After"] = str(usage.retry_after)


def named_policies(usages: Sequence[Usage]) -> list[tuple[str, Usage]]:
    """Every rate of every usage once, in the order counted, under a name unique in the list.

    A group with several rates (``"10/s;500/h"``) is several policies of one
    name: the draft pairs ``RateLimit`` items with ``RateLimit-Policy`` items
    by name, so those get the period as a suffix (``"api-1s"``, ``"api-3600s"``).
    The same policy and period counted twice (stacked decorators on one group)
    is one bucket: it is listed once, as the more restrictive of the two.
    """
    by_identity: dict[tuple[str, int], Usage] = {}
    for usage in usages:
        for part in usage.others or (usage,):
            identity = (part.policy, part.period)
            seen = by_identity.get(identity)
            by_identity[identity] = part if seen is None else most_restrictive([seen, part])
    periods: dict[str, int] = {}
    for policy, _period in by_identity:
        periods[policy] = periods.get(policy, 0) + 1
    return [
        (policy if periods[policy] == 1 else f"{policy}-{period}s", usage)
        for (policy, period), usage in by_identity.items()
    ]


def set_usage_headers(
    response: HttpResponseBase, usages: Sequence[Usage], decisive: Usage | None = None
) -> None:
    """The RateLimit headers of a request's usages, as ``HEADER_POLICIES`` asks.

    By default only the most restrictive usage (or ``decisive``, the one that
    refused the request) is described; ``"all"`` lists each policy.
    """
    if conf.HEADER_POLICIES != ALL_POLICIES:
        set_headers(response, decisive or most_restrictive(list(usages)))
        return
    items = named_policies(usages)
    response.headers["RateLimit-Policy"] = ", ".join(policy_header(u, n) for n, u in items)
    response.headers["RateLimit"] = ", ".join(ratelimit_header(u, n) for n, u in items)


def violated_policies(usages: Sequence[Usage], decisive: Usage) -> list[str]:
    """The names, as the headers give them, of the policies that are over their limit."""
    if conf.HEADER_POLICIES != ALL_POLICIES:
        return [decisive.policy]
    return [name for name, usage in named_policies(usages) if usage.should_limit]
