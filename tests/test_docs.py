"""The docs cannot drift: the settings table follows conf.DEFAULTS, README stays short and linked.

The docs themselves are built with warnings as errors in CI
(``sphinx-build -W -b html docs docs/_build/html``), which also checks every
link between their pages and the settings table once more.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

from django_dratelimit.conf import DEFAULTS

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
README_MAX_LINES = 250
# [text](target) and ![alt](target); the target ends at whitespace or ")".
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HTML_LINK = re.compile(r"""(?:src|href)=["']([^"']+)["']""")
FENCE = re.compile(r"^(```|~~~)")


def settings_extension() -> ModuleType:
    path = ROOT / "docs" / "_ext" / "dratelimit_settings.py"
    spec = importlib.util.spec_from_file_location("dratelimit_settings", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_setting_has_a_description() -> None:
    descriptions = settings_extension().DESCRIPTIONS
    missing = sorted(set(DEFAULTS) - set(descriptions))
    assert not missing, f"settings without a description in docs/_ext: {missing}"
    for name in DEFAULTS:
        assert descriptions[name].strip(), f"{name}'s description is empty"


def test_every_description_names_a_setting() -> None:
    unknown = sorted(set(settings_extension().DESCRIPTIONS) - set(DEFAULTS))
    assert not unknown, f"descriptions of settings conf.DEFAULTS does not have: {unknown}"


def test_the_table_has_one_row_per_default_in_order() -> None:
    rows = settings_extension().settings_markdown().splitlines()[2:]
    names = [re.match(r"\| `(\w+)` \|", row).group(1) for row in rows]  # type: ignore[union-attr]
    assert names == list(DEFAULTS)


def test_the_table_in_the_settings_page_is_current() -> None:
    extension = settings_extension()
    page = extension.PAGE.read_text(encoding="utf-8")
    assert extension.with_table(page) == page, "run: python docs/_ext/dratelimit_settings.py"


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (True, "`True`"),
        (None, "`None`"),
        ("default", '`"default"`'),
        (100_000, "`100_000`"),
        (0.05, "`0.05`"),
        ([], "`[]`"),
    ],
)
def test_defaults_are_written_as_in_settings(value: object, text: str) -> None:
    assert settings_extension().default_text(value) == text


def test_readme_stays_short() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines (at most {README_MAX_LINES}): move detail to docs/"
    )


def readme_links() -> list[str]:
    """Every link target in README outside code blocks."""
    targets, in_code = [], False
    for line in README.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line.strip()):
            in_code = not in_code
            continue
        if not in_code:
            line = re.sub(r"`[^`]*`", "", line)  # inline code is not a link
            targets += LINK.findall(line) + HTML_LINK.findall(line)
    return targets


def github_slug(heading: str) -> str:
    """The anchor GitHub (and the docs' MyST) give a heading."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").replace("*", "")
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found, in_code = set(), False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line.strip()):
            in_code = not in_code
        elif not in_code and (match := re.match(r"#{1,6}\s+(.*)", line)):
            found.add(github_slug(match.group(1)))
    return found


def test_readme_has_relative_links() -> None:
    relative = [t for t in readme_links() if not re.match(r"[a-z]+:", t)]
    assert len(relative) >= 10  # the parser works: README links its docs pages


def test_every_relative_link_in_readme_points_to_an_existing_file() -> None:
    broken = []
    for target in readme_links():
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        path = (README.parent / path_part) if path_part else README
        if not path.exists() or (anchor and path.suffix == ".md" and anchor not in anchors(path)):
            broken.append(target)
    assert not broken, f"README links to missing files or headings: {broken}"
