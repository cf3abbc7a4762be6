"""Exceptions raised by django-dratelimit."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.core.exceptions import PermissionDenied

if TYPE_CHECKING:
    from .usage import Usage


class Ratelimited(PermissionDenied):
    """A request went over a limit. Subclasses PermissionDenied, like django-ratelimit's."""

    def __init__(self, usage: Usage | None = None) -> None:
        super().__init__("rate limited")
        self.usage = usage
