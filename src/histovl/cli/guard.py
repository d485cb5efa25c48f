"""What stands between every command and the user: outputs checked before the command runs,
signals turned into a quick, clean stop, and exceptions turned into one line and an exit code.

* `guarded` wraps every command of `histovl.cli.app.COMMANDS` when it is registered, so no
  command can forget it: before the command body runs, its ``--out`` (a folder, or a file where
  `FILE_OUTPUTS` says so), ``--export`` and ``--cache`` are checked
  (`histovl.outputs_guard`) and ``--device`` too; the outputs stay locked until it returns.
  The command is one run for `histovl._prompt_cuts` (prompts cut to the context: one warning).
* `install_signal_handlers` makes SIGTERM behave like Ctrl-C: a ``KeyboardInterrupt`` in the
  main thread, so every ``finally`` runs (the open cache segment closed, staging folders removed, locks
  released; every cached batch is already committed) and finished work stays on disk.
* `install_warning_format` prints each warning as one line (``warning: ...``).
* `run_cli` is the error boundary (docs/reliability.md, "error boundary"): an error the user can
  cause prints ``error: <one line>`` and exits 2; a stop by signal prints one line and exits
  128 + the signal number; anything else prints the traceback plus a one-line summary and exits 1.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import inspect
import os
import signal
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import typer

from histovl._compat import get_type_hints
from histovl.errors import HistovlError

#: Outputs that are files rather than folders: command words -> {parameter: (format, magic bytes)}.
FILE_OUTPUTS: dict[str, dict[str, tuple[str, bytes | None]]] = {
    "embed": {"export": ("Parquet", b"PAR1")},
    "index query": {"out": ("CSV", None)},
}
#: Parameter names that are output folders when a command has them (unless in FILE_OUTPUTS).
FOLDER_OUTPUTS = ("out",)

#: errno values of OSErrors the user causes (a path, a permission, a full or read-only disk).
USER_ERRNOS = frozenset({
    errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.ENOENT, errno.EISDIR,
    errno.ENOTDIR, errno.EEXIST, errno.ENAMETOOLONG, errno.ELOOP,
})
USER_EXCEPTIONS: tuple[type[BaseException], ...] = (
    HistovlError, ValueError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError,
)

_F = TypeVar("_F", bound=Callable[..., Any])
_received: dict[str, int] = {}


# ---- outputs checked before the command runs ------------------------------------------------------


def guarded(words: str, fn: _F) -> _F:
    """`fn` (a CLI command) with its outputs and device checked first and its outputs locked."""
    hints = get_type_hints(fn)
    sig = inspect.signature(fn)
    sig = sig.replace(parameters=[p.replace(annotation=hints.get(p.name, p.annotation)) for p in sig.parameters.values()])
    files = FILE_OUTPUTS.get(words, {})

    @functools.wraps(fn)
    def command(*args: Any, **kwargs: Any) -> Any:
        from histovl._prompt_cuts import collecting

        with collecting(), checked_outputs(kwargs, files):  # one run: prompts cut are warned about once
            return fn(*args, **kwargs)

    command.__signature__ = sig  # type: ignore[attr-defined]
    command.__annotations__ = {k: v for k, v in hints.items()}
    del command.__wrapped__  # typer reads __signature__, not the wrapped function's
    return command  # type: ignore[return-value]


@contextlib.contextmanager
def checked_outputs(kwargs: dict[str, Any], files: dict[str, tuple[str, bytes | None]]) -> Iterator[None]:
    """Check a command's outputs (from its CLI keyword values) and hold their locks.

    Under torchrun every rank runs the command and only rank 0 writes: rank 0 checks and locks
    (a failed check stops the job); the other ranks write nothing here, not even a probe file.
    """
    from histovl.outputs_guard import (
        check_cache_folder,
        check_output_file,
        check_output_folder,
        output_lock,
    )

    if int(os.environ.get("RANK", "0") or 0) != 0:
        yield
        return
    locked: list[Path] = []
    for name, value in kwargs.items():
        if value is None or not isinstance(value, str | os.PathLike):
            continue
        option = "--" + name.replace("_", "-")
        if name in files:
            kind, magic = files[name]
            locked.append(check_output_file(value, option=option, kind=kind, magic=magic))
        elif name in FOLDER_OUTPUTS:
            locked.append(check_output_folder(value, option=option))
    if "cache" in kwargs and not kwargs.get("no_cache", False):
        from histovl.options import default_cache_dir

        check_cache_folder(kwargs["cache"] if kwargs["cache"] is not None else default_cache_dir())
    device = kwargs.get("device")
    if isinstance(device, str) and device != "cpu":
        from histovl.models._device import check_device

        check_device(device)
    with contextlib.ExitStack() as stack:
        for path in locked:
            stack.enter_context(output_lock(path))
        yield


# ---- signals --------------------------------------------------------------------------------------


def install_signal_handlers() -> None:
    """SIGTERM (and SIGINT) raise ``KeyboardInterrupt`` in the main thread; a second one stops at once."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _interrupt)


def _interrupt(signum: int, frame: Any) -> None:
    _received.setdefault("signal", signum)
    signal.signal(signum, signal.SIG_DFL)
    raise KeyboardInterrupt


# ---- warnings -------------------------------------------------------------------------------------


def install_warning_format() -> None:
    """Warnings print as one line: ``warning: <message>`` for histovl's own, with the category and
    the place for other libraries' (Python's default adds the source line that warned)."""
    warnings.formatwarning = _one_line_warning


def _one_line_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                      line: str | None = None) -> str:
    if category.__module__.startswith("histovl") or f"{os.sep}histovl{os.sep}" in filename:
        return f"warning: {message}\n"
    return f"warning: {category.__name__}: {message} ({filename}:{lineno})\n"


# ---- the error boundary ---------------------------------------------------------------------------


def run_cli(body: Callable[[], Any]) -> int:
    """Run the CLI; return the exit status after printing at most one line (or a traceback + line)."""
    try:
        body()
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
        if code == 130 or (code != 0 and "signal" in _received):  # typer turns Ctrl-C into exit 130
            return _stopped()
        return code
    except KeyboardInterrupt:
        return _stopped()
    except BaseException as err:  # noqa: BLE001 - this is the boundary: everything ends here
        return _report(err)
    return 0


def stopped_by_signal() -> bool:
    """True once SIGTERM or SIGINT arrived (the entry point then exits at once: `exit_now`)."""
    return "signal" in _received


def exit_now(code: int) -> None:
    """Flush and leave without the interpreter's shutdown: after a signal every ``finally`` has
    already run, and shutdown would wait for worker threads still reading tiles (and Python
    would report a KeyboardInterrupt seen in a nested evaluation as death by SIGINT)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _stopped() -> int:
    signum = _received.get("signal", signal.SIGINT)
    name = signal.Signals(signum).name
    typer.secho(
        f"stopped by {name}: finished work is kept (embedding cache, checkpoints, tiles, completed outputs); "
        "outputs being written were left as they were. Run the same command again to resume.",
        fg=typer.colors.YELLOW, err=True,
    )
    return 128 + int(signum)


def user_message(err: BaseException) -> str | None:
    """The one-line message of an error the user can cause, or None for a bug."""
    if isinstance(err, OSError) and not isinstance(err, HistovlError):
        if err.errno is None:
            return str(err) if isinstance(err, USER_EXCEPTIONS) else None
        if err.errno not in USER_ERRNOS:
            return None
        where = f"{err.filename}: " if err.filename else ""
        extra = " (free some space or choose another --out)" if err.errno in (errno.ENOSPC, errno.EDQUOT) else ""
        return f"{where}{err.strerror}{extra}"
    if isinstance(err, USER_EXCEPTIONS):
        return str(err) or type(err).__name__
    return None


def _report(err: BaseException) -> int:
    message = user_message(err)
    if message is not None:
        if os.environ.get("HISTOVL_DEBUG"):
            traceback.print_exception(err)
        typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
        return 2
    traceback.print_exception(err)
    first = (str(err).splitlines() or [""])[0]
    typer.secho(
        f"error: unexpected {type(err).__name__}: {first} - this is a bug in histovl; please report it "
        "with the traceback above",
        fg=typer.colors.RED, err=True,
    )
    return 1
