"""Names from newer Pythons, for Python 3.10 (histovl supports 3.10 to 3.13).

Import these from here instead of the standard library when the standard library only has them
from 3.11 on:

* `StrEnum` (``enum.StrEnum``, 3.11): an enum whose members are strings and print as their value;
  the CLI's choice types use it.
* `UTC` (``datetime.UTC``, 3.11): the UTC time zone.
* `get_type_hints`: ``typing.get_type_hints(obj, include_extras=True)`` as 3.11 answers it.
  Python 3.10 wraps the hint of a parameter whose default is None in ``Optional[...]``, which
  buries an ``Annotated[..., typer.Option(...)]`` one level down where typer does not look: the
  option loses its short names (``-o``), help text and ``hidden=True``.

On 3.11 and newer these are the standard library's own objects.

Example:
    >>> class Colour(StrEnum):
    ...     red = "red"
    >>> str(Colour.red), f"{Colour.red}", Colour.red == "red"
    ('red', 'red', True)
"""

from __future__ import annotations

import sys
import typing
from datetime import timezone
from enum import Enum
from typing import Annotated, Any, Union

__all__ = ["UTC", "StrEnum", "get_type_hints"]

UTC = timezone.utc  # noqa: UP017 - datetime.UTC is 3.11+; this is the same object there

if sys.version_info >= (3, 11):  # noqa: UP036 - while ruff's target is py311 (pyproject)
    from enum import StrEnum
else:

    class StrEnum(str, Enum):  # noqa: UP042 - this is the 3.10 fallback for enum.StrEnum
        """`enum.StrEnum` for Python 3.10: ``str()`` and ``format()`` give the value."""

        def __str__(self) -> str:
            return str(self.value)

        def __format__(self, format_spec: str) -> str:
            return format(str(self.value), format_spec)

        @staticmethod
        def _generate_next_value_(name: str, start: int, count: int, last_values: list[str]) -> str:
            return name.lower()


def get_type_hints(obj: Any) -> dict[str, Any]:
    """``typing.get_type_hints(obj, include_extras=True)`` without 3.10's implicit ``Optional``."""
    return drop_implicit_optional(typing.get_type_hints(obj, include_extras=True))


def drop_implicit_optional(hints: dict[str, Any]) -> dict[str, Any]:
    """``Optional[Annotated[X, ...]]`` -> ``Annotated[X, ...]`` (nobody writes the former: on
    Python 3.10 it is what `typing.get_type_hints` makes of ``Annotated[X, ...] = None``)."""
    out = dict(hints)
    for name, hint in hints.items():
        if typing.get_origin(hint) is Union:
            args = [a for a in typing.get_args(hint) if a is not type(None)]
            if len(args) == 1 and typing.get_origin(args[0]) is Annotated:
                out[name] = args[0]
    return out
