"""What every command shares on the command line: the run options, the common inputs, deprecated
spellings, and the one printer for "metric [95% CI]" lines.

A command opts into the shared run options with the `with_run_options` decorator: the decorator
adds the options (``--cache``, ``--no-cache``, ``--batch-size``, ``--workers``, ``--on-error``,
``--device``, ``--trust-checkpoint``, ``--allow-absolute-paths``, ``--n-boot``, ``--seed``,
``--quiet``) to the command's signature, so typer shows and parses them, and hands the command one
`RunOptions` instead. A new cross-cutting flag is one field of `RunOptions` and one entry in
`RUN_OPTION_SPECS`; no command changes.
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from histovl._compat import StrEnum, get_type_hints
from histovl.options import RunOptions


class OnErrorChoice(StrEnum):
    raise_ = "raise"
    skip = "skip"


class RuntimeChoice(StrEnum):
    torch = "torch"
    onnx = "onnx"
    onnx_int8 = "onnx-int8"


class PrecisionChoice(StrEnum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


ModelOpt = Annotated[list[str], typer.Option("--model", "-m", help="Model spec; repeat for several (see `histovl models`).")]
OneModelOpt = Annotated[str, typer.Option("--model", "-m", help="Model spec (see `histovl models`).")]
DataOpt = Annotated[Path, typer.Option("--data", "-d", help="Class folder or CSV manifest.")]
PromptsOpt = Annotated[str, typer.Option("--prompts", "-p", help="Prompt-set name or YAML file.")]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Output folder (written atomically).")]
AllowMissingOpt = Annotated[bool, typer.Option("--allow-missing-classes", help="Allow prompt-set classes with no images.")]

# ---- the shared run options ---------------------------------------------------------------------

#: RunOptions field -> (CLI parameter name, annotated type, default). Order = order in --help.
RUN_OPTION_SPECS: dict[str, tuple[str, Any, Any]] = {
    "cache": ("cache", Annotated[Path | None, typer.Option("--cache", help="Embedding cache folder (default: ~/.cache/histovl/embeddings, or $HISTOVL_CACHE).")], None),
    "use_cache": ("no_cache", Annotated[bool, typer.Option("--no-cache", help="Do not read or write the embedding cache.")], False),
    "batch_size": ("batch_size", Annotated[int, typer.Option("--batch-size", min=1, help="Images per forward pass (halved automatically on out-of-memory).")], 64),
    "workers": ("workers", Annotated[int | None, typer.Option("--workers", min=0, help="Decode worker processes (default: cores - 1).")], None),
    "on_error": ("on_error", Annotated[OnErrorChoice, typer.Option("--on-error", help="'skip' records unreadable images and goes on.")], OnErrorChoice.raise_),
    "device": ("device", Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:1, ...")], "cpu"),
    "trust_checkpoint": ("trust_checkpoint", Annotated[bool, typer.Option("--trust-checkpoint", help="Allow .pt/.bin checkpoints (loaded with weights_only=True).")], False),
    "allow_absolute_paths": ("allow_absolute_paths", Annotated[bool, typer.Option("--allow-absolute-paths", help="Allow manifest paths outside the manifest's folder.")], False),
    "n_boot": ("n_boot", Annotated[int, typer.Option("--n-boot", min=0, help="Bootstrap resamples for 95% CIs.")], 1000),
    "seed": ("seed", Annotated[int, typer.Option("--seed", help="Seeds Python, NumPy, torch and data-loader workers.")], 0),
    "progress": ("quiet", Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")], False),
    "runtime": ("runtime", Annotated[RuntimeChoice, typer.Option("--runtime", help="Encoder engine: torch, onnx or onnx-int8 (ONNX Runtime behind a parity gate; docs/runtime.md).")], RuntimeChoice.torch),
    "allow_approximate": ("allow_approximate", Annotated[bool, typer.Option("--allow-approximate", help="Use an ONNX runtime (or autocast) even where its parity gate against torch fp32 fails.")], False),
    "precision": ("precision", Annotated[PrecisionChoice, typer.Option("--precision", help="torch precision: auto = bf16/fp16 autocast on CUDA behind the parity gate, fp32 elsewhere; fp32 opts out (docs/runtime.md).")], PrecisionChoice.auto),
}
#: The options only commands that encode images with a model take.
RUNTIME_OPTIONS = ("runtime", "allow_approximate", "precision")
ALL_RUN_OPTIONS = tuple(RUN_OPTION_SPECS)

_F = TypeVar("_F", bound=Callable[..., Any])


def with_run_options(
    *,
    exclude: Iterable[str] = (),
    help_overrides: Mapping[str, str] | None = None,
    **defaults: Any,
) -> Callable[[_F], _F]:
    """Decorate a command that takes ``options: RunOptions``: typer sees the shared options instead.

    Args:
        exclude: `RunOptions` fields the command has no use for (not shown, left at their default).
        help_overrides: field -> help text where a command means something more specific.
        defaults: field -> this command's default (e.g. ``batch_size=256``).
    """
    unknown = (set(exclude) | set(defaults) | set(help_overrides or {})) - set(RUN_OPTION_SPECS)
    if unknown:
        raise TypeError(f"not RunOptions fields: {sorted(unknown)}")
    fields = [f for f in RUN_OPTION_SPECS if f not in set(exclude)]

    def decorate(fn: _F) -> _F:
        # Resolve the command's string annotations in *its* module: typer re-reads them from the
        # wrapper, whose globals are this module's.
        hints = get_type_hints(fn)
        sig = inspect.signature(fn)
        sig = sig.replace(parameters=[p.replace(annotation=hints.get(p.name, p.annotation)) for p in sig.parameters.values()])
        if "options" not in sig.parameters:
            raise TypeError(f"{fn.__name__} must take an `options: RunOptions` parameter")
        own = [p for name, p in sig.parameters.items() if name != "options"]
        added = []
        for field in fields:
            param, annotation, default = RUN_OPTION_SPECS[field]
            if help_overrides and field in help_overrides:
                info = copy.copy(annotation.__metadata__[0])  # keeps every declaration ("--quiet", "-q") and bound
                info.help = help_overrides[field]
                annotation = Annotated[annotation.__origin__, info]
            if field in defaults:
                default = defaults[field]
                if field == "progress":
                    default = not default
                elif field == "use_cache":
                    default = not default
            added.append(inspect.Parameter(param, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation))

        @functools.wraps(fn)
        def command(*args: Any, **kwargs: Any) -> Any:
            values = {field: kwargs.pop(RUN_OPTION_SPECS[field][0]) for field in fields}
            if "use_cache" in values:
                values["use_cache"] = not values["use_cache"]
            if "progress" in values:
                values["progress"] = not values["progress"]
            if "on_error" in values:
                values["on_error"] = OnErrorChoice(values["on_error"]).value
            if "runtime" in values:
                values["runtime"] = RuntimeChoice(values["runtime"]).value
            if "precision" in values:
                values["precision"] = PrecisionChoice(values["precision"]).value
            for field, value in defaults.items():  # excluded fields with a command default
                values.setdefault(field, value)
            return fn(*args, options=RunOptions(**values), **kwargs)

        own_kw = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD else p for p in own]
        command.__signature__ = sig.replace(parameters=[*own_kw, *added])  # type: ignore[attr-defined]
        annotations = {k: v for k, v in hints.items() if k != "options"}
        annotations.update({p.name: p.annotation for p in added})
        command.__annotations__ = annotations
        del command.__wrapped__  # typer must read __signature__, not the wrapped function's
        return command  # type: ignore[return-value]

    return decorate


# ---- deprecated spellings -----------------------------------------------------------------------


def deprecated_alias(old_value: Any, new_value: Any, *, old: str, new: str, default: Any = None) -> Any:
    """Accept an old option spelling for one release: warn on stderr and use its value.

    Gives ``new_value`` unless the old spelling was used (``old_value`` is not ``default``); both
    at once is an error, since one of them would be silently ignored.
    """
    if old_value is default or old_value == default:
        return new_value
    if new_value is not default and new_value != default:
        raise typer.BadParameter(f"{old} is the old spelling of {new}; give only {new}")
    typer.secho(f"warning: {old} is deprecated and will be removed in the next release; use {new}",
                fg=typer.colors.YELLOW, err=True)
    return old_value


# ---- printing results ---------------------------------------------------------------------------


def format_metric(name: str, value: Any, interval: Any = None, *, width: int = 18) -> str:
    """``name: value  [95% CI lo–hi]`` (the CI part only when both ends are known)."""
    lo, hi = (list(interval or [None, None]) + [None, None])[:2]
    ci = f"  [95% CI {lo:.4f}–{hi:.4f}]" if lo is not None and hi is not None else ""
    shown = f"{value:.4f}" if isinstance(value, int | float) and not isinstance(value, bool) else "n/a"
    return f"{name:>{width}}: {shown}{ci}"


def print_metrics(metrics: Mapping[str, Any], keys: Iterable[str], *, width: int = 18, console: Console | None = None) -> None:
    """One line per metric with its bootstrap CI from ``metrics["ci95"]`` (every command's summary)."""
    con = console or Console()
    cis = metrics.get("ci95") or {}
    for key in keys:
        con.print(format_metric(key, metrics.get(key), cis.get(key), width=width))


def print_skipped(skipped: Iterable[Any], console: Console | None = None, *, where: str = "run.json") -> None:
    """The one-line note that some inputs were skipped (``--on-error skip``)."""
    n = len(list(skipped))
    if n:
        (console or Console()).print(f"[yellow]skipped {n} unreadable image(s); listed in {where}[/yellow]")

