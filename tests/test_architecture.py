"""The shape of the package, checked from its source (AST; nothing is imported):

- no import circle among ``mildnet`` modules, imports inside functions included;
- the run-folder file names (``best.keras``, ``config.json``, ``history.csv``) are spelled only in
  ``mildnet/runs.py``;
- only ``mildnet/ui/`` imports streamlit;
- ``ruff check`` finds nothing (skipped where ruff is not installed).
"""

from __future__ import annotations

import ast
import importlib.util
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "mildnet"
PACKAGE_DIR = PROJECT_ROOT / PACKAGE

RUN_FILES_MODULE = "mildnet/runs.py"  # the one place that knows how a run folder is laid out
RUN_FILE_NAMES = ("best.keras", "config.json", "history.csv")
RUN_FILE_PATTERN = re.compile(r"(?<![\w.-])(" + "|".join(re.escape(n) for n in RUN_FILE_NAMES) + r")(?![\w-])")
UI_DIR = "mildnet/ui/"  # the only modules that may import streamlit


# --- reading the package ------------------------------------------------------------------------------------------


def module_name(path: Path, root: Path = PROJECT_ROOT) -> str:
    """``mildnet/x/y.py`` -> ``mildnet.x.y``; ``mildnet/x/__init__.py`` -> ``mildnet.x``."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules(package_dir: Path = PACKAGE_DIR) -> dict[str, Path]:
    """Every module of the package, by dotted name."""
    root = package_dir.parent
    return {module_name(p, root): p for p in sorted(package_dir.rglob("*.py")) if "__pycache__" not in p.parts}


def relpath(path: Path) -> str:
    try:
        return path.relative_to(PROJECT_ROOT).as_posix()
    except ValueError:
        return path.as_posix()


@dataclass(frozen=True)
class Import:
    target: str  # the mildnet module that gets executed
    line: int
    where: str  # "module level" or "in f()"

    def describe(self, path: Path) -> str:
        return f"{relpath(path)}:{self.line} ({self.where})"


class _ImportVisitor(ast.NodeVisitor):
    """Every import statement of a module with the function it sits in (if any)."""

    def __init__(self) -> None:
        self.found: list[tuple[ast.Import | ast.ImportFrom, str]] = []
        self._functions: list[str] = []

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self._functions.append(node.name)
        self.generic_visit(node)
        self._functions.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = _function

    def _import(self, node: ast.Import | ast.ImportFrom) -> None:
        self.found.append((node, f"in {'.'.join(self._functions)}()" if self._functions else "module level"))

    visit_Import = visit_ImportFrom = _import


def _resolve_from(node: ast.ImportFrom, importer: str, is_package: bool) -> str | None:
    """The absolute module a ``from X import ...`` reads from (relative imports resolved)."""
    if node.level == 0:
        return node.module
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    if not base:
        return None  # beyond the top-level package: not ours
    return ".".join(base + ([node.module] if node.module else []))


def _known(name: str | None, modules: set[str]) -> str | None:
    """The longest prefix of dotted ``name`` that is one of ``modules`` (``import mildnet.x.y`` runs ``mildnet.x.y``;
    ``mildnet.x.y.attr`` is not a module, so ``mildnet.x.y``)."""
    parts = (name or "").split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def imports_of(path: Path, name: str, modules: set[str]) -> list[Import]:
    """The package modules that module ``name`` (at ``path``) imports, anywhere in it.

    ``import mildnet.x.y`` and ``from mildnet.x import y`` with ``y`` a submodule are edges to ``mildnet.x.y``;
    ``from mildnet.x import f`` with ``f`` a function is an edge to ``mildnet.x``. Parent packages that are
    imported on the way are not counted (a package ``__init__`` that re-exports its submodules would otherwise
    be a circle with each of them)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    visitor = _ImportVisitor()
    visitor.visit(tree)
    is_package = path.name == "__init__.py"
    found: list[Import] = []
    for node, where in visitor.found:
        if isinstance(node, ast.Import):
            targets = [_known(alias.name, modules) for alias in node.names]
        else:
            source = _resolve_from(node, name, is_package)
            targets = []
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                targets.append(submodule if submodule in modules else _known(source, modules))
        found.extend(Import(t, node.lineno, where) for t in targets if t is not None and t != name)
    return found


def import_graph(package_dir: Path = PACKAGE_DIR) -> tuple[dict[str, dict[str, Import]], dict[str, Path]]:
    """``graph[a][b]``: the first place module ``a`` imports module ``b``."""
    modules = package_modules(package_dir)
    graph: dict[str, dict[str, Import]] = {}
    for name, path in modules.items():
        edges: dict[str, Import] = {}
        for imp in imports_of(path, name, set(modules)):
            edges.setdefault(imp.target, imp)
        graph[name] = edges
    return graph, modules


def strongly_connected_components(graph: dict[str, dict[str, Import]]) -> list[list[str]]:
    """Tarjan's algorithm, iteratively; components in a stable order, members sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in graph:
                    continue
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    components.append(sorted(component))
    return sorted(components)


def shortest_cycle(graph: dict[str, dict[str, Import]], component: list[str]) -> list[str]:
    """A shortest circle through the component's first module, staying inside the component."""
    members = set(component)
    start = component[0]
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node]):
                if child not in members:
                    continue
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return path[::-1] + [start]
                if child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    raise AssertionError(f"{component} is not a circle")


def import_circles(package_dir: Path = PACKAGE_DIR) -> list[str]:
    """One readable paragraph per group of modules that import each other, round in a circle."""
    graph, modules = import_graph(package_dir)
    reports = []
    for component in strongly_connected_components(graph):
        if len(component) < 2:
            continue
        cycle = shortest_cycle(graph, component)
        steps = "\n".join(f"    {a} -> {b}   [{graph[a][b].describe(modules[a])}]" for a, b in zip(cycle, cycle[1:]))
        inside = "\n".join(f"      {a} -> {b}   [{graph[a][b].describe(modules[a])}]"
                           for a in component for b in sorted(graph[a]) if b in component)
        reports.append(f"  {' -> '.join(cycle)}\n{steps}\n    all imports among {', '.join(component)} "
                       f"(break enough of them that no circle is left):\n{inside}")
    return reports


# --- what is spelled where ----------------------------------------------------------------------------------------


def _docstring_nodes(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                ids.add(id(first.value))
    return ids


def run_file_names_spelled(path: Path) -> list[str]:
    """``file:line: 'best.keras'`` for each string constant in code (docstrings and comments aside) that names a
    run-folder file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    docstrings = _docstring_nodes(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            for match in RUN_FILE_PATTERN.finditer(node.value):
                found.append((node.lineno, node.col_offset, match.start(),
                              f"{relpath(path)}:{node.lineno}: {match.group(1)!r} in {node.value!r}"))
    return [hit for *_, hit in sorted(found)]


def streamlit_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        found.extend(f"{relpath(path)}:{node.lineno}: imports {n}" for n in names
                     if n == "streamlit" or n.startswith("streamlit."))
    return found


# --- layers -------------------------------------------------------------------------------------------------------

# The callers (the app, the CLI, the HTTP API) sit on one search engine, which sits on the core; nothing below
# may reach up. Keys and values are "components": the second part of a module's name (``mildnet.data.images`` ->
# ``data``), or for the search package its module (``mildnet.search.engine`` -> ``search.engine``).
CALLERS = {"api", "cli", "ui", "__main__"}
ENGINE = {"search.engine", "search.model", "search.catalogue"}
BACK_ENDS = {"search.searcher", "search.index", "search.plot", "search.batching", "search.faiss_index",
             "search.milvus_index"}
FORBIDDEN = {
    **{c: CALLERS for c in ("data", "store", "errors", "embeddings", "evaluation", "calibration",
                            "catalogue_calibration", "product_types", "runs", "models", "training", "pretrained",
                            "shop", "home")},
    # The core never depends on the engine built over it, nor on training or the callers.
    **{c: CALLERS | ENGINE | {"training"} for c in ("data", "store", "embeddings", "models", "runs", "evaluation",
                                                     "calibration", "catalogue_calibration", "product_types")},
    # Index back ends find top-k among vectors: no models, calibration or catalogue logic.
    **{c: CALLERS | ENGINE | {"training", "calibration", "catalogue_calibration", "models", "evaluation"}
       for c in BACK_ENDS},
    **{c: CALLERS | {"training"} for c in ENGINE},
    "api": {"cli", "ui", "training"},
    "ui": {"cli", "api"},
}


def component(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return PACKAGE
    if parts[1] == "search" and len(parts) > 2:
        return f"search.{parts[2]}"
    return parts[1]


def layer_violations(graph: dict[str, dict[str, Import]], modules: dict[str, Path]) -> list[str]:
    found = []
    for name, edges in sorted(graph.items()):
        banned = FORBIDDEN.get(component(name), set())
        for target, imp in sorted(edges.items()):
            if component(target) in banned:
                found.append(f"{imp.describe(modules[name])}: {name} imports {target}")
    return found


# --- the tests ----------------------------------------------------------------------------------------------------


def test_no_import_circles_among_mildnet_modules():
    circles = import_circles()
    if circles:
        pytest.fail(f"{len(circles)} group(s) of mildnet modules import each other in a circle (imports inside "
                    "functions count too); a shortest circle per group, then all imports inside the group:\n"
                    + "\n".join(circles), pytrace=False)


def test_layers_only_import_downwards():
    graph, modules = import_graph()
    found = layer_violations(graph, modules)
    if found:
        pytest.fail("imports that reach up a layer (callers > engine > core; index back ends know only vectors):\n  "
                    + "\n  ".join(found), pytrace=False)


def test_layer_check_sees_an_import_that_reaches_up(tmp_path):
    package = tmp_path / PACKAGE
    (package / "search").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "search" / "__init__.py").write_text("")
    (package / "search" / "searcher.py").write_text("def f():\n    from mildnet.search import engine\n")
    (package / "search" / "engine.py").write_text("from mildnet.search import searcher\n")
    graph, modules = import_graph(package)
    found = layer_violations(graph, modules)
    assert len(found) == 1 and "mildnet.search.searcher imports mildnet.search.engine" in found[0]


def test_only_runs_module_spells_run_folder_file_names():
    found = [hit for name, path in package_modules().items() if relpath(path) != RUN_FILES_MODULE
             for hit in run_file_names_spelled(path)]
    if found:
        pytest.fail(f"run-folder file names {RUN_FILE_NAMES} spelled outside {RUN_FILES_MODULE} ({len(found)}); "
                    "use its constants/helpers instead:\n  " + "\n  ".join(found), pytrace=False)


def test_only_ui_imports_streamlit():
    found = [hit for path in package_modules().values() if not relpath(path).startswith(UI_DIR)
             for hit in streamlit_imports(path)]
    if found:
        pytest.fail(f"streamlit imported outside {UI_DIR}:\n  " + "\n  ".join(found), pytrace=False)


def _ruff() -> list[str] | None:
    if importlib.util.find_spec("ruff") is not None:
        return [sys.executable, "-m", "ruff"]
    binary = shutil.which("ruff")
    return [binary] if binary else None


def test_ruff_check_is_clean():
    ruff = _ruff()
    if ruff is None:
        pytest.skip("ruff is not installed (pip install -r requirements-test.txt); lint check skipped")
    result = subprocess.run([*ruff, "check", "--no-cache", "--output-format", "concise", "."], cwd=PROJECT_ROOT,
                            capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        pytest.fail(f"ruff check found problems (ruff check --fix . fixes the [*] ones):\n"
                    f"{result.stdout[-8000:]}{result.stderr[-2000:]}", pytrace=False)


# --- the checker itself, on a tiny package ------------------------------------------------------------------------


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root / "pkg"


def test_circle_finder_on_a_tiny_package(tmp_path):
    package = _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from pkg import b\n",  # b is a submodule: an edge to pkg.b, not to pkg
        "pkg/b.py": "def f():\n    from .c import g\n",  # inside a function, relative
        "pkg/c.py": "import pkg.a.thing\n",  # pkg.a.thing is no module: pkg.a
        "pkg/sub/__init__.py": "from pkg.sub.x import X\nfrom . import y\n",  # re-exports: no circle by itself
        "pkg/sub/x.py": "from pkg.sub import y\nX = 1\n",
        "pkg/sub/y.py": "from pkg.sub.x import X\n",  # x <-> y
        "pkg/d.py": "from pkg.e import h\n",
        "pkg/e.py": "from ..pkg import d\n",  # relative beyond... still pkg.d via level 2 from pkg.e
        "pkg/ok.py": "import os\nfrom pkg import sub\n",
    })
    graph, _ = import_graph(package)
    assert set(graph["pkg.a"]) == {"pkg.b"}
    assert set(graph["pkg.b"]) == {"pkg.c"} and graph["pkg.b"]["pkg.c"].where == "in f()"
    assert set(graph["pkg.sub"]) == {"pkg.sub.x", "pkg.sub.y"}
    assert set(graph["pkg.ok"]) == {"pkg.sub"}
    circles = import_circles(package)
    assert len(circles) == 2, circles
    assert circles[0].startswith("  pkg.a -> pkg.b -> pkg.c -> pkg.a\n"), circles[0]
    assert "pkg/b.py:2 (in f())" in circles[0]
    assert circles[1].startswith("  pkg.sub.x -> pkg.sub.y -> pkg.sub.x\n"), circles[1]
    # pkg.e's "from ..pkg import d" leaves the package: not an edge, so d -> e is no circle.
    assert "pkg.d" not in "".join(circles)


def test_run_file_name_finder_ignores_docstrings_and_other_names(tmp_path):
    path = tmp_path / "m.py"
    path.write_text('"""Reads best.keras."""\n'
                    'def f(run):\n'
                    '    """config.json too."""\n'
                    '    # history.csv\n'
                    '    a = run / "best.keras"\n'
                    '    b = f"{run}/config.json"\n'
                    '    c = "train_config.json", "config.jsonl", "best.keras.tmp", "history.csv.bak"\n',
                    encoding="utf-8")
    found = run_file_names_spelled(path)
    assert [hit.split(": ", 1)[1].split(" in ")[0] for hit in found] == \
        ["'best.keras'", "'config.json'", "'best.keras'", "'history.csv'"], found
