"""`RunOptions`: the options every command shares, in one frozen value.

Commands take ``(inputs, <their own typed config>, options: RunOptions)``. The dozen cross-cutting
options (where the embedding cache lives, batch size, decode workers, what to do with unreadable
images, device, checkpoint trust, manifest path policy, bootstrap resamples, seed, progress) live
here and nowhere else: the CLI builds one `RunOptions` in `histovl.cli.common`, library callers
build one with keywords, and `RunOptions.record()` is the one place they enter ``run.json``.
A new cross-cutting flag is one field here plus one line in `histovl.cli.common.RUN_OPTION_SPECS`.

This module sits at the bottom of the package graph: it imports nothing from histovl, so every
layer may depend on it.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

#: A file or folder a command reads or writes, as callers hold it (every command signature uses it).
PathArg = str | os.PathLike[str]

#: What a command does with an input it cannot read: stop with a clear error, or record and go on.
OnError = Literal["raise", "skip"]
ON_ERROR_CHOICES: tuple[OnError, ...] = ("raise", "skip")

#: Which engine runs the encoder's forward pass (docs/runtime.md).
Runtime = Literal["torch", "onnx", "onnx-int8"]
RUNTIME_CHOICES: tuple[Runtime, ...] = ("torch", "onnx", "onnx-int8")
#: The torch runtime's numeric precision: autocast on CUDA under ``auto`` (docs/runtime.md, "GPUs").
Precision = Literal["auto", "fp32", "bf16", "fp16"]
PRECISION_CHOICES: tuple[Precision, ...] = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class RunOptions:
    """Options shared by every command (see the module docstring).

    Example:
        >>> opts = RunOptions(batch_size=32, seed=1)
        >>> opts.replace(n_boot=0).n_boot, opts.n_boot
        (0, 1000)
    """

    cache: Path | None = None
    """Embedding cache folder; None means the default (``~/.cache/histovl/embeddings``)."""
    use_cache: bool = True
    """False neither reads nor writes the embedding cache (``--no-cache``)."""
    batch_size: int = 64
    """Images per forward pass; halved automatically on out-of-memory."""
    workers: int | None = None
    """Decode worker processes (or reader threads for slides); None picks from the core count."""
    on_error: OnError = "raise"
    """``skip`` records unreadable inputs (in run.json) and goes on."""
    device: str = "cpu"
    trust_checkpoint: bool = False
    """Allow pickle-based checkpoints (``.pt``/``.bin``, read with ``weights_only=True``)."""
    allow_absolute_paths: bool = False
    """Allow manifest paths outside the manifest's folder."""
    n_boot: int = 1000
    """Bootstrap resamples for the 95% CIs (0 turns CIs off)."""
    seed: int = 0
    """Seeds Python, NumPy, torch and the data-loader workers."""
    progress: bool = True
    """Progress bars on stderr (``--quiet`` turns them off)."""
    runtime: Runtime = "torch"
    """``onnx`` / ``onnx-int8`` encode with ONNX Runtime behind a parity gate (docs/runtime.md)."""
    allow_approximate: bool = False
    """Use an ONNX runtime even where its parity gate fails (the failure is recorded in run.json)."""
    precision: Precision = "auto"
    """torch's precision: ``auto`` is bf16/fp16 autocast on CUDA (behind the parity gate), fp32
    elsewhere; ``fp32`` opts out; ``bf16`` / ``fp16`` force autocast on any device."""
    runtime_parity: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    """Filled while the run encodes: model name -> the runtime's parity record (for run.json)."""

    def __post_init__(self) -> None:
        if self.cache is not None and not isinstance(self.cache, Path):
            object.__setattr__(self, "cache", Path(os.fspath(self.cache)))
        if self.on_error not in ON_ERROR_CHOICES:
            raise ValueError(f"on_error must be one of {', '.join(ON_ERROR_CHOICES)}, not {self.on_error!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {self.batch_size}")
        if self.workers is not None and self.workers < 0:
            raise ValueError(f"workers must be 0 or more, not {self.workers}")
        if self.n_boot < 0:
            raise ValueError(f"n_boot must be 0 or more, not {self.n_boot}")
        if self.runtime not in RUNTIME_CHOICES:
            raise ValueError(f"runtime must be one of {', '.join(RUNTIME_CHOICES)}, not {self.runtime!r}")
        if self.precision not in PRECISION_CHOICES:
            raise ValueError(f"precision must be one of {', '.join(PRECISION_CHOICES)}, not {self.precision!r}")

    def replace(self, **changes: Any) -> RunOptions:
        """A copy with some fields changed (the value itself is frozen)."""
        return dataclasses.replace(self, **changes)

    def record(self) -> dict[str, Any]:
        """The options as they enter ``run.json``'s ``config`` (one function for every command).

        ``cache`` is the folder actually used (the default resolved), or None with ``--no-cache``.
        """
        cache = None if not self.use_cache else str(self.cache if self.cache is not None else default_cache_dir())
        return {
            "cache": cache,
            "batch_size": self.batch_size,
            "workers": self.workers,
            "on_error": self.on_error,
            "device": self.device,
            "trust_checkpoint": self.trust_checkpoint,
            "allow_absolute_paths": self.allow_absolute_paths,
            "n_boot": self.n_boot,
            "seed": self.seed,
            "runtime": self.runtime,
            "allow_approximate": self.allow_approximate,
            "precision": self.precision,
            "runtime_parity": dict(self.runtime_parity) or None,
        }


def default_cache_dir() -> Path:
    """`$HISTOVL_CACHE`, else `~/.cache/histovl/embeddings`."""
    env = os.environ.get("HISTOVL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "histovl" / "embeddings"


def resolve_options(options: RunOptions | None, **overrides: Any) -> RunOptions:
    """`options` (or the defaults) with keyword overrides applied; the library entry points'
    one-liner for accepting ``options=`` and a few loose keywords from notebook users."""
    base = options if options is not None else RunOptions()
    return base.replace(**overrides) if overrides else base


#: Library keyword spellings from before RunOptions -> the field they mean now.
LEGACY_KEYWORDS = {"num_workers": "workers"}

_C = TypeVar("_C")


def split_overrides(
    overrides: Mapping[str, Any], config: _C | None, config_type: type[_C], options: RunOptions | None
) -> tuple[_C, RunOptions]:
    """Route loose keywords to the command's config or to its `RunOptions`, by field name.

    Library entry points take ``config=`` and ``options=``; for notebook use they also accept the
    fields of either as keywords (``zeroshot(m, d, p, n_boot=0)``). A keyword that is neither is a
    `TypeError` naming both lists, so a typo never passes silently.
    """
    run_fields = {f.name for f in dataclasses.fields(RunOptions)}
    config_fields = {f.name for f in dataclasses.fields(config_type)}  # type: ignore[arg-type]
    to_options: dict[str, Any] = {}
    to_config: dict[str, Any] = {}
    for key, value in overrides.items():
        name = LEGACY_KEYWORDS.get(key, key)
        if name != key:
            warnings.warn(f"{key}= is deprecated; use {name}=", DeprecationWarning, stacklevel=3)
        if name in config_fields:
            to_config[name] = value
        elif name in run_fields:
            to_options[name] = value
        else:
            raise TypeError(
                f"unexpected keyword {key!r}; {config_type.__name__} fields: {', '.join(sorted(config_fields))}; "
                f"RunOptions fields: {', '.join(sorted(run_fields))}"
            )
    base_config = config if config is not None else config_type()
    new_config = dataclasses.replace(base_config, **to_config) if to_config else base_config  # type: ignore[type-var]
    opts = resolve_options(options, **to_options)
    # Only the commands whose config says so encode through the ONNX runtimes; elsewhere a
    # non-torch runtime would be silently ignored (the CLI does not offer the flag there).
    if not getattr(config_type, "TAKES_RUNTIME", False):
        refuse_runtime(opts, f"the command configured by {config_type.__name__}", getattr(config_type, "NO_RUNTIME_REASON", None))
    return new_config, opts


def refuse_runtime(opts: RunOptions, command: str, reason: str | None = None) -> None:
    """`ValueError` (one line) when `opts` asks a command that encodes with torch only for another
    runtime; `reason` says why that command has no ``--runtime`` (a config's ``NO_RUNTIME_REASON``)."""
    if opts.runtime != "torch":
        raise ValueError(
            f"runtime={opts.runtime!r} is not supported by {command}: {reason or 'it encodes with torch only'} "
            "(docs/runtime.md lists the commands that take --runtime)"
        )
    if opts.precision in ("bf16", "fp16"):  # autocast is applied where a runtime is (apply_runtime)
        raise ValueError(
            f"precision={opts.precision!r} is not supported by {command}: {reason or 'it encodes with torch only'}; "
            "its torch runs fp32 (docs/runtime.md lists the commands that take --precision)"
        )


def config_record(config: Any) -> dict[str, Any]:
    """A command config (a dataclass) as it enters run.json."""
    return dataclasses.asdict(config)
