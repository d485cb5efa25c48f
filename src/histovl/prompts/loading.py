"""Find and parse prompt sets: shipped names (``lung-he-v1``) or YAML files.

Errors name the file, the key and what is wrong (``classes.lung_aca: class 'lung_aca' has no
descriptions``), because a prompt file is hand-written and the user must be able to fix it from
the message alone. A key written twice in one mapping is refused with both line numbers (plain
YAML keeps the last one, so a copy-pasted class would silently take another class's
descriptions); a file that is not UTF-8 or larger than `MAX_PROMPT_FILE_BYTES` is refused
(docs/reliability.md, "duplicate key in a prompt file", "huge prompt file").
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from histovl._inputs import read_text_file
from histovl.errors import UnknownNameError, did_you_mean
from histovl.prompts.prompt_set import PromptSet, PromptSetError

_SETS_PACKAGE = "histovl.prompts"
_SETS_FOLDER = "sets"
_YAML_SUFFIXES = (".yaml", ".yml")
#: Largest prompt file read (1 MiB): shipped sets are a few KB; a bigger file would be copied
#: whole into every run.json and report.html and cut to the text tower's context anyway.
MAX_PROMPT_FILE_BYTES = 1024 * 1024


class _UniqueKeyLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses a key repeated in one mapping, naming both lines."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<:` merges may repeat keys on purpose
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            try:
                first = seen.setdefault(key, key_node.start_mark.line + 1)
            except TypeError:  # an unhashable key: SafeLoader reports it itself
                continue
            if first != key_node.start_mark.line + 1:
                raise yaml.constructor.ConstructorError(
                    None, None,
                    f"duplicate key {key!r} (first at line {first}); YAML would keep only the last one. "
                    "Merge its entries under one key",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)


def list_prompt_sets() -> list[str]:
    """Names of the prompt sets shipped with histovl, sorted.

    Example:
        >>> "lung-he-v1" in list_prompt_sets()
        True
    """
    folder = resources.files(_SETS_PACKAGE).joinpath(_SETS_FOLDER)
    return sorted(
        entry.name.rsplit(".", 1)[0]
        for entry in folder.iterdir()
        if entry.is_file() and entry.name.endswith(_YAML_SUFFIXES)
    )


def load_prompt_set(name_or_path: str | os.PathLike[str] | PromptSet) -> PromptSet:
    """Load a shipped prompt set by name, or a YAML file by path.

    A value that names an existing file, or ends in ``.yaml``/``.yml``, or contains a path
    separator is read as a file; anything else is looked up among the shipped sets.

    Raises:
        UnknownNameError: No shipped set has that name (close matches and how to list them).
        FileNotFoundError: A path was given and does not exist.
        PromptSetError: The YAML does not parse or does not fit the format (key and problem named).

    Example:
        >>> ps = load_prompt_set("lung-he-v1")
        >>> ps.class_names
        ['lung_aca', 'lung_n', 'lung_scc']
    """
    if isinstance(name_or_path, PromptSet):
        return name_or_path
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    looks_like_path = path.suffix.lower() in _YAML_SUFFIXES or os.sep in text or "/" in text
    if path.is_file() or looks_like_path:
        if not path.is_file():
            raise FileNotFoundError(
                f"prompt file {text!r} does not exist; give a YAML path or a shipped set name "
                f"({', '.join(list_prompt_sets())})"
            )
        text_of_file = read_text_file(path, what="prompt file", max_bytes=MAX_PROMPT_FILE_BYTES)
        return _parse_file(path, text_of_file, default_name=path.stem)
    shipped = list_prompt_sets()
    if text not in shipped:
        raise UnknownNameError(
            f"unknown prompt set {text!r}.{did_you_mean(text, shipped)} Shipped sets: "
            f"{', '.join(shipped)} (list them with `histovl prompts list` or "
            "histovl.prompts.list_prompt_sets()); or give "
            "the path to your own YAML file."
        )
    resource = resources.files(_SETS_PACKAGE) / _SETS_FOLDER / f"{text}.yaml"
    return _parse_file(Path(str(resource)), resource.read_text(encoding="utf-8"), default_name=text)


def prompt_set_from_mapping(data: Any, *, origin: str = "prompt set", default_name: str | None = None) -> PromptSet:
    """Validate a parsed mapping (e.g. from YAML or JSON) into a `PromptSet`.

    Raises:
        PromptSetError: With one line per problem, each naming its key.
    """
    if not isinstance(data, dict):
        raise PromptSetError(
            f"{origin} must be a mapping with keys name, classes, templates (got {type(data).__name__})"
        )
    if "name" not in data and default_name is not None:
        data = {"name": default_name, **data}
    try:
        return PromptSet.model_validate(data)
    except ValidationError as exc:
        allowed = list(PromptSet.model_fields)
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "(top level)"
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = f"unknown key.{did_you_mean(str(err['loc'][0]), allowed)} Allowed keys: {allowed}"
            elif err["type"] == "missing":
                msg = "required key is missing"
            problems.append(f"  {key}: {msg}")
        raise PromptSetError(f"{origin} is invalid:\n" + "\n".join(problems)) from None


def _parse_file(path: Path, text: str, *, default_name: str) -> PromptSet:
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or str(exc)
        raise PromptSetError(f"prompt file {path} is not valid YAML{where}: {problem}") from None
    return prompt_set_from_mapping(data, origin=f"prompt file {path}", default_name=default_name)
