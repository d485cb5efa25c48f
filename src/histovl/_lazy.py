"""Lazy package exports (PEP 562), written once for every package that uses them.

A package whose public names would pull in torch, open_clip or transformers at import lists them
in an ``_EXPORTS`` dict (name -> defining module) and installs the two module hooks:

    __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__)

The first access imports the defining module and binds the name in the package, so later
lookups are ordinary attribute reads.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def lazy_exports(
    package: str, exports: Mapping[str, str], public: Sequence[str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of `package` for the names in `exports`.

    A name whose defining module is ``<package>.<name>`` resolves to that module (a package named
    like its command is itself callable: see `histovl._command_module`).
    """

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        imported = importlib.import_module(module)
        value = imported if module == f"{package}.{name}" else getattr(imported, name)
        setattr(sys.modules[package], name, value)  # later lookups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *public})

    return __getattr__, __dir__
