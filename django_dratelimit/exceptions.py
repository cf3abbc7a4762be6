"""Exceptions raised by django-dratelimit, and the one a limited view raises."""

from __future__ import annotations

import contextlib
import functools
from typing import TYPE_CHECKING, Any

from django.core.exceptions import ImproperlyConfigured, PermissionDenied
from django.utils.module_loading import import_string

from .conf import conf

if TYPE_CHECKING:
    from .usage import Usage


class Ratelimited(PermissionDenied):
    """A request went over a limit. Subclasses PermissionDenied, like django-ratelimit's."""

    def __init__(self, usage: Usage | None = None) -> None:
        super().__init__("rate limited")
        self.usage = usage


class ConfigurationError(ImproperlyConfigured, ValueError):
    """A rate, key, cost, algorithm or setting that cannot work.

    ImproperlyConfigured, as django-ratelimit raises for the same mistakes;
    still a ValueError, as this app raised before.
    """


class MissingArgument(ImproperlyConfigured, TypeError):
    """A required argument (``key``; ``group`` or ``fn``) was not given."""


def limited_exception(usage: Usage) -> Exception:
    """What a blocking decorator raises: ``Ratelimited``, or ``EXCEPTION_CLASS``.

    A custom class is built without arguments, as django-ratelimit builds it;
    the usage is attached as ``.usage`` so a handler can still read it.
    """
    spec = conf.EXCEPTION_CLASS
    if spec is None:
        return Ratelimited(usage)
    cls = _load_exception_class(spec) if isinstance(spec, str) else spec
    exception: Exception = cls()
    with contextlib.suppress(AttributeError):  # an exception class with __slots__
        exception.usage = usage  # type: ignore[attr-defined]
    return exception


@functools.lru_cache(maxsize=16)
def _load_exception_class(path: str) -> Any:
    loaded = import_string(path)
    if not (isinstance(loaded, type) and issubclass(loaded, Exception)):
        raise ConfigurationError(f"EXCEPTION_CLASS {path!r} is not an exception class")
    return loaded
