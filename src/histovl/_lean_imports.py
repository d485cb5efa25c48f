"""A faster first import of torchvision and open_clip in the `histovl` command (about 3 s of a cold run).

Measured with ``python -X importtime`` (torch 2.14, torchvision 0.29, open_clip 3.3): importing
torchvision imports ``torch._dynamo`` (1.2 s) for one helper of ``roi_align`` that histovl never
calls, and importing open_clip imports timm and transformers (about 1.5 s more, with the
``torch._dynamo`` they pull in) for vision and text towers only some architectures use. During
the first import of these two packages, and only then, `enable` arranges that

- ``torch._dynamo`` and ``torch._dynamo.utils`` are stand-ins: the names torchvision imports from
  them at import time (`DEFERRED`) become functions that import the real module on their first
  call and call through. Any other use of the stand-ins while they are in place (an attribute, a
  submodule) imports the real ``torch._dynamo`` there and then, exactly as a plain import would
  have: a torchvision version that needs more of dynamo at import costs the time, never a result;
- open_clip's optional ``try: import timm / transformers ... except ImportError`` blocks see those
  packages as absent. `restore_optional_imports` re-runs those blocks inside the open_clip
  modules (same module objects, same classes) before an architecture that needs them is built;
  histovl's open_clip builder calls it for timm vision towers and Hugging Face text towers.

Once both imports are done nothing of this stays in ``sys.modules`` or ``sys.meta_path``; later
imports of ``torch._dynamo``, timm and transformers are the real ones. Only the CLI enables this
(`histovl.cli.app.main`): a Python session that imports histovl keeps plain imports, because it may
use open_clip's timm or Hugging Face towers directly. ``HISTOVL_PLAIN_IMPORTS=1`` turns it off.
"""

from __future__ import annotations

import importlib
import os
import sys
import types
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

DISABLE_ENV = "HISTOVL_PLAIN_IMPORTS"
DYNAMO = "torch._dynamo"
#: Names imported from torch._dynamo.utils at import time by torchvision (ops/roi_align.py); each is
#: only called later, when the real module is loaded on demand.
DEFERRED = {f"{DYNAMO}.utils": frozenset({"is_compile_supported"})}
#: The packages whose first import is lean, each with the optional packages it imports without.
LEAN: dict[str, tuple[str, ...]] = {"torchvision": (), "open_clip": ("timm", "transformers")}

_state: dict[str, Any] = {"lean": {}, "depth": 0, "stubs": {}, "imported_without": {}}


def enable(lean: dict[str, tuple[str, ...]] | None = None) -> None:
    """Make the first import of torchvision and open_clip (or of `lean`'s packages) lean in this
    process; the CLI calls this. A no-op under ``HISTOVL_PLAIN_IMPORTS=1``."""
    if os.environ.get(DISABLE_ENV, "").strip() not in ("", "0"):
        return
    _state["lean"] = {name: tuple(opt) for name, opt in (LEAN if lean is None else lean).items() if name not in sys.modules}
    if _state["lean"] and _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


def imported_without(package: str = "open_clip") -> frozenset[str]:
    """The optional packages `package`'s modules were imported without (empty after a restore)."""
    return frozenset(_state["imported_without"].get(package, ()))


def restore_optional_imports(package: str = "open_clip", needed: Sequence[str] | None = None) -> None:
    """Re-run, inside every loaded module of `package`, the top-level ``try:`` blocks that import
    one of `needed` (default: all it was imported without) and were skipped by the lean import:
    the same module objects and classes then see timm/transformers as a plain import would have.
    A no-op when nothing was skipped."""
    skipped = set(_state["imported_without"].get(package, ()))
    missing = skipped & set(skipped if needed is None else needed)
    if not missing:
        return
    for name in sorted(n for n in list(sys.modules) if n == package or n.startswith(f"{package}.")):
        module = sys.modules.get(name)
        if module is not None:
            _rerun_optional_imports(module, missing)
    _state["imported_without"][package] = skipped - missing


def _rerun_optional_imports(module: types.ModuleType, packages: set[str]) -> None:
    import ast
    import inspect

    try:
        source = inspect.getsource(module)
    except (OSError, TypeError):  # no source (a compiled-only install): nothing to re-run
        return
    for node in ast.parse(source).body:
        if isinstance(node, ast.Try) and packages & _imported_packages(node.body):
            code = compile(ast.Module(body=[node], type_ignores=[]), module.__file__ or module.__name__, "exec")
            exec(code, module.__dict__)  # noqa: S102 - the module's own code, in its own namespace


def _imported_packages(body: list[Any]) -> set[str]:
    import ast

    found: set[str] = set()
    for stmt in body:
        for node in ast.walk(stmt):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found


# ---- the stand-ins for torch._dynamo ----------------------------------------------------------------
class _DynamoStandIn(types.ModuleType):
    """``torch._dynamo`` (or ``.utils``) during a lean import: see the module docstring."""

    def __getattr__(self, attr: str) -> Any:
        if attr in DEFERRED.get(self.__name__, ()):
            return _deferred(self.__name__, attr)
        if attr.startswith("__"):  # introspection (inspect, pickle): the stand-in has none
            raise AttributeError(attr)
        _load_real_dynamo()  # anything else: the real thing, now, as a plain import would
        return getattr(importlib.import_module(self.__name__), attr)


def _deferred(module: str, attr: str) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        if isinstance(sys.modules.get(module), _DynamoStandIn):
            _load_real_dynamo()
        return getattr(importlib.import_module(module), attr)(*args, **kwargs)

    call.__name__ = call.__qualname__ = attr
    call.__module__ = module
    return call


def _install_dynamo_stand_ins() -> None:
    if DYNAMO in sys.modules:
        return
    for name in (DYNAMO, f"{DYNAMO}.utils"):
        stub = _DynamoStandIn(name)
        if name == DYNAMO:
            stub.__path__ = []  # a package: its submodules are imported through _LeanFinder
        sys.modules[name] = stub
        _state["stubs"][name] = stub


def _remove_dynamo_stand_ins() -> None:
    for name, stub in list(_state["stubs"].items()):
        if sys.modules.get(name) is stub:
            del sys.modules[name]
    _state["stubs"].clear()


def _load_real_dynamo() -> None:
    _remove_dynamo_stand_ins()
    importlib.import_module(DYNAMO)


class _AlreadyLoaded:
    """A loader for a module that is already in sys.modules (a dynamo submodule the real package
    imported while we were asked for it): hands it back unchanged."""

    def __init__(self, module: types.ModuleType) -> None:
        self.module, self.spec = module, module.__spec__

    def create_module(self, spec: Any) -> types.ModuleType:
        return self.module

    def exec_module(self, module: types.ModuleType) -> None:
        module.__spec__ = self.spec  # module_from_spec set ours


# ---- the finder that wraps the first import of the lean packages ---------------------------------------
class _LeanFinder:  # a sys.meta_path finder (duck-typed: importlib.abc costs 20 ms at startup)
    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname.startswith(f"{DYNAMO}.") and _state["stubs"]:
            return _real_dynamo_submodule_spec(fullname)
        if fullname not in _state["lean"]:
            return None
        spec = _spec_without_self(fullname, path)
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader.exec_module = _lean_exec(spec.loader, fullname, _state["lean"][fullname])  # type: ignore[method-assign]
        return spec


def _real_dynamo_submodule_spec(fullname: str) -> Any:
    """A dynamo submodule asked for during a lean import: the real package first, then its spec."""
    import importlib.machinery
    import importlib.util

    _load_real_dynamo()
    if fullname in sys.modules:
        loader: Any = _AlreadyLoaded(sys.modules[fullname])
        return importlib.util.spec_from_loader(fullname, loader)
    return importlib.machinery.PathFinder.find_spec(fullname, sys.modules[DYNAMO].__path__)


def _spec_without_self(fullname: str, path: Any) -> Any:
    for finder in sys.meta_path:
        if finder is not _FINDER and hasattr(finder, "find_spec"):
            spec = finder.find_spec(fullname, path)
            if spec is not None:
                return spec
    return None


def _lean_exec(loader: Any, name: str, optional: tuple[str, ...]) -> Callable[[types.ModuleType], None]:
    exec_module = loader.exec_module

    def run(module: types.ModuleType) -> None:
        _state["lean"].pop(name, None)
        vars(loader).pop("exec_module", None)  # once: a reload of the package is a plain one
        initial = dict(vars(module))
        try:
            with _lean_window(name, optional):
                exec_module(module)
        except ImportError:
            if not optional:
                raise
            # this version needs one of `optional` at import: a plain import, from scratch
            for sub in [n for n in sys.modules if n.startswith(f"{name}.")]:
                del sys.modules[sub]
            vars(module).clear()
            vars(module).update(initial)
            _state["imported_without"].pop(name, None)
            exec_module(module)
        finally:
            if not _state["lean"] and _FINDER in sys.meta_path:
                sys.meta_path.remove(_FINDER)

    return run


@contextmanager
def _lean_window(name: str, optional: tuple[str, ...]) -> Iterator[None]:
    outer = _state["depth"] == 0
    _state["depth"] += 1
    if outer:
        _install_dynamo_stand_ins()
    blocked = [pkg for pkg in optional if pkg not in sys.modules]
    for pkg in blocked:
        sys.modules[pkg] = None  # type: ignore[assignment]  # `import pkg` -> ImportError, as if absent
    _state["imported_without"][name] = set(blocked)
    try:
        yield
    finally:
        for pkg in blocked:
            if pkg in sys.modules and sys.modules[pkg] is None:
                del sys.modules[pkg]
        _state["depth"] -= 1
        if outer:
            _remove_dynamo_stand_ins()


_FINDER = _LeanFinder()
