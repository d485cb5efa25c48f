"""Packages that share their name with their command (`histovl.zeroshot`, `histovl.embed`, ...).

``histovl.zeroshot`` is both a package and, in the public API, the `zeroshot` function. Python
binds a parent's attribute to the submodule as soon as the submodule is imported, so a plain
function export would be replaced by the package the first time anything imports it. Instead,
such a package makes *itself* callable: calling the module calls the command, and its other
names (``histovl.zeroshot.ZeroshotConfig``) stay where they are.

    >>> import histovl
    >>> histovl.zeroshot("histovl-lite", "tiles/", "lung-he-v1", "runs/x")  # doctest: +SKIP
"""

from __future__ import annotations

import inspect
import sys
import types
from collections.abc import Callable
from typing import Any


class CommandModule(types.ModuleType):
    """A package module that forwards calls to its command function (``__command__``)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.__dict__["__command__"](*args, **kwargs)


def make_callable(module_name: str, command: Callable[..., Any]) -> None:
    """Turn the already-imported module `module_name` into a `CommandModule` calling `command`."""
    module = sys.modules[module_name]
    module.__command__ = command  # type: ignore[attr-defined]
    module.__signature__ = inspect.signature(command)  # type: ignore[attr-defined]  # for help()/IDEs
    module.__class__ = CommandModule
