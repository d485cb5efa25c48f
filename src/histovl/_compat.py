"""Names from newer Pythons, for Python 3.10 (histovl supports 3.10 to 3.13).

Import these from here instead of the standard library when the standard library only has them
from 3.11 on:

* `StrEnum` (``enum.StrEnum``, 3.11): an enum whose members are strings and print as their value;
  the CLI's choice types use it.
* `UTC` (``datetime.UTC``, 3.11): the UTC time zone.

On 3.11 and newer these are the standard library's own objects.

Example:
    >>> class Colour(StrEnum):
    ...     red = "red"
    >>> str(Colour.red), f"{Colour.red}", Colour.red == "red"
    ('red', 'red', True)
"""

from __future__ import annotations

import sys
from datetime import timezone
from enum import Enum

__all__ = ["UTC", "StrEnum"]

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
