"""Imports run one way, down the layers of docs/architecture.md; modules and functions stay small.

The layer table is read from the architecture document (the fenced block between ``<!-- layers -->`` and
``<!-- /layers -->``), every module of src/edgeprune is read with ``ast`` (imports inside functions included), and
each test fails with the full list of what breaks its rule.
"""

from __future__ import annotations

import ast
import functools
import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "edgeprune"
ARCHITECTURE = ROOT / "docs" / "architecture.md"

MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80
MAX_POSITIONAL = 6


@dataclass(frozen=True)
class Layers:
    """The table: layer names top first, and each entry (``name`` or ``package/``) with its layer."""

    names: tuple[str, ...]
    entries: dict[str, str]

    def layer_of(self, module: str) -> str | None:
        """The layer of a module (``io.files``, ``lut``, ``__init__`` for edgeprune's own), None if not listed."""
        if module in self.entries:
            return self.entries[module]
        parts = module.split(".")
        for i in range(len(parts), 0, -1):
            layer = self.entries.get(".".join(parts[:i]) + "/")
            if layer is not None:
                return layer
        return None

    def rank(self, layer: str) -> int:
        """0 for the bottom layer, higher going up."""
        return len(self.names) - 1 - self.names.index(layer)


@functools.lru_cache(maxsize=1)
def layers() -> Layers:
    text = ARCHITECTURE.read_text(encoding="utf-8")
    match = re.search(r"<!-- layers -->\s*```[^\n]*\n(.*?)```\s*<!-- /layers -->", text, re.S)
    assert match, f"{ARCHITECTURE}: no fenced block between <!-- layers --> and <!-- /layers -->"
    names, entries = [], {}
    for line in match.group(1).splitlines():
        if not line.strip():
            continue
        layer, sep, modules = line.partition(":")
        assert sep and layer.strip() and modules.split(), f"layer table: bad line {line!r}"
        layer = layer.strip()
        assert layer not in names, f"layer table: layer {layer!r} twice"
        names.append(layer)
        for name in modules.split():
            key = name.rstrip("/").replace("/", ".") + ("/" if name.endswith("/") else "")
            assert key not in entries, f"layer table: {name!r} in layers {entries[key]!r} and {layer!r}"
            entries[key] = layer
    return Layers(tuple(names), entries)


def _module_name(path: Path) -> str:
    """``io/files.py`` -> ``io.files``, ``io/__init__.py`` -> ``io``, ``__init__.py`` -> ``__init__``."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


@functools.lru_cache(maxsize=1)
def modules() -> dict[str, tuple[Path, ast.Module, int]]:
    """Every module of the package: its name -> (path, syntax tree, number of lines)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        text = path.read_text(encoding="utf-8")
        found[_module_name(path)] = (path, ast.parse(text, str(path)), len(text.splitlines()))
    return found


def _is_package(name: str) -> bool:
    return name == "__init__" or modules()[name][0].name == "__init__.py"


def _resolve(name: str) -> str | None:
    """The module an edgeprune-relative dotted name stands for: itself, or the nearest enclosing module."""
    if not name:
        return "__init__"
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        candidate = ".".join(parts[:i])
        if candidate in modules():
            return candidate
    return "__init__"


@functools.cache
def imports(module: str) -> list[tuple[str, int]]:
    """The edgeprune modules ``module`` imports, each with the line of the import."""
    path, tree, _ = modules()[module]
    package = "" if module == "__init__" else (module if _is_package(module) else module.rpartition(".")[0])
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "edgeprune" or alias.name.startswith("edgeprune."):
                    found.append((_resolve(alias.name.partition(".")[2]), node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                if node.level - 1 > len(base):
                    raise AssertionError(f"{path}:{node.lineno}: relative import above the package")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            elif node.module == "edgeprune" or (node.module or "").startswith("edgeprune."):
                source = node.module.partition(".")[2]
            else:
                continue
            for alias in node.names:
                full = f"{source}.{alias.name}" if source else alias.name
                found.append((full if full in modules() else _resolve(source), node.lineno))
    return [(target, line) for target, line in found if target != module]


def _where(module: str, line: int | None = None) -> str:
    path = modules()[module][0].relative_to(ROOT)
    return f"{path}:{line}" if line else str(path)


def test_every_module_has_a_place_in_the_layer_table():
    table = layers()
    missing = [_where(m) for m in modules() if table.layer_of(m) is None]
    assert not missing, f"modules missing from the layer table of {ARCHITECTURE.name}: {', '.join(missing)}"


def test_every_name_in_the_layer_table_is_a_module():
    known = set(modules())
    stale = [
        name
        for name in layers().entries
        if (name.rstrip("/") not in known or (name.endswith("/") and not _is_package(name.rstrip("/"))))
    ]
    assert not stale, f"names in the layer table that are no module (or no package) of edgeprune: {stale}"


def test_no_import_goes_to_a_higher_layer():
    table = layers()
    upward = []
    for module in modules():
        layer = table.layer_of(module)
        if layer is None:
            continue
        for target, line in imports(module):
            target_layer = table.layer_of(target)
            if target_layer is not None and table.rank(target_layer) > table.rank(layer):
                upward.append(f"{_where(module, line)}: {module} ({layer}) imports {target} ({target_layer})")
    assert not upward, "imports that go up the layers:\n" + "\n".join(upward)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle through each strongly connected component of more than one module (Tarjan, then a path)."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(set(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    circles = []
    for component in components:
        start = min(component)
        # breadth-first from start back to start, inside the component: a shortest circle
        previous, frontier, end = {}, [start], None
        while frontier and end is None:
            following = []
            for v in frontier:
                for w in sorted(graph[v] & component):
                    if w == start:
                        end = v
                        break
                    if w not in previous:
                        previous[w] = v
                        following.append(w)
                if end is not None:
                    break
            frontier = following
        path = [end]
        while path[-1] != start:
            path.append(previous[path[-1]])
        circles.append([*reversed(path), start])
    return circles


def test_no_two_modules_import_each_other_directly_or_through_others():
    graph = {m: {t for t, _ in imports(m)} for m in modules()}
    circles = _cycles(graph)
    assert not circles, "import circles:\n" + "\n".join(" -> ".join(c) for c in circles)


def test_no_module_is_over_600_lines():
    long = [f"{_where(m)}: {n} lines" for m, (_, _, n) in modules().items() if n > MAX_MODULE_LINES]
    assert not long, f"modules over {MAX_MODULE_LINES} lines:\n" + "\n".join(long)


def _functions(tree: ast.Module):
    """Every function and method, nested ones included, with its qualified name and its class (or None)."""

    def visit(node: ast.AST, prefix: str, owner: ast.ClassDef | None):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                yield f"{prefix}{child.name}", child, owner
                yield from visit(child, f"{prefix}{child.name}.", None)
            elif isinstance(child, ast.ClassDef):
                yield from visit(child, f"{prefix}{child.name}.", child)
            else:
                yield from visit(child, prefix, owner)

    yield from visit(tree, "", None)


def test_no_function_is_over_80_lines():
    long = []
    for module, (_, tree, _) in modules().items():
        for name, node, _ in _functions(tree):
            lines = node.end_lineno - node.lineno + 1
            if lines > MAX_FUNCTION_LINES:
                long.append(f"{_where(module, node.lineno)}: {name} {lines} lines")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(long)


def _public(name: str, node: ast.AST, owner: ast.ClassDef | None, top_level: bool) -> bool:
    if owner is not None:
        return not owner.name.startswith("_") and (not node.name.startswith("_") or node.name == "__init__")
    return top_level and not name.startswith("_")


def test_no_public_function_takes_over_6_positional_parameters():
    wide = []
    for module, (_, tree, _) in modules().items():
        for name, node, owner in _functions(tree):
            if not _public(name, node, owner, "." not in name):
                continue
            positional = [a.arg for a in node.args.posonlyargs + node.args.args]
            decorators = {d.id for d in node.decorator_list if isinstance(d, ast.Name)}
            if owner is not None and "staticmethod" not in decorators and positional:
                positional = positional[1:]  # self or cls
            if len(positional) > MAX_POSITIONAL:
                wide.append(f"{_where(module, node.lineno)}: {name}({', '.join(positional)})")
    assert not wide, f"public functions with over {MAX_POSITIONAL} positional parameters:\n" + "\n".join(wide)
