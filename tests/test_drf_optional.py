"""DRF stays optional: without it, every module but ``django_dratelimit.drf`` imports."""

from __future__ import annotations

import subprocess
import sys

from tests.cluster import ROOT

# A fresh interpreter where "import rest_framework" fails, as when DRF is not installed.
SCRIPT = """
import importlib, pkgutil, sys
sys.modules["rest_framework"] = None
import django
django.setup()
import django_dratelimit
from django.core.management import call_command
call_command("check")  # the DRF checks read settings only
names = [m.name for m in pkgutil.walk_packages(django_dratelimit.__path__, "django_dratelimit.")]
for name in names:
    if name != "django_dratelimit.drf":
        importlib.import_module(name)
try:
    import django_dratelimit.drf
except ImportError:
    print("drf needs rest_framework;", len(names), "modules")
"""


def test_nothing_but_the_drf_module_imports_rest_framework() -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=ROOT,
        env={"DJANGO_SETTINGS_MODULE": "tests.settings", "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "drf needs rest_framework;" in result.stdout
