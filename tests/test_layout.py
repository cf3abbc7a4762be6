"""The house rules, read from the imports (see docs/architecture.md).

The request path and the sync are two one-way corridors: the top level and
``local/`` never reach into ``sync/`` or ``ops/`` when a module is imported
(the one lazy ``start_sync`` import in ``limiter`` is the door between them),
``sync/`` builds on ``local/`` and never on the request path, and the
operator tools (``ops/``, the command) speak to the cluster only through the
sync's wire-level modules. Only module-level imports count: an import inside
a function or under ``TYPE_CHECKING`` runs later, or never.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = "django_dratelimit"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE

# Django finds these by their names at the app's top level; they are the
# operator's entry points, so they may use ops/.
OPERATOR_ENTRY_POINTS = {"admin", "management.commands.ratelimit"}
# What ops/ may use of the sync: the messages, their signing keys, the layer
# helpers and the metric names; never the node or the thread.
SYNC_WIRE = {
    "sync",
    "sync.protocol",
    "sync.keys",
    "sync.layers",
    "sync.metrics",
}  # "sync": its empty __init__
# What local/ may use outside itself: nothing with settings or a network.
LOCAL_MAY_USE: set[str] = set()
# The sync's own support at the top level: settings, logging, rate parsing, the registry.
SYNC_MAY_USE = {"conf", "logutil", "rates", "registry", "exceptions", "loading"}
MAX_LINES = 300


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {
    _module_name(path): path
    for path in sorted(ROOT.rglob("*.py"))
    if "migrations" not in path.parts
}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _module_level(body: list[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If) and not _is_type_checking(node):
            yield from _module_level(node.body)
            yield from _module_level(node.orelse)
        elif isinstance(node, ast.Try):
            yield from _module_level(node.body)
            for handler in node.handlers:
                yield from _module_level(handler.body)


def _imports(name: str) -> set[str]:
    """The package's modules that ``name`` imports when it is imported (ours only)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _module_level(ast.parse(path.read_text()).body):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif node.level == 0:
            targets = [node.module or ""]
            targets += [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            base = package.split(".") if package else []
            base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
            module = ".".join([*base, *([node.module] if node.module else [])])
            targets = [f"{PACKAGE}.{module}" if module else PACKAGE]
            targets += [f"{targets[0]}.{alias.name}" for alias in node.names]
        for target in targets:
            if target == PACKAGE or not target.startswith(PACKAGE + "."):
                continue
            inner = target[len(PACKAGE) + 1 :]
            # A package's own __init__ has already run when its modules import.
            if inner in MODULES and inner != name and not name.startswith(inner + "."):
                found.add(inner)
    # Importing a.b.c runs a/__init__ and a/b/__init__ first.
    for module in list(found):
        parts = module.split(".")
        for end in range(1, len(parts)):
            parent = ".".join(parts[:end])
            if parent in MODULES and parent != name and not name.startswith(parent + "."):
                found.add(parent)
    return found


GRAPH = {name: _imports(name) for name in MODULES if name}


def _wing(name: str) -> str:
    """The subpackage a module lives in ("" for the top level)."""
    first = name.split(".")[0]
    return first if MODULES[first].name == "__init__.py" else ""


def _corridors(name: str, target: str) -> bool:
    if _wing(name) not in ("", "local", "strict", "checks") or name in OPERATOR_ENTRY_POINTS:
        return True
    return name == "apps" or _wing(target) not in ("sync", "ops")


def _local(name: str, target: str) -> bool:
    return _wing(name) != "local" or _wing(target) == "local" or target in LOCAL_MAY_USE


def _sync(name: str, target: str) -> bool:
    if _wing(name) != "sync":
        return True
    return _wing(target) in ("sync", "local") or target in SYNC_MAY_USE


def _ops(name: str, target: str) -> bool:
    if _wing(name) != "ops" and name not in OPERATOR_ENTRY_POINTS:
        return True
    if _wing(target) == "sync" and target not in SYNC_WIRE:
        return False
    # The command builds on ops/, never the other way.
    return _wing(name) != "ops" or not target.startswith("management")


RULES = {"corridors": _corridors, "local": _local, "sync": _sync, "ops": _ops}


def _violations(rule: str) -> list[str]:
    allowed = RULES[rule]
    return [
        f"{name} imports {target}"
        for name, targets in GRAPH.items()
        for target in sorted(targets)
        if not allowed(name, target)
    ]


@pytest.mark.parametrize("rule", sorted(RULES))
def test_the_wings_import_only_what_the_house_rules_allow(rule: str) -> None:
    assert _violations(rule) == []


def test_the_one_door_from_the_request_path_to_the_sync_is_lazy() -> None:
    source = MODULES["limiter"].read_text()
    assert "from .sync.thread import start_sync" in source  # inside ensure_sync()
    assert "sync" not in GRAPH["limiter"]


def test_there_are_no_import_circles() -> None:
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(name: str, trail: list[str]) -> None:
        state[name] = 1
        for target in sorted(GRAPH.get(name, ())):
            if state.get(target) == 1:
                cycles.append([*trail[trail.index(target) :], target])
            elif target not in state:
                visit(target, [*trail, target])
        state[name] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_the_engine_does_not_import_django() -> None:
    for name, path in MODULES.items():
        if _wing(name) == "local":
            tree = ast.parse(path.read_text())
            imported = {
                alias.name.split(".")[0]
                for node in ast.walk(tree)
                if isinstance(node, ast.Import)
                for alias in node.names
            } | {
                (node.module or "").split(".")[0]
                for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and node.level == 0
            }
            assert "django" not in imported, name


def test_modules_stay_short() -> None:
    long = {
        name: lines
        for name, path in MODULES.items()
        if (lines := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def test_the_rules_see_the_imports() -> None:
    # The reader itself, on modules whose imports are known.
    assert "local.store" in GRAPH["limiter"]
    assert "local" in GRAPH["limiter"]  # the package's __init__ runs first
    assert "sync.protocol" in GRAPH["sync.node"]
    assert "local.budget_store" in GRAPH["local.store"]
