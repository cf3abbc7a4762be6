"""Dotted paths to user callables (keys, rates, costs), with errors that name the setting."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.utils.module_loading import import_string


def import_callable(path: str, what: str, error: type[ValueError]) -> Callable[..., Any]:
    """Import ``path``; raise ``error`` saying that the ``what`` does not import or call."""
    try:
        loaded = import_string(path)
    except ImportError as exc:
        raise error(f"{what} {path!r} is a dotted path that does not import: {exc}") from exc
    if not callable(loaded):
        raise error(f"{what} {path!r} does not name a callable")
    return loaded  # type: ignore[no-any-return]
