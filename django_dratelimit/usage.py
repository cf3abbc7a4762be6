"""The answer to "may this hit go through?": a Usage, readable like django-ratelimit's dict."""

from __future__ import annotations

import math
from collections.abc import ItemsView, Iterator, KeysView, Mapping, ValuesView
from typing import TYPE_CHECKING, Any, NamedTuple

from .local.algorithms import SLIDING_WINDOW, sliding_window

if TYPE_CHECKING:
    from .rates import Rate

MAPPING_KEYS = ("count", "limit", "should_limit", "time_left", "remaining", "reset_at")


class _UsageFields(NamedTuple):
    group: str
    key: str
    count: int  # type: ignore[assignment]  # shadows tuple.count, on purpose
    limit: int
    period: int
    should_limit: bool
    time_left: float  # seconds until a request would be admitted (limited) or the window ends
    reset_at: float
    algorithm: str = "fixed_window"
    name: str = ""
    others: tuple[Usage, ...] = ()


class Usage(_UsageFields):
    """The state of one rate for one key after (or without) a hit.

    A named tuple because one is built on every request: ``new_usage`` costs
    half of what a slots class costs, and a fifth of a frozen dataclass.
    ``usage["count"]``, ``usage.get("limit")`` and ``dict(usage)`` read it like
    the dict django-ratelimit returns.
    """

    __slots__ = ()

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.count)

    @property
    def allowed(self) -> bool:
        return not self.should_limit

    @property
    def retry_after(self) -> int:
        """Whole seconds to wait before retrying (at least 1), as in ``Retry-After``."""
        return max(1, math.ceil(self.time_left))

    @property
    def policy(self) -> str:
        """The policy name used in the RateLimit headers."""
        return self.name or self.group

    def __getitem__(self, name: Any) -> Any:
        if name.__class__ is str:
            if name not in MAPPING_KEYS:
                raise KeyError(name)
            return getattr(self, name)
        return tuple.__getitem__(self, name)

    # The mapping side: it iterates, sizes and tests membership like a dict of
    # MAPPING_KEYS. Fields are read through the named accessors, which never
    # go through these methods.
    def __iter__(self) -> Iterator[str]:
        return iter(MAPPING_KEYS)

    def __len__(self) -> int:
        return len(MAPPING_KEYS)

    def __contains__(self, name: object) -> bool:
        return name in MAPPING_KEYS

    def __getnewargs__(self) -> tuple[Any, ...]:
        return tuple(tuple.__iter__(self))

    def get(self, name: str, default: Any = None) -> Any:
        return getattr(self, name) if name in MAPPING_KEYS else default

    def keys(self) -> KeysView[str]:
        return self._as_dict().keys()

    def values(self) -> ValuesView[Any]:
        return self._as_dict().values()

    def items(self) -> ItemsView[str, Any]:
        return self._as_dict().items()

    def _as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in MAPPING_KEYS}

    def __repr__(self) -> str:
        return (
            f"Usage(group={self.group!r}, key={self.key!r}, count={self.count}, "
            f"limit={self.limit}, period={self.period}, should_limit={self.should_limit}, "
            f"time_left={self.time_left:.3f})"
        )


Mapping.register(Usage)
_new = tuple.__new__


def new_usage(
    group: str,
    key: str,
    count: int,
    limit: int,
    period: int,
    should_limit: bool,
    time_left: float,
    reset_at: float,
    algorithm: str = "fixed_window",
    name: str = "",
    others: tuple[Usage, ...] = (),
) -> Usage:
    """Build a Usage without the named tuple's Python-level ``__new__``."""
    return _new(
        Usage,
        (
            group,
            key,
            count,
            limit,
            period,
            should_limit,
            time_left,
            reset_at,
            algorithm,
            name,
            others,
        ),
    )


class UsageDict(dict[str, Any]):
    """What ``get_usage`` returns: a real dict of the MAPPING_KEYS, and the Usage's attributes.

    ``JsonResponse(usage)`` and ``json.dumps(usage)`` need a dict, which a
    tuple cannot also be; ``Usage`` stays a tuple because ``limiter.hit``
    builds one per call, and this dict is only built by ``get_usage``.
    Attributes (``usage.group``, ``usage.retry_after``) read the Usage.
    """

    __slots__ = ("usage",)

    if TYPE_CHECKING:  # what __getattr__ forwards, for type checkers
        group: str
        key: str
        count: int
        limit: int
        period: int
        should_limit: bool
        time_left: float
        reset_at: float
        algorithm: str
        name: str
        others: tuple[Usage, ...]
        remaining: int
        allowed: bool
        retry_after: int
        policy: str

    def __init__(self, usage: Usage) -> None:
        # Field by field, not through _as_dict(): half the cost, on every get_usage().
        count, limit = usage.count, usage.limit
        dict.__init__(
            self,
            count=count,
            limit=limit,
            should_limit=usage.should_limit,
            time_left=usage.time_left,
            remaining=limit - count if count < limit else 0,
            reset_at=usage.reset_at,
        )
        self.usage = usage

    def __getattr__(self, name: str) -> Any:
        # Only reached for names that are not the dict's own.
        if name == "usage":  # not set yet (mid-copy): never recurse
            raise AttributeError(name)
        return getattr(self.usage, name)

    def __reduce__(self) -> tuple[Any, ...]:
        return (UsageDict, (self.usage,))


def most_restrictive(usages: list[Usage]) -> Usage:
    """The usage that decides: a limiting one with the longest wait, else the least room."""
    limiting = [u for u in usages if u.should_limit]
    if limiting:
        return max(limiting, key=lambda u: u.time_left)
    return min(usages, key=lambda u: (u.remaining / u.limit if u.limit else 0.0, -u.time_left))


def combine(usages: list[Usage], algorithm: str, name: str) -> Usage:
    """One usage for several rates: the most restrictive, with all of them in ``others``."""
    if len(usages) == 1:
        return usages[0]
    decisive = most_restrictive(usages)
    return new_usage(
        decisive.group,
        decisive.key,
        decisive.count,
        decisive.limit,
        decisive.period,
        decisive.should_limit,
        decisive.time_left,
        decisive.reset_at,
        algorithm,
        name,
        tuple(usages),
    )


def window_usage(
    group: str,
    key: str,
    rate: Rate,
    algorithm: str,
    name: str,
    now: float,
    start: int,
    current: int,
    previous: int,
) -> Usage:
    """The usage of a fixed or sliding window from its counts (local or strict alike)."""
    if algorithm == SLIDING_WINDOW:
        # sliding_window() counts windows from the epoch: shift ``now`` by the stagger.
        shifted = now - start % rate.period
        count, limited, time_left = sliding_window(
            previous, current, rate.limit, rate.period, shifted
        )
    else:
        count, limited, time_left = current, current > rate.limit, start + rate.period - now
    # Built directly (not through new_usage): this runs on every request.
    return _new(
        Usage,
        (
            group,
            key,
            count,
            rate.limit,
            rate.period,
            limited,
            time_left,
            now + time_left,
            algorithm,
            name,
            (),
        ),
    )
