"""The IETF RateLimit headers (draft-ietf-httpapi-ratelimit-headers) and Retry-After."""

from __future__ import annotations

import functools
import math

from django.http import HttpResponseBase

from .usage import Usage


@functools.lru_cache(maxsize=1024)  # policies are group names: few, and on every response
def _sf_string(text: str) -> str:
    """A Structured Field string: printable ASCII, with quotes and backslashes escaped."""
    safe = "".join(c if " " <= c <= "~" else "?" for c in text)
    return '"' + safe.replace("\\", "\\\\").replace('"', '\\"') + '"'


def policy_header(usage: Usage) -> str:
    return f"{_sf_string(usage.policy)};q={usage.limit};w={usage.period}"


def ratelimit_header(usage: Usage) -> str:
    return f"{_sf_string(usage.policy)};r={usage.remaining};t={max(0, math.ceil(usage.time_left))}"


def set_headers(response: HttpResponseBase, usage: Usage, retry_after: bool = False) -> None:
    response.headers["RateLimit-Policy"] = policy_header(usage)
    response.headers["RateLimit"] = ratelimit_header(usage)
    if retry_after:
        response.headers["Retry-After"] = str(usage.retry_after)
