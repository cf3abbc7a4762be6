"""Sphinx configuration: the manual, in Markdown (MyST), built with warnings as errors in CI.

sphinx-build -W -b html docs docs/_build/html
"""

from __future__ import annotations

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
# This checkout's package (the settings table reads its defaults) and our extension.
sys.path[:0] = [str(DOCS.parent), str(DOCS / "_ext")]

project = "django-dratelimit"
author = "django-dratelimit developers"
copyright = "django-dratelimit developers"
release = "0.1.0"

extensions = ["myst_parser", "dratelimit_settings"]
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build", "_ext"]
myst_heading_anchors = 3  # "page.md#a-heading" links, as GitHub renders them
myst_enable_extensions = ["deflist"]
html_theme = "alabaster"
html_title = "django-dratelimit"
html_theme_options = {"description": "Rate limits across a cluster, counted in memory"}
