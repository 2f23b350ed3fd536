"""The shape of the code, read from the source with `ast` (CONTRIBUTING.md, "Layers").

Beside tests/unit/test_layers.py, which says who may import whom, these say how:
- the project's modules import each other as a DAG: no cycle, counting every import that runs
  (inside functions too), but not one under `if TYPE_CHECKING:`, which is there for a type alone;
- few imports are hidden inside functions (a lazy import is fine for a heavy third-party package,
  or a CLI verb loaded by name; it is not the way to dodge a cycle);
- no module of schemas/, infra/, actors/ or services/ is longer than 400 lines;
- a package that re-exports names of its own modules (its public face) lists them in `__all__`.

Each message names the offenders, so the fix starts from it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ("schemas", "infra", "actors", "services")
MAX_LINES = 400
MAX_IN_FUNCTION = 15


@dataclass(frozen=True)
class Source:
    text: str
    where: str  # the path shown in messages
    package: bool = False  # an __init__.py


@dataclass(frozen=True)
class Import:
    importer: str
    target: str
    where: str  # path:line
    in_function: bool
    explicit: bool  # named by the statement (not a package whose __init__ runs on the way)


def project_sources(root: Path = ROOT) -> dict[str, Source]:
    found = {}
    for layer in LAYERS:
        for path in sorted((root / layer).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            package = parts[-1] == "__init__"
            module = ".".join(parts[:-1] if package else parts)
            found[module] = Source(path.read_text(), path.relative_to(root).as_posix(), package)
    return found


def _statements(tree: ast.AST) -> Iterator[tuple[ast.AST, bool]]:
    """Each node that may import, with whether it runs inside a function; the body of an
    `if TYPE_CHECKING:` (or `typing.TYPE_CHECKING`) is skipped, its `else:` is not."""
    stack: list[tuple[ast.AST, bool]] = [(tree, False)]
    while stack:
        node, in_function = stack.pop()
        yield node, in_function
        inner = in_function or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            children: list[ast.AST] = [node.test, *node.orelse]
        else:
            children = list(ast.iter_child_nodes(node))
        stack.extend((child, inner) for child in reversed(children))


def _named(node: ast.AST, module: str, package: bool) -> Iterator[tuple[str, list[str]]]:
    """(base, names) for each import in `node`: `import a.b` is ("a.b", []), `from x import y`
    is ("x", ["y"]); relative bases are made absolute from `module`."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield alias.name, []
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            parts = module.split(".") if package else module.split(".")[:-1]
            parts = parts[: len(parts) - (node.level - 1)]
            base = ".".join([*parts, *([node.module] if node.module else [])])
        else:
            base = node.module or ""
        yield base, [alias.name for alias in node.names]
    elif isinstance(node, ast.Call) and node.args:
        func, arg = node.func, node.args[0]
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name in ("import_module", "__import__") and isinstance(arg, ast.Constant):
            yield str(arg.value), []


def _deepest(name: str, modules: Mapping[str, Source]) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _ancestors(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def imports(modules: Mapping[str, Source]) -> list[Import]:
    """Every project module each module needs when it runs.

    `import a.b` and `from a.b import Name` need a.b itself; `from a import b` with b a module
    needs a.b. Importing a.b from outside package a also runs a/__init__.py first, so a is
    needed too; from inside it, a is already being imported, which is why a submodule may
    import a sibling but not a name its own package's __init__ re-exports (that is a cycle).
    """
    found = []
    for module, source in modules.items():
        own = {module, *_ancestors(module)}
        for node, in_function in _statements(ast.parse(source.text)):
            for base, names in _named(node, module, source.package):
                explicit = set()
                for name in names or [""]:
                    full = f"{base}.{name}" if name else base
                    if name and full in modules:
                        explicit.add(full)
                    elif (target := _deepest(base, modules)) is not None:
                        explicit.add(target)
                implicit = {a for t in explicit for a in _ancestors(t) if a in modules} - own
                where = f"{source.where}:{getattr(node, 'lineno', 0)}"
                for target in sorted(explicit - {module}):
                    found.append(Import(module, target, where, in_function, explicit=True))
                for target in sorted(implicit - explicit):
                    found.append(Import(module, target, where, in_function, explicit=False))
    return found


@dataclass(frozen=True)
class Cycle:
    group: list[str]  # the modules that all reach each other
    path: list[Import]  # one shortest way round, through the first of them


def cycles(found: list[Import]) -> list[Cycle]:
    """Each strongly connected group of modules, with one cycle through it."""
    edges: dict[str, dict[str, Import]] = {}
    for imp in found:
        edges.setdefault(imp.importer, {}).setdefault(imp.target, imp)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return [
        Cycle(sorted(group), _one_cycle(min(group), group, edges))
        for group in sorted(groups, key=min)
    ]


def _one_cycle(start: str, group: set[str], edges: dict[str, dict[str, Import]]) -> list[Import]:
    """The shortest way from `start` back to itself inside `group` (breadth first)."""
    came: dict[str, Import] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w, imp in sorted(edges.get(v, {}).items()):
                if w not in group or w in came:
                    continue
                came[w] = imp
                if w == start:
                    path = [imp]
                    while path[0].importer != start:
                        path.insert(0, came[path[0].importer])
                    return path
                nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle through {start} in {sorted(group)}")


def describe(cycle: Cycle) -> str:
    path = cycle.path
    lines = [" -> ".join([path[0].importer, *(imp.target for imp in path)])]
    for imp in path:
        how = "" if imp.explicit else f" (runs {imp.target}/__init__.py on the way)"
        lines.append(f"    {imp.where} {imp.importer} imports {imp.target}{how}")
    if len(cycle.group) > len(path):
        lines.append(f"    (one of the cycles among {len(cycle.group)}: {', '.join(cycle.group)})")
    return "\n".join(lines)


def in_function(found: list[Import]) -> list[str]:
    """Each import statement made inside a function that names a project module, once."""
    return sorted(
        {f"{imp.where} {imp.target}" for imp in found if imp.in_function and imp.explicit}
    )


def too_long(modules: Mapping[str, Source], limit: int = MAX_LINES) -> list[str]:
    sizes = [(len(s.text.splitlines()), s.where) for s in modules.values()]
    return [f"{where}: {n} lines" for n, where in sorted(sizes, reverse=True) if n > limit]


def faces_without_all(modules: Mapping[str, Source]) -> list[str]:
    """Each name a package's __init__ takes from its own modules but leaves out of `__all__`."""
    found = []
    for module, source in modules.items():
        if not source.package:
            continue
        tree = ast.parse(source.text)
        listed: set[str] = set()
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
            ):
                listed = {e.value for e in ast.walk(node.value) if isinstance(e, ast.Constant)}
        for node in tree.body:
            if not isinstance(node, ast.ImportFrom):
                continue
            base = next(iter(_named(node, module, package=True)))[0]
            if base == module or base.startswith(module + "."):
                for alias in node.names:
                    name = alias.asname or alias.name
                    if name not in listed:
                        found.append(f"{source.where}:{node.lineno} {name} is not in __all__")
    return found


# The project itself.


def test_the_project_is_read() -> None:
    modules = project_sources()
    assert {"schemas", "infra", "actors", "services", "services.up"} <= modules.keys()
    assert len(imports(modules)) > 100, "too few imports found; is the walk right?"


def test_no_import_cycles() -> None:
    found = cycles(imports(project_sources()))
    listing = "\n".join(describe(c) for c in found)
    assert not found, (
        f"{len(found)} group(s) of modules import each other; split the shared piece (keys, a "
        "context, a Protocol) out to a module below both, or import a sibling module rather "
        f"than a name your own package's __init__ re-exports:\n{listing}"
    )


def test_few_imports_inside_functions() -> None:
    found = in_function(imports(project_sources()))
    listing = "\n".join(found)
    assert len(found) <= MAX_IN_FUNCTION, (
        f"{len(found)} project imports are made inside functions (at most {MAX_IN_FUNCTION}); "
        f"move some to the top of their module (a cycle in the way is the thing to fix):\n{listing}"
    )


def test_no_module_over_400_lines() -> None:
    found = too_long(project_sources())
    listing = "\n".join(found)
    assert not found, f"modules over {MAX_LINES} lines; split each by what it does:\n{listing}"


def test_public_faces_list_their_names() -> None:
    found = faces_without_all(project_sources())
    listing = "\n".join(found)
    assert not found, f"a package's public face is its __all__; add these or drop them:\n{listing}"


# The checks above must be able to fail: run them on small made-up trees.


def _tree(files: dict[str, str]) -> dict[str, Source]:
    found = {}
    for where, text in files.items():
        parts = where.removesuffix(".py").split("/")
        package = parts[-1] == "__init__"
        module = ".".join(parts[:-1] if package else parts)
        found[module] = Source(text, where, package)
    return found


def test_a_two_module_cycle_is_found_with_its_lines() -> None:
    modules = _tree({"a.py": "import b\n", "b.py": "x = 1\nfrom a import y\n"})
    (cycle,) = cycles(imports(modules))
    assert describe(cycle).splitlines() == [
        "a -> b -> a",
        "    a.py:1 a imports b",
        "    b.py:2 b imports a",
    ]


def test_an_import_inside_a_function_still_makes_a_cycle() -> None:
    modules = _tree({"a.py": "import b\n", "b.py": "def f():\n    from a import y\n"})
    assert len(cycles(imports(modules))) == 1
    assert in_function(imports(modules)) == ["b.py:2 a"]


def test_a_type_checking_import_is_no_cycle() -> None:
    b = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from a import y\n"
    assert cycles(imports(_tree({"a.py": "import b\n", "b.py": b}))) == []
    b_else = b + "else:\n    import a\n"
    assert len(cycles(imports(_tree({"a.py": "import b\n", "b.py": b_else})))) == 1


def test_a_name_reexported_by_ones_own_package_is_a_cycle() -> None:
    modules = _tree(
        {
            "p/__init__.py": "from .actor import Actor\nfrom .context import Context\n",
            "p/actor.py": "from p import Context\n",
            "p/context.py": "class Context: ...\n",
        }
    )
    (cycle,) = cycles(imports(modules))
    assert describe(cycle).splitlines()[0] == "p -> p.actor -> p"


def test_a_sibling_module_is_no_cycle() -> None:
    modules = _tree(
        {
            "p/__init__.py": "from .actor import Actor\nfrom .context import Context\n",
            "p/actor.py": "from .context import Context\nfrom . import context\nimport p.context\n",
            "p/context.py": "class Context: ...\n",
        }
    )
    assert cycles(imports(modules)) == []


def test_importing_a_submodule_from_outside_runs_its_package() -> None:
    modules = _tree(
        {
            "p/__init__.py": "from q import helper\n",
            "p/sub.py": "x = 1\n",
            "q.py": "def helper(): ...\nimport p.sub\n",
        }
    )
    (cycle,) = cycles(imports(modules))
    assert "runs p/__init__.py on the way" in describe(cycle)


def test_relative_imports_resolve_against_the_package() -> None:
    modules = _tree(
        {
            "p/__init__.py": "",
            "p/s/__init__.py": "from . import b\n",
            "p/s/a.py": "from ..q import x\nfrom .b import y\n",
            "p/s/b.py": "",
            "p/q.py": "",
        }
    )
    targets = {(i.importer, i.target) for i in imports(modules) if i.explicit}
    assert targets == {("p.s.a", "p.q"), ("p.s.a", "p.s.b"), ("p.s", "p.s.b")}


def test_a_long_module_is_named() -> None:
    modules = _tree({"a.py": "x = 1\n" * 401, "b.py": "x = 1\n" * 400})
    assert too_long(modules) == ["a.py: 401 lines"]


@pytest.mark.parametrize(
    ("text", "count"),
    [
        ("import b\n", 0),
        ("def f():\n    import b\n", 1),
        ("async def f():\n    from b import x, y\n", 1),
        ("class C:\n    def m(self):\n        import b\n", 1),
        ("def f():\n    import json\n", 0),
        ("def f():\n    importlib.import_module('b')\n", 1),
    ],
)
def test_in_function_imports_are_counted(text: str, count: int) -> None:
    assert len(in_function(imports(_tree({"a.py": text, "b.py": ""})))) == count


def test_a_reexport_missing_from_all_is_named() -> None:
    modules = _tree(
        {
            "p/__init__.py": 'from p.a import A, B\nfrom infra import x\n__all__ = ["A"]\n',
            "p/a.py": "A = B = 1\n",
            "q/__init__.py": "from .a import C\n",
            "q/a.py": "C = 1\n",
        }
    )
    assert faces_without_all(modules) == [
        "p/__init__.py:1 B is not in __all__",
        "q/__init__.py:1 C is not in __all__",
    ]
