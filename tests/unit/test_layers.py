"""The layers of CONTRIBUTING.md (and its rule that subjects are defined once), read with `ast`.

schemas/ is the pure domain (msgspec and the standard library); services/ reach actors only
through services/up.py; actors/ never import services; and no module outside schemas/ writes a
fleet subject literal: every subject comes from schemas/subjects.py.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN_IN_SCHEMAS = {
    "ray",
    "nats",
    "aiohttp",
    "libtmux",
    "git",
    "psutil",
    "yaml",
    "infra",
    "actors",
    "services",
}
SUBJECT = re.compile(r"(?<![\w.])fleet\.(evt|cmd|ctl|mail|topic|health|notify)(?![\w])")


def python_files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def module_of(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str) -> Iterator[tuple[int, str]]:
    """Every module that `source` (the text of `module`) imports, anywhere in the file.

    Yields (line, absolute dotted name); relative imports are resolved against `module`, and
    `importlib.import_module("x")` and `__import__("x")` with a literal name count too.
    """
    package = module.split(".")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level]
                yield node.lineno, ".".join([*base, *([node.module] if node.module else [])])
            else:
                yield node.lineno, node.module or ""
        elif isinstance(node, ast.Call) and node.args:
            func, arg = node.func, node.args[0]
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("import_module", "__import__") and isinstance(arg, ast.Constant):
                yield node.lineno, str(arg.value)


def violations(folder: str, forbidden: set[str], allowed: set[str] = frozenset()) -> list[str]:
    found = []
    for path in python_files(folder):
        rel = path.relative_to(ROOT).as_posix()
        if rel in allowed:
            continue
        module = module_of(path)
        if path.name == "__init__.py":
            module += ".__init__"  # so that "from . import x" resolves inside the package
        for line, imported in imported_modules(path.read_text(), module):
            if imported.split(".")[0] in forbidden:
                found.append(f"{rel}:{line} imports {imported}")
    return found


def test_the_layers_exist() -> None:
    assert python_files("schemas"), "schemas/ has no Python files; is ROOT right?"
    assert (ROOT / "services" / "up.py").is_file()


def test_schemas_import_only_msgspec_and_the_standard_library() -> None:
    assert violations("schemas", FORBIDDEN_IN_SCHEMAS) == []


def test_services_reach_actors_only_through_up() -> None:
    assert violations("services", {"actors"}, allowed={"services/up.py"}) == []


def test_actors_never_import_services() -> None:
    assert violations("actors", {"services"}) == []


def docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring nodes of the module, classes and functions (prose, not subjects)."""
    found = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and node.body
        ):
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def subject_literals(source: str, where: str) -> list[str]:
    tree = ast.parse(source)
    skip = docstrings(tree)
    return [
        f"{where}:{node.lineno} {node.value!r}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in skip
        and SUBJECT.search(node.value)
    ]


def test_no_fleet_subject_literal_outside_schemas() -> None:
    """`$JS.API...` subjects are NATS's own and may appear in infra/; fleet.* ones may not."""
    found = [hit for folder in ("infra", "actors", "services") for hit in _literals(folder)]
    assert found == [], "build subjects with schemas.subjects instead:\n" + "\n".join(found)


def _literals(folder: str) -> list[str]:
    return [
        hit
        for path in python_files(folder)
        for hit in subject_literals(path.read_text(), path.relative_to(ROOT).as_posix())
    ]


# The checks above must be able to fail: run them on small made-up sources.


@pytest.mark.parametrize(
    ("source", "module"),
    [
        ("import ray\n", "ray"),
        ("import nats.js.api as api\n", "nats.js.api"),
        ("from git import Repo\n", "git"),
        ("def f():\n    import yaml\n", "yaml"),
        ("from ..infra import bus\n", "infra"),
        ("from ..actors.agent import AgentActor\n", "actors.agent"),
        ("import importlib\nimportlib.import_module('psutil')\n", "psutil"),
        ("__import__('aiohttp')\n", "aiohttp"),
    ],
)
def test_imports_are_found_anywhere(source: str, module: str) -> None:
    found = [name for _, name in imported_modules(source, "schemas.probe")]
    assert module in found


def test_relative_imports_inside_schemas_stay_inside() -> None:
    found = [name for _, name in imported_modules("from . import states\n", "schemas.agent")]
    assert found == ["schemas"]


@pytest.mark.parametrize(
    ("source", "hits"),
    [
        ('s = "fleet.evt." + agent\n', 1),
        ("s = f'fleet.cmd.{agent}'\n", 1),
        ('s = "fleet.mail.>"\n', 1),
        ('s = "fleet.notify"\n', 1),
        ('log.info("publish to fleet.ctl.spawn")\n', 1),
        ('s = "$JS.API.STREAM.INFO.FLEET_EVENTS"\n', 0),
        ('"""Reads fleet.evt.> and acks."""\n', 0),
        ('def f():\n    """Reads fleet.evt.>."""\n', 0),
        ('s = "fleet.evtx"; t = "myfleet.evt.a1"; u = "fleet_snapshots"\n', 0),
    ],
)
def test_subject_literal_check_finds_literals(source: str, hits: int) -> None:
    assert len(subject_literals(source, "probe.py")) == hits
