"""The architecture rules of docs/architecture.md and docs/style.md, checked on the source text.

Nothing here imports histovl: every check reads `src/histovl` as text or parses it with `ast`, so
a rule broken by a module that fails to import is still reported, and the checks take well under
a second.

- Every document a source file (package, benchmarks, scripts) names (``docs/interfaces.md``,
  ``README.md``) exists in this repository, so a reader of the code can follow the reference.
- No import cycle between modules (see `import_graph` for how edges are counted).
- No function longer than `MAX_FUNCTION_LINES`.
- Layering: nothing below `histovl.cli` imports it; `histovl.models` imports no pipeline package;
  `histovl.options` imports nothing from histovl.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src"
PACKAGE = SRC / "histovl"

#: The longest function (``def`` line to last line, docstring included) docs/style.md allows.
MAX_FUNCTION_LINES = 80

#: What `histovl.models` may import from histovl: itself and the shared low-level modules (these,
#: and any private top-level module such as ``histovl._io``).
MODELS_MAY_IMPORT = ("histovl.models", "histovl.errors", "histovl.options", "histovl.reproducibility")

#: A document reference: a path-like word ending in ``.md``.
MD_REFERENCE = re.compile(r"[\w/.-]+\.md\b")
#: Source files whose text may cite documents (code, docstrings, shipped data and notes).
TEXT_SUFFIXES = {".py", ".yaml", ".yml", ".md", ".txt", ".json", ".toml", ".cfg"}


# ---- reading the source tree --------------------------------------------------------------------


#: Where document references are checked: the package, and the scripts that ship beside it.
CITING_ROOTS = (PACKAGE, REPO / "benchmarks", REPO / "scripts")


def _source_files(suffixes: set[str], roots: tuple[Path, ...] = (PACKAGE,)) -> list[Path]:
    return sorted(
        p for root in roots for p in root.rglob("*")
        if p.is_file() and p.suffix in suffixes and "__pycache__" not in p.parts
    )


def module_name(path: Path) -> str:
    """``src/histovl/embed/cache.py`` -> ``histovl.embed.cache``; a package's ``__init__.py`` is
    the package itself."""
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@dataclass(frozen=True)
class Module:
    name: str
    path: Path
    tree: ast.Module

    @property
    def is_package(self) -> bool:
        return self.path.name == "__init__.py"

    @property
    def package(self) -> str:
        """The package relative imports start from."""
        return self.name if self.is_package else self.name.rpartition(".")[0]


def load_modules() -> dict[str, Module]:
    modules = {}
    for path in _source_files({".py"}):
        name = module_name(path)
        modules[name] = Module(name, path, ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    return modules


@dataclass(frozen=True)
class ImportStatement:
    """One import anywhere in a module (top level, in a function, under ``TYPE_CHECKING``)."""

    target: str
    """The module named: ``import a.b`` -> ``a.b``; ``from a.b import c`` -> ``a.b``."""
    names: tuple[str, ...]
    """The names taken from it with ``from ... import``; empty for ``import a.b``."""
    line: int


def _absolute(module: Module, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.package.split(".")
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: Module) -> Iterator[ImportStatement]:
    """Every import in the module, including ``importlib.import_module("literal")`` calls."""
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield ImportStatement(alias.name, (), node.lineno)
        elif isinstance(node, ast.ImportFrom):
            yield ImportStatement(_absolute(module, node), tuple(a.name for a in node.names), node.lineno)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            yield ImportStatement(node.args[0].value, (), node.lineno)


# ---- the import graph ---------------------------------------------------------------------------


def _defining_module(package: str, name: str, modules: dict[str, Module], seen: frozenset[str] = frozenset()) -> str:
    """Where ``from <package> import <name>`` really comes from.

    A submodule of that name; else, when the package's ``__init__`` re-exports the name from one
    of histovl's modules, that module (followed through further re-exports); else the package.
    """
    if f"{package}.{name}" in modules:
        return f"{package}.{name}"
    init = modules.get(package)
    if init is None or not init.is_package or package in seen:
        return package
    for source, original in _reexports(init).get(name, []):
        if source in modules and modules[source].is_package:
            return _defining_module(source, original, modules, seen | {package})
        return _known_module(source, modules)
    return package


def _reexports(init: Module) -> dict[str, list[tuple[str, str]]]:
    """name -> [(module it comes from, its name there)] for a package ``__init__``.

    Two forms: ``from histovl.x.y import name`` at the top level, and a lazy index
    (PEP 562) ``_EXPORTS = {"name": "histovl.x.y", ...}`` read by a module ``__getattr__``.
    """
    found: dict[str, list[tuple[str, str]]] = {}
    for node in init.tree.body:
        if isinstance(node, ast.ImportFrom) and _absolute(init, node).startswith("histovl"):
            for alias in node.names:
                found.setdefault(alias.asname or alias.name, []).append((_absolute(init, node), alias.name))
        value = node.value if isinstance(node, ast.Assign | ast.AnnAssign) else None
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        if isinstance(value, ast.Dict) and any(isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in targets):
            for key, module in zip(value.keys, value.values, strict=True):
                if isinstance(key, ast.Constant) and isinstance(module, ast.Constant) and str(module.value).startswith("histovl"):
                    found.setdefault(str(key.value), []).append((str(module.value), str(key.value)))
    return found


def _known_module(dotted: str, modules: dict[str, Module]) -> str:
    """The longest prefix of `dotted` that is a module of histovl (``a.b.attr`` -> ``a.b``)."""
    while dotted and dotted not in modules:
        dotted = dotted.rpartition(".")[0]
    return dotted


def import_graph(modules: dict[str, Module]) -> dict[str, dict[str, int]]:
    """module -> {module it imports: line}, over histovl's own modules.

    The rule for edges:
    - ``import histovl.a.b`` is an edge to ``histovl.a.b``; the parent packages' ``__init__``
      files that Python runs on the way are not edges (otherwise every package's ``__init__``
      that imports its own submodules would form a cycle with each of them).
    - ``from histovl.a import b`` is an edge to the module that defines ``b``: the submodule
      ``histovl.a.b`` if there is one; else, when ``histovl/a/__init__.py`` re-exports ``b``
      from a submodule, that submodule (re-exports are followed); else ``histovl.a`` itself.
      A package ``__init__`` that gathers its submodules' names is an index, not a dependency,
      so ``a.x`` importing a name of ``a.y`` through ``a`` is the edge ``a.x -> a.y``. A lazy
      index (``_EXPORTS = {"b": "histovl.a.y"}`` read by a PEP 562 ``__getattr__``) is followed
      the same way; the lazy index itself imports nothing, so it adds no edge of its own.
    - Imports inside functions and under ``if TYPE_CHECKING:`` count: a local import postpones
      a cycle to run time, it does not remove it.
    - ``importlib.import_module("histovl.a.b")`` with a literal name counts as an import.
    """
    graph: dict[str, dict[str, int]] = {name: {} for name in modules}
    for module in modules.values():
        for stmt in imports_of(module):
            if not (stmt.target == "histovl" or stmt.target.startswith("histovl.")):
                continue
            if not stmt.names:
                targets = [_known_module(stmt.target, modules)]
            elif stmt.target in modules and modules[stmt.target].is_package:
                targets = [_defining_module(stmt.target, n, modules) for n in stmt.names]
            else:
                targets = [_known_module(stmt.target, modules)]
            for target in targets:
                if target and target != module.name:
                    graph[module.name].setdefault(target, stmt.line)
    return graph


def strongly_connected_components(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Tarjan's algorithm (iterative); components of more than one module, each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, successors = work[-1]
            advanced = False
            for succ in successors:
                if succ not in index:
                    index[succ] = low[succ] = counter
                    counter += 1
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(sorted(graph.get(succ, {})))))
                    advanced = True
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            if advanced:
                continue
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
                if len(component) > 1:
                    found.append(sorted(component))
    return sorted(found)


def _describe_cycle(component: list[str], graph: dict[str, dict[str, int]], modules: dict[str, Module]) -> str:
    members = set(component)
    edges = [
        f"    {a} -> {b} ({modules[a].path.relative_to(REPO)}:{line})"
        for a in component
        for b, line in sorted(graph[a].items())
        if b in members
    ]
    return "cycle between " + ", ".join(component) + ":\n" + "\n".join(edges)


# ---- the tests ----------------------------------------------------------------------------------


def _resolve_document(reference: str, source: Path) -> Path | None:
    """The file a document reference names, looked up from the repository root, from docs/ and
    from the citing file's folder; None unless it is a file inside the repository whose name
    matches the reference's case exactly."""
    for base in (REPO, REPO / "docs", source.parent):
        candidate = (base / reference).resolve()
        if not candidate.is_relative_to(REPO) or not candidate.is_file():
            continue
        if candidate.name in {p.name for p in candidate.parent.iterdir()}:  # exact case
            return candidate
    return None


def test_every_document_the_source_cites_is_in_the_repository() -> None:
    missing = []
    for path in _source_files(TEXT_SUFFIXES, CITING_ROOTS):
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            for match in MD_REFERENCE.finditer(line):
                reference = match.group(0)
                if match.start() >= 3 and line[match.start() - 3 : match.start()] == "://" or "//" in reference:
                    continue  # a URL
                if _resolve_document(reference, path) is None:
                    missing.append(f"{path.relative_to(REPO)}:{lineno}: {reference}")
    assert not missing, "references to documents that are not in the repository (cite docs/<name>.md):\n" + "\n".join(missing)


def test_no_import_cycle_between_modules() -> None:
    modules = load_modules()
    graph = import_graph(modules)
    cycles = strongly_connected_components(graph)
    assert not cycles, "\n".join(_describe_cycle(c, graph, modules) for c in cycles)


def test_no_function_is_longer_than_the_limit() -> None:
    long = []
    for module in load_modules().values():
        for node in ast.walk(module.tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{module.path.relative_to(REPO)}:{node.lineno} {node.name} ({length} lines)")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines (split them into named steps):\n" + "\n".join(long)


def _imports_violating(may_import: Callable[[str, str], bool], modules: dict[str, Module]) -> list[str]:
    bad = []
    for module in modules.values():
        for stmt in imports_of(module):
            named = [f"{stmt.target}.{n}" for n in stmt.names] if stmt.names else [stmt.target]
            if any(not may_import(module.name, target) for target in named):
                bad.append(f"{module.path.relative_to(REPO)}:{stmt.line} {module.name} imports {stmt.target}")
    return sorted(set(bad))


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _cli_rule(importer: str, target: str) -> bool:
    """Only histovl.cli imports histovl.cli."""
    return _within(importer, "histovl.cli") or not _within(target, "histovl.cli")


def _models_rule(importer: str, target: str) -> bool:
    """histovl.models imports itself, `MODELS_MAY_IMPORT` and private top-level modules only."""
    if not _within(importer, "histovl.models") or not _within(target, "histovl"):
        return True
    top = target.split(".")[1] if target.count(".") else ""
    private_top_level = top.startswith("_") and not top.startswith("__")  # histovl._io, not __version__
    return private_top_level or any(_within(target, allowed) for allowed in MODELS_MAY_IMPORT)


def _options_rule(importer: str, target: str) -> bool:
    """histovl.options imports nothing from histovl."""
    return importer != "histovl.options" or not _within(target, "histovl")


def test_nothing_below_the_cli_imports_it() -> None:
    bad = _imports_violating(_cli_rule, load_modules())
    assert not bad, "only histovl.cli may import histovl.cli:\n" + "\n".join(bad)


def test_models_imports_nothing_of_the_pipeline() -> None:
    bad = _imports_violating(_models_rule, load_modules())
    allowed = ", ".join(MODELS_MAY_IMPORT)
    assert not bad, f"histovl.models may import only {allowed} and histovl._<module>:\n" + "\n".join(bad)


def test_options_imports_nothing_from_histovl() -> None:
    bad = _imports_violating(_options_rule, load_modules())
    assert not bad, "histovl.options sits at the bottom of the graph:\n" + "\n".join(bad)


# ---- the checks check themselves ----------------------------------------------------------------


def _fake_modules(sources: dict[str, str]) -> dict[str, Module]:
    modules = {}
    for name, text in sources.items():
        is_package = name.endswith(".__init__")
        dotted = name.removesuffix(".__init__")
        path = SRC / (dotted.replace(".", "/") + ("/__init__.py" if is_package else ".py"))
        modules[dotted] = Module(dotted, path, ast.parse(text))
    return modules


def test_graph_rules_on_a_made_up_package() -> None:
    modules = _fake_modules({
        "histovl.a.__init__": "from histovl.a.x import f\nfrom histovl.a.y import g\n",
        "histovl.a.x": "def f(): pass\n",
        "histovl.a.y": "from histovl.a import f\ndef g(): pass\n",  # through the index: y -> x
        "histovl.b.__init__": "from .p import h\n",
        "histovl.b.p": "def h():\n    from histovl.b.q import k\n",  # a local import
        "histovl.b.q": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from histovl.b import h\nk = 1\n",
        "histovl.c.__init__": "_EXPORTS: dict[str, str] = {'m': 'histovl.c.m', 'f': 'histovl.a'}\n",
        "histovl.c.m": "def m(): pass\n",
        "histovl.c.n": "from histovl.c import m, f\n",  # lazy index: to c.m, and through a to a.x
    })
    graph = import_graph(modules)
    assert graph["histovl.a.y"] == {"histovl.a.x": 1}
    assert graph["histovl.c.n"] == {"histovl.c.m": 1, "histovl.a.x": 1} and graph["histovl.c"] == {}
    assert set(graph["histovl.a"]) == {"histovl.a.x", "histovl.a.y"}
    assert strongly_connected_components(graph) == [["histovl.b.p", "histovl.b.q"]]


def test_document_references_resolve_only_inside_the_repository() -> None:
    source = PACKAGE / "options.py"
    assert _resolve_document("docs/architecture.md", source) == REPO / "docs" / "architecture.md"
    assert _resolve_document("architecture.md", source) == REPO / "docs" / "architecture.md"
    assert _resolve_document("ARCHITECTURE.md", source) is None
    assert _resolve_document("../shared/guide/ARCHITECTURE.md", source) is None


def test_layering_rules_on_made_up_imports() -> None:
    modules = _fake_modules({
        "histovl.models.a": "from histovl._io import atomic_write_json\nfrom histovl.errors import HistovlError\n"
                            "from histovl.models.card import ModelCard\nimport numpy\n",
        "histovl.models.b": "def f():\n    from histovl.embed import encode_images\n",
        "histovl.models.c": "from histovl import __version__\n",
        "histovl.data.d": "from histovl.cli.common import OutOpt\n",
        "histovl.cli.e": "from histovl.cli.common import OutOpt\nfrom histovl.zeroshot import zeroshot\n",
        "histovl.options": "import os\nfrom histovl import errors\n",
    })
    assert [b.split()[1] for b in _imports_violating(_models_rule, modules)] == ["histovl.models.b", "histovl.models.c"]
    assert [b.split()[1] for b in _imports_violating(_cli_rule, modules)] == ["histovl.data.d"]
    assert [b.split()[1] for b in _imports_violating(_options_rule, modules)] == ["histovl.options"]
