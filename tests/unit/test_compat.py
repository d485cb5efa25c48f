"""histovl._compat: the 3.11 names histovl uses, on Python 3.10 too."""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional, get_origin

import typer

from histovl._compat import UTC, StrEnum, drop_implicit_optional, get_type_hints


class Colour(StrEnum):
    red = "red"
    dark_blue = "dark-blue"


def test_str_enum_members_are_their_values() -> None:
    assert isinstance(Colour.red, str) and isinstance(Colour.red, Enum)
    assert str(Colour.dark_blue) == f"{Colour.dark_blue}" == "dark-blue" == Colour.dark_blue
    assert Colour("red") is Colour.red and [c.value for c in Colour] == ["red", "dark-blue"]


def test_utc_is_the_utc_time_zone() -> None:
    assert datetime(2026, 1, 1, tzinfo=UTC).utcoffset() == timedelta(0)
    assert datetime.now(UTC).isoformat().endswith("+00:00")


OutOpt = Annotated[Path | None, typer.Option("--out", "-o", help="Output CSV.")]


def command(out: OutOpt = None, n: int = 1) -> None:
    """A CLI function as typer sees it: an Annotated option whose default is None."""


def test_get_type_hints_keeps_annotated_options_on_top() -> None:
    hints = get_type_hints(command)
    assert get_origin(hints["out"]) is Annotated and hints["out"].__metadata__[0].help == "Output CSV."
    assert hints["n"] is int


def test_the_implicit_optional_of_python_310_is_dropped() -> None:
    # What typing.get_type_hints returns on 3.10 for `out: OutOpt = None` (3.11 stopped adding it).
    hints = {"out": Optional[OutOpt], "plain": Optional[int], "n": int}  # noqa: UP045 - the 3.10 form
    fixed = drop_implicit_optional(hints)
    assert fixed["out"] == OutOpt and fixed["n"] is int
    assert fixed["plain"] == Optional[int]  # noqa: UP045 - not Annotated: left as it is
