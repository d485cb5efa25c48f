"""Output paths checked before any work, one writer per output, and folders replaced as a whole.

Three guarantees for every place histovl writes (docs/reliability.md, rows "unusable output
path", "disk full or read-only while writing", "two runs into one --out"):

* `check_output_folder`, `check_output_file` and `check_cache_folder` refuse, before any model
  loads, an output that cannot be written: a file where a folder is wanted (or the reverse), a
  path under a file, a folder that is read-only or not writable, a file system with less free
  space than a small margin (``HISTOVL_MIN_FREE_MB``, default 64), an existing file of another
  format that an export would overwrite. Each error is one `OutputPathError` line naming the
  option, the path and what to do.
* `output_lock` holds an advisory lock (``.<name>.histovl-lock`` beside the output) for the whole
  run: a second process writing the same output is refused with a message naming the pid of
  the first. The kernel drops the lock when its process dies, so ``kill -9`` leaves no stale lock.
* `staged_folder` collects a folder's files in a hidden sibling (``.<name>.staging-...``) and
  moves it into place as a whole when the writer finishes: an interrupted or failed run leaves
  the previous results or none, never a mix of two runs. Entries of the old folder that the
  previous histovl run did not write (your own notes) are carried over.

This module imports nothing from histovl but `histovl.errors`, so every layer may use it.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import secrets
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from histovl.errors import HistovlError

try:  # POSIX; without it (Windows) outputs are not locked
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

#: Free space an output's file system must keep (MiB); override with HISTOVL_MIN_FREE_MB (0: off).
DEFAULT_MIN_FREE_MB = 64
#: The hidden file listing what a staged folder's run wrote (so the next run replaces exactly it).
MANIFEST_FILE = ".histovl-files"
LOCK_SUFFIX = ".histovl-lock"
_STAGING_TAG = ".staging-"
_OLD_TAG = ".old-"
#: errno values that mean "the output cannot be written" (a user problem, not a bug).
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT})


class OutputPathError(HistovlError):
    """An output path cannot be used (wrong kind, not writable, read-only, disk full)."""


class OutputLockedError(HistovlError):
    """Another process is writing the same output."""


# ---- checks ---------------------------------------------------------------------------------------


def min_free_bytes() -> int:
    """The free-space margin in bytes (``HISTOVL_MIN_FREE_MB`` MiB, default 64)."""
    text = os.environ.get("HISTOVL_MIN_FREE_MB", "").strip()
    try:
        mb = float(text) if text else DEFAULT_MIN_FREE_MB
    except ValueError:
        raise OutputPathError(f"HISTOVL_MIN_FREE_MB={text!r} is not a number of MiB") from None
    return max(0, int(mb * 1024 * 1024))


def check_output_folder(path: str | os.PathLike[str], *, option: str = "--out") -> Path:
    """Refuse a folder output that cannot be written; returns the path.

    The folder holding it must be writable too: new results are staged beside it and the lock
    file lives there.

    Raises:
        OutputPathError: one line naming `option`, the path and what to do.
    """
    p = Path(os.fspath(path)).expanduser()
    if p.exists() and not p.is_dir():
        raise OutputPathError(f"{option} {p} is an existing file, not a folder; give a folder path (created if missing)")
    here = Path.cwd().resolve()
    if p.resolve() == here or p.resolve() in here.parents:
        raise OutputPathError(
            f"{option} {path} is the current folder (or holds it); an output folder is replaced as a whole "
            f"when the run ends, so give a folder of its own (e.g. {option} runs/this-run)"
        )
    _check_writable_location(p, option, also_self=p.is_dir())
    return p


def check_output_file(
    path: str | os.PathLike[str], *, option: str = "--export", kind: str = "Parquet", magic: bytes | None = b"PAR1"
) -> Path:
    """Refuse a file output that cannot be written, or an existing file of another format.

    An existing file whose first bytes are not `magic` is not overwritten: ``--export notes.txt``
    must not replace someone's notes with a Parquet table.
    """
    p = Path(os.fspath(path)).expanduser()
    if p.is_dir():
        raise OutputPathError(f"{option} {p} is a folder; give a file path (e.g. {p / ('out.' + kind.lower())})")
    if p.exists() and magic is not None and _head(p, len(magic)) != magic:
        raise OutputPathError(
            f"{option} {p} already exists and is not a {kind} file; histovl will not overwrite it. "
            "Remove it or choose another path"
        )
    _check_writable_location(p, option, also_self=False)
    return p


def check_cache_folder(path: str | os.PathLike[str], *, option: str = "--cache") -> Path:
    """Refuse an embedding-cache folder that cannot be written (it is written in place)."""
    p = Path(os.fspath(path)).expanduser()
    if p.exists() and not p.is_dir():
        raise OutputPathError(f"{option} {p} is an existing file, not a folder; give a folder, or pass --no-cache")
    where = p if p.is_dir() else _nearest_existing(p, option)
    _probe(where, p, option, hint="give a writable --cache folder, or pass --no-cache")
    _check_free_space(where, p, option)
    return p


def _check_writable_location(p: Path, option: str, *, also_self: bool) -> None:
    parent = _nearest_existing(p.absolute().parent, option, target=p)
    _probe(parent, p, option)
    if also_self:
        _probe(p, p, option)
    _check_free_space(parent, p, option)


def _nearest_existing(p: Path, option: str, *, target: Path | None = None) -> Path:
    """The deepest existing folder on the way to `p` (which is then created under it)."""
    target = target if target is not None else p
    current = p.absolute()
    while not current.exists():
        if current.parent == current:
            break
        current = current.parent
    if not current.is_dir():
        raise OutputPathError(f"{option} {target}: {current} is a file, so no folder can be created under it")
    return current


def _probe(folder: Path, target: Path, option: str, *, hint: str = "choose another path") -> None:
    """Create and delete a hidden file in `folder`: the only test that sees ACLs, read-only
    mounts and root squash as they are."""
    try:
        fd, name = tempfile.mkstemp(prefix=".histovl-write-test-", dir=folder)
    except OSError as err:
        raise OutputPathError(f"{option} {target}: cannot write in {folder} ({_reason(err)}); {hint}") from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(name)


def _check_free_space(folder: Path, target: Path, option: str) -> None:
    need = min_free_bytes()
    if not need:
        return
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return  # no answer (e.g. some network mounts): the write itself will tell
    if free < need:
        raise OutputPathError(
            f"{option} {target}: only {free / 2**20:.1f} MiB free on its file system (histovl keeps at "
            f"least {need / 2**20:.0f} MiB); free some space, choose another path, or set HISTOVL_MIN_FREE_MB"
        )


def _reason(err: OSError) -> str:
    if err.errno == errno.EROFS:
        return "read-only file system"
    if err.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return "no space left on the device"
    return err.strerror or str(err)


def _head(path: Path, n: int) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(n)
    except OSError:
        return b""


# ---- one writer per output ---------------------------------------------------------------------

_HELD: dict[str, tuple[int, int, int]] = {}  # lock path -> (fd, depth, owning thread)
_HELD_GUARD = threading.Lock()


def lock_path(target: str | os.PathLike[str]) -> Path:
    """The lock file of an output: ``.<name>.histovl-lock`` beside it."""
    p = Path(os.path.realpath(os.fspath(target)))
    return p.parent / f".{p.name}{LOCK_SUFFIX}"


@contextlib.contextmanager
def output_lock(target: str | os.PathLike[str]) -> Iterator[None]:
    """Hold the output's lock for the block (re-entrant in the thread that holds it).

    Raises:
        OutputLockedError: another process (named by its pid) or thread holds it.
    """
    lock = lock_path(target)
    key = str(lock)
    me = threading.get_ident()
    with _HELD_GUARD:
        held = _HELD.get(key)
        if held is not None:
            if held[2] != me:
                raise OutputLockedError(f"another run in this process is writing {target}; wait for it or choose another output")
            _HELD[key] = (held[0], held[1] + 1, me)
    if held is not None:
        try:
            yield
        finally:
            with _HELD_GUARD:
                fd, depth, owner = _HELD[key]
                _HELD[key] = (fd, depth - 1, owner)
        return
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = _acquire(lock, target)
    with _HELD_GUARD:
        _HELD[key] = (fd, 1, me)
    try:
        yield
    finally:
        with _HELD_GUARD:
            del _HELD[key]
        with contextlib.suppress(OSError):
            os.unlink(lock)  # while still holding it: a waiter re-checks the inode (see _acquire)
        os.close(fd)


def _acquire(lock: Path, target: str | os.PathLike[str]) -> int:
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is None:  # pragma: no cover
            return fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.read(fd, 64).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise OutputLockedError(
                f"another histovl process (pid {pid}) is writing {target}; wait for it to finish, "
                "stop it, or choose another output"
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:  # not a file its last holder unlinked while we waited for it
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)


# ---- folders replaced as a whole -------------------------------------------------------------

_local = threading.local()


def _stages() -> dict[str, Path]:
    stages: dict[str, Path] | None = getattr(_local, "stages", None)
    if stages is None:
        stages = _local.stages = {}
    return stages


@contextlib.contextmanager
def staged_folder(out: str | os.PathLike[str], *, option: str = "--out") -> Iterator[Path]:
    """Yield a hidden sibling folder to write into; it replaces `out` when the block ends.

    Re-entrant: inside a staged block, `staged_folder` of the same output (or of the staging
    folder itself) yields the same staging folder, so a command's writer and the shared
    `histovl.reports.write_evaluation_outputs` it calls stage one folder together.

    Raises:
        OutputPathError: `out` cannot be written (checked first), or a write failed for lack of
            space or permission; `out` then still holds what it held before.
        OutputLockedError: another process is writing `out`.

    Example:
        >>> with staged_folder("runs/lung") as tmp:  # doctest: +SKIP
        ...     atomic_write_json(tmp / "metrics.json", metrics)
    """
    final = Path(os.path.realpath(os.fspath(out)))  # a symlinked --out: its target is what gets replaced
    stages = _stages()
    active = stages.get(str(final)) or (final if final in stages.values() else None)
    if active is not None:
        yield active
        return
    check_output_folder(final, option=option)
    with output_lock(final):
        final.parent.mkdir(parents=True, exist_ok=True)
        _clean_leftovers(final)
        staging = final.parent / f".{final.name}{_STAGING_TAG}{os.getpid()}-{secrets.token_hex(4)}"
        os.mkdir(staging)  # mode 0o777 & ~umask, like the folder it becomes
        stages[str(final)] = staging
        try:
            yield staging
            _commit(staging, final)
        except OSError as err:
            if err.errno not in WRITE_ERRNOS:
                raise
            raise OutputPathError(
                f"cannot write {final}: {_reason(err)}{_where(err)}; {final} still holds what it held before"
            ) from err
        finally:
            del stages[str(final)]
            shutil.rmtree(staging, ignore_errors=True)


def _where(err: OSError) -> str:
    return f" ({err.filename})" if err.filename else ""


def _commit(staging: Path, final: Path) -> None:
    """Move `staging` into place: rename when `final` is new, else swap and drop the old folder."""
    names = sorted(e.name for e in staging.iterdir() if e.name != MANIFEST_FILE)
    (staging / MANIFEST_FILE).write_text("".join(f"{n}\n" for n in names), encoding="utf-8")
    if not final.exists():
        os.rename(staging, final)
        return
    _carry_over_foreign(final, staging, set(names))
    if not _exchange(staging, final):  # no atomic swap here: two renames, recovered by _clean_leftovers
        old = final.parent / f".{final.name}{_OLD_TAG}{os.getpid()}-{secrets.token_hex(4)}"
        os.rename(final, old)
        os.rename(staging, final)
        shutil.rmtree(old, ignore_errors=True)


def _carry_over_foreign(final: Path, staging: Path, new_names: set[str]) -> None:
    """Hard-link (or copy) into `staging` the entries of `final` that no histovl run wrote."""
    previous = _read_manifest(final)
    for entry in final.iterdir():
        name = entry.name
        if name == MANIFEST_FILE or name in new_names or (previous is not None and name in previous):
            continue
        if name.startswith(".histovl-write-test-"):
            continue
        target = staging / name
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, target, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(str(entry), str(target))


def _link_or_copy(src: str, dst: str) -> None:
    if os.path.islink(src):
        os.symlink(os.readlink(src), dst)
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _read_manifest(folder: Path) -> set[str] | None:
    try:
        text = (folder / MANIFEST_FILE).read_text(encoding="utf-8")
    except OSError:
        return None
    return {line for line in text.splitlines() if line}


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2); False where the system cannot."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    rc = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _clean_leftovers(final: Path) -> None:
    """Remove what killed runs left beside `final` (called with its lock held): staging folders,
    and an old folder set aside by a swap that did not finish (put back when `final` is gone)."""
    prefix = f".{final.name}"
    for entry in final.parent.iterdir():
        rest = entry.name[len(prefix):] if entry.name.startswith(prefix) else ""
        if rest.startswith(_STAGING_TAG):
            shutil.rmtree(entry, ignore_errors=True)
        elif rest.startswith(_OLD_TAG):
            if not final.exists():
                os.rename(entry, final)
            else:
                shutil.rmtree(entry, ignore_errors=True)
