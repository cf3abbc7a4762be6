"""System checks, one module per thing checked; ``apps.py`` registers the entry points."""

from .compat import check_compat
from .settings import check_settings

__all__ = ["check_compat", "check_settings"]
