"""The supported versions, tested: Python 3.11 to 3.13 with Django 5.2 and 6.1.

    nox                                   # every combination, the unit part of the suite
    nox -s "tests(python='3.13', django='6.1')"
    nox -- -k drf                         # arguments after -- go to pytest

A combination whose Python is not installed is reported as skipped, and the
run fails on CI (nox errors on missing interpreters when CI is set, or with
--error-on-missing-interpreters). Django 6.1 needs Python 3.12 or later, so
Python 3.11 is tested with Django 5.2 only. The multi-process tests (marked
"cluster") run once, in .ci/run.
"""

from __future__ import annotations

import glob
import os

import nox

PYTHONS = ("3.11", "3.12", "3.13")
DJANGOS = ("5.2", "6.1")
# Django's own floor for each release line.
DJANGO_MIN_PYTHON = {"5.2": (3, 10), "6.1": (3, 12)}

nox.needs_version = ">=2024.4.15"
nox.options.sessions = ["tests"]
nox.options.reuse_venv = "yes"

# pyenv's shims only answer for the versions `pyenv global` names; its installs
# themselves do for any version. Put them first so that nox finds python3.12
# and python3.13 even when only 3.11 is the global one.
_PYENV_BINS = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.*/bin")))
os.environ["PATH"] = os.pathsep.join([*_PYENV_BINS, os.environ.get("PATH", "")])


def _supported(python: str, django: str) -> bool:
    major, minor = (int(part) for part in python.split("."))
    return (major, minor) >= DJANGO_MIN_PYTHON[django]


COMBINATIONS = [
    (python, django) for python in PYTHONS for django in DJANGOS if _supported(python, django)
]


@nox.session
@nox.parametrize(("python", "django"), COMBINATIONS)
def tests(session: nox.Session, django: str) -> None:
    """The suite without its multi-process tests, on one Python and one Django."""
    session.install("-e", ".[dev,redis,drf]", f"django=={django}.*")
    session.run("python", "-c", "import sys, django; print(sys.version, django.__version__)")
    session.run(
        "python",
        "-m",
        "pytest",
        "-m",
        "not cluster and not faults",  # the multi-process suites run once, in .ci/run
        "-p",
        "no:cacheprovider",
        # Django's next deprecations start as pending ones (RemovedInDjango2028Warning).
        "-W",
        "error::PendingDeprecationWarning",
        *session.posargs,
    )
