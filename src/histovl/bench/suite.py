"""SUITE.yaml for `histovl bench`: models x data sets x tasks, validated before any work.

The file (docs/bench.md)::

    models: [histovl-lite, "open_clip:ViT-B-32:weights.safetensors"]
    datasets:
      - {name: demo, path: tiles/manifest.csv, prompts: stain.yaml}
    tasks:
      - task: zeroshot
        options: {aggregate: mean}
      - {task: retrieve, name: retrieve-k5, options: {k: [1, 5]}}

Paths are relative to the suite file. A task's ``options`` are fields of that command's config
(`ZeroshotConfig`, `FewshotConfig`, `RetrieveConfig`, `RobustnessConfig`, `MultilabelConfig`) or
of `RunOptions`. Every error is one `SuiteError` line naming the file, the line and the field:
pydantic's error location is mapped onto the YAML node it came from.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from histovl.errors import HistovlError
from histovl.options import RunOptions


class SuiteError(HistovlError, ValueError):
    """The suite file is unreadable or names an unknown model, task, option or value."""


#: task -> (library function module, function name, config module, config class)
TASKS: dict[str, tuple[str, str, str, str]] = {
    "zeroshot": ("histovl.zeroshot.single_label", "zeroshot", "histovl.zeroshot.single_label", "ZeroshotConfig"),
    "fewshot": ("histovl.heads.fewshot_run", "fewshot_eval", "histovl.heads.fewshot_run", "FewshotConfig"),
    "retrieve": ("histovl.retrieval.run", "retrieve", "histovl.retrieval.run", "RetrieveConfig"),
    "robustness": ("histovl.robustness.sweep", "robustness", "histovl.robustness.sweep", "RobustnessConfig"),
    "multilabel": ("histovl.zeroshot.multilabel.pipeline", "multilabel", "histovl.zeroshot.multilabel.pipeline",
                   "MultilabelConfig"),
}
#: tasks that need the data set's prompts
NEEDS_PROMPTS = {"zeroshot", "robustness", "multilabel"}

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetSpec(_Strict):
    """One data set: a name (its folder under ``cells/``), a manifest or class folder, prompts."""

    name: str
    path: str
    prompts: str | None = None

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"{value!r} is not a folder name (letters, digits, '.', '_', '-')")
        return value


class TaskSpec(_Strict):
    """One task: the command, an optional name (several variants of one command), its options."""

    task: str
    name: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("task")
    @classmethod
    def _known_task(cls, value: str) -> str:
        if value not in TASKS:
            raise ValueError(f"unknown task {value!r}; choose from {', '.join(TASKS)}")
        return value

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str | None) -> str | None:
        if value is not None and not _NAME.match(value):
            raise ValueError(f"{value!r} is not a folder name (letters, digits, '.', '_', '-')")
        return value

    @property
    def label(self) -> str:
        return self.name or self.task


class ModelEntry(_Strict):
    """A model: a spec (``histovl-lite``), or ``{name: clip-variant, model: SPEC}`` to show a
    display name in the leaderboard instead of the spec."""

    model: str
    name: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_spec(cls, value: Any) -> Any:
        return {"model": value} if isinstance(value, str) else value

    @property
    def label(self) -> str:
        return self.name or self.model


class SuiteSpec(_Strict):
    """The whole file."""

    models: list[ModelEntry] = Field(min_length=1)
    datasets: list[DatasetSpec] = Field(min_length=1)
    tasks: list[TaskSpec] = Field(min_length=1)


@dataclass(frozen=True)
class Suite:
    """A validated suite: paths resolved, every task's config and option overrides built."""

    source: Path
    models: tuple[tuple[str, str], ...]  # (name as written, spec with paths resolved)
    datasets: tuple[DatasetSpec, ...]
    tasks: tuple[TaskSpec, ...]
    config_options: dict[str, dict[str, Any]]  # task label -> its config's fields from the suite
    run_options: dict[str, dict[str, Any]]  # task label -> RunOptions overrides
    where: dict[str, str]  # task label -> "file:line" of its options

    def build_configs(self) -> dict[str, Any]:
        """Task label -> its command's config (imports the commands; values checked here)."""
        import importlib

        configs = {}
        for task in self.tasks:
            _, _, module, name = TASKS[task.task]
            try:
                configs[task.label] = getattr(importlib.import_module(module), name)(**self.config_options[task.label])
            except (TypeError, ValueError) as exc:
                raise SuiteError(f"{self.where[task.label]}: task {task.label} options: {exc}") from None
        return configs


def load_suite(path: str | Path) -> Suite:
    """Read, validate and resolve a suite file; raises `SuiteError` (one line) on any problem."""
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as exc:
        raise SuiteError(f"cannot read suite {source}: {exc.strerror or exc}") from exc
    try:
        node = yaml.compose(text)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SuiteError(f"{source}: not valid YAML: {str(exc).splitlines()[0]}") from exc
    try:
        spec = SuiteSpec.model_validate(raw if raw is not None else {})
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(err["loc"])
        raise SuiteError(f"{source}{_line_of(node, loc)}: {_dotted(loc) or 'suite'}: {err['msg'].removeprefix('Value error, ')}") from None
    return _resolve(spec, source, node)


def _resolve(spec: SuiteSpec, source: Path, node: yaml.Node | None) -> Suite:
    from histovl.bench.models import check_model

    where = lambda *loc: f"{source}{_line_of(node, loc)}"  # noqa: E731
    base = source.parent
    models = []
    for i, entry in enumerate(spec.models):
        try:
            models.append((entry.label, check_model(entry.model, base)))
        except HistovlError as exc:
            raise SuiteError(f"{where('models', i)}: models.{i}: {exc}") from None
    _unique([m for m, _ in models], "model", where)
    datasets = tuple(_resolve_dataset(d, base) for d in spec.datasets)
    _unique([d.name for d in datasets], "dataset name", where)
    _unique([t.label for t in spec.tasks], "task name (add name: to tell variants apart)", where)
    configs, run_opts, lines = {}, {}, {}
    for i, task in enumerate(spec.tasks):
        configs[task.label], run_opts[task.label] = _task_config(task, i, where)
        lines[task.label] = where("tasks", i, "options")
        if task.task in NEEDS_PROMPTS:
            for j, d in enumerate(datasets):
                if d.prompts is None:
                    raise SuiteError(f"{where('datasets', j)}: datasets.{j}.prompts: task {task.task} needs prompts")
    return Suite(source, tuple(models), datasets, tuple(spec.tasks), configs, run_opts, lines)


def _resolve_dataset(d: DatasetSpec, base: Path) -> DatasetSpec:
    path = str(base / d.path) if not Path(d.path).is_absolute() else d.path
    prompts = d.prompts
    if prompts is not None and (base / prompts).exists():
        prompts = str(base / prompts)
    return d.model_copy(update={"path": path, "prompts": prompts})


def _task_config(task: TaskSpec, i: int, where: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a task's options into config fields and RunOptions fields (names checked here,
    without importing the command; config values are checked by `Suite.build_configs`)."""
    _, _, cfg_module, cfg_name = TASKS[task.task]
    config_fields = config_field_names(cfg_module, cfg_name)
    run_fields = {f.name for f in dataclasses.fields(RunOptions)} - {"cache", "use_cache", "progress"}
    to_config, to_run = {}, {}
    for key, value in task.options.items():
        if key in config_fields:
            to_config[key] = tuple(value) if isinstance(value, list) else value
        elif key in run_fields:
            to_run[key] = value
        else:
            raise SuiteError(
                f"{where('tasks', i, 'options', key)}: tasks.{i}.options.{key}: unknown option for {task.task}; "
                f"{cfg_name} fields: {', '.join(sorted(config_fields))}; run options: {', '.join(sorted(run_fields))}"
            )
    try:
        RunOptions(**to_run)
    except (TypeError, ValueError) as exc:
        raise SuiteError(f"{where('tasks', i, 'options')}: tasks.{i}.options: {exc}") from None
    return to_config, to_run


def config_field_names(module: str, class_name: str) -> set[str]:
    """The fields of a command's config dataclass, read from its source (no import: a re-run of a
    finished grid then never imports the commands, torch included)."""
    import ast

    import histovl

    source = Path(histovl.__file__).parent.joinpath(*module.split(".")[1:]).with_suffix(".py")
    tree = ast.parse(source.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            return {
                s.target.id for s in node.body
                if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name) and not _is_class_var(s.annotation)
            }
    raise LookupError(f"{class_name} not found in {source}")


def _is_class_var(annotation: Any) -> bool:
    """``X: ClassVar[...]`` is a class attribute (e.g. ``TAKES_RUNTIME``), not a dataclass field."""
    import ast

    head = annotation.value if isinstance(annotation, ast.Subscript) else annotation
    return (isinstance(head, ast.Name) and head.id == "ClassVar") or (
        isinstance(head, ast.Attribute) and head.attr == "ClassVar"
    )


def _unique(values: Sequence[str], what: str, where: Any) -> None:
    seen = set()
    for v in values:
        if v in seen:
            raise SuiteError(f"{where()}: {what} {v!r} appears twice")
        seen.add(v)


def _dotted(loc: Sequence[Any]) -> str:
    return ".".join(str(p) for p in loc)


def _line_of(node: yaml.Node | None, loc: Sequence[Any]) -> str:
    """``:LINE`` of the deepest YAML node on the path `loc` (empty when there is no node)."""
    if node is None:
        return ""
    found = node
    for part in loc:
        child = _child(found, part)
        if child is None:
            break
        found = child
    return f":{found.start_mark.line + 1}"


def _child(node: yaml.Node, part: Any) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if key.value == str(part):
                return value  # type: ignore[no-any-return]
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
        return node.value[part]  # type: ignore[no-any-return]
    return None
