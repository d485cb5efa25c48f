"""Output faults (docs/reliability.md, "unusable output path", "disk full or read-only while
writing", "two runs into one --out"): a file where a folder goes (every command), a folder where
a file goes, a read-only or full file system (a real tmpfs when this process may mount one,
else a fake one: `shutil.disk_usage` and a failing write monkeypatched), /sys, an export over a
foreign file, an existing index, a second writer; and staged folders that never mix two runs."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer.main

import histovl.models
import histovl.models.loading
from histovl.cli.app import COMMANDS, app
from histovl.cli.guard import FILE_OUTPUTS
from histovl.outputs_guard import MANIFEST_FILE, OutputPathError, lock_path, staged_folder
from tests.faults.conftest import FaultLog, assert_whole, digest, run_main

# ---- every command: a file as --out, a folder as a file output -----------------------------------


def _click_commands() -> dict[str, object]:
    found: dict[str, object] = {}

    def walk(cmd: object, words: tuple[str, ...]) -> None:
        if hasattr(cmd, "list_commands"):
            for name in cmd.list_commands(None):  # type: ignore[attr-defined]
                walk(cmd.get_command(None, name), (*words, name))  # type: ignore[attr-defined]
        else:
            found[" ".join(words)] = cmd

    walk(typer.main.get_command(app), ())
    return found


def _output_params(words: str, cmd: object) -> list[tuple[object, str]]:
    """(click parameter, "file"|"folder") for each output parameter of a command."""
    files = FILE_OUTPUTS.get(words, {})
    return [(p, "file" if p.name in files else "folder") for p in cmd.params  # type: ignore[attr-defined]
            if p.name in files or p.name == "out"]


def _argv(words: str, cmd: object, target: object, bad: Path, filler: Path) -> list[str]:
    argv = words.split()
    for p in cmd.params:  # type: ignore[attr-defined]
        value = bad if p is target else (filler if p.required else None)
        if value is None:
            continue
        argv += [str(value)] if type(p).__name__.endswith("Argument") else [p.opts[0], str(value)]
    return argv


def test_every_command_refuses_a_wrong_kind_of_output_before_any_model_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, faults: FaultLog
) -> None:
    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model was loaded before the output was checked")

    monkeypatch.setattr(histovl.models.loading, "load_model", no_model)
    if "load_model" in vars(histovl.models):
        monkeypatch.setattr(histovl.models, "load_model", no_model)
    a_file = tmp_path / "results.txt"
    a_file.write_text("someone's notes\n")
    a_folder = tmp_path / "a-folder"
    a_folder.mkdir()
    commands = _click_commands()
    assert set(commands) == set(COMMANDS)
    checked = 0
    for words, cmd in commands.items():
        for param, kind in _output_params(words, cmd):
            bad = a_file if kind == "folder" else a_folder
            code = run_main(_argv(words, cmd, param, bad, a_folder))
            err = capsys.readouterr().err
            faults.inject("file-instead-of-folder output")
            assert code == 2, (words, err)
            assert str(bad) in err and param.opts[0] in err and "Traceback" not in err, (words, err)  # type: ignore[attr-defined]
            checked += 1
    assert a_file.read_text() == "someone's notes\n"
    assert checked >= 20


def test_export_over_a_foreign_file_or_into_sys_is_refused(fx: dict[str, Path], tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str], faults: FaultLog) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")
    assert run_main(["embed", "-m", str(fx["model"]), "-d", str(fx["manifest"]), "--export", str(notes),
                     "--cache", str(tmp_path / "c")]) == 2
    assert "not a Parquet file" in capsys.readouterr().err and notes.read_text() == "keep me"
    faults.inject("export over a foreign file")
    if Path("/sys").is_dir():
        assert run_main(["zeroshot", "-m", str(fx["model"]), "-d", str(fx["manifest"]), "-p", str(fx["prompts"]),
                         "-o", "/sys/histovl-out"]) == 2
        assert "/sys/histovl-out" in capsys.readouterr().err
        faults.inject("output under /sys")


def test_index_build_onto_an_existing_index_needs_append_or_overwrite(fx: dict[str, Path], tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str], faults: FaultLog) -> None:
    argv = ["index", "build", "-m", str(fx["model"]), "-d", str(fx["manifest"]), "-o", str(tmp_path / "ix"),
            "--cache", str(tmp_path / "c"), "--quiet", "--workers", "0"]
    assert run_main(argv) == 0
    before = digest(tmp_path / "ix")
    assert run_main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err and digest(tmp_path / "ix") == before
    faults.inject("index build onto an existing index")
    assert run_main([*argv, "--overwrite"]) == 0


# ---- read-only and full file systems ------------------------------------------------------------


def _can_mount() -> bool:
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    probe = Path(f"/tmp/histovl-mount-probe-{os.getpid()}")
    probe.mkdir(exist_ok=True)
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)], capture_output=True).returncode == 0
    if ok:
        subprocess.run(["umount", str(probe)], check=True)
    probe.rmdir()
    return ok


MOUNT = _can_mount()


@contextlib.contextmanager
def tmpfs(where: Path, size_kb: int, *, read_only: bool = False) -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    opts = f"size={size_kb}k" + (",ro" if read_only else "")
    subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


def _zeroshot(fx: dict[str, Path], out: Path, cache: Path, *extra: str) -> list[str]:
    return ["zeroshot", "-m", str(fx["model"]), "-d", str(fx["manifest"]), "-p", str(fx["prompts"]), "-o", str(out),
            "--cache", str(cache), "--n-boot", "20", "--quiet", "--workers", "0", *extra]


def test_read_only_output_and_cache_are_refused_up_front(fx: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str], faults: FaultLog) -> None:
    if MOUNT:
        stack = contextlib.ExitStack()
        ro = stack.enter_context(tmpfs(tmp_path / "ro", 256, read_only=True))
    else:  # not root: a folder without write permission
        stack = contextlib.ExitStack()
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        stack.callback(ro.chmod, 0o755)
    with stack:
        assert run_main(_zeroshot(fx, ro / "out", tmp_path / "cache")) == 2
        err = capsys.readouterr().err
        assert f"--out {ro / 'out'}" in err and ("read-only" in err or "permission" in err), err
        assert run_main(_zeroshot(fx, tmp_path / "out", ro / "cache")) == 2
        assert "--cache" in capsys.readouterr().err
        faults.inject("read-only output", 2)


def test_a_full_disk_is_refused_up_front_and_a_disk_filling_up_keeps_the_old_results(
    fx: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], faults: FaultLog
) -> None:
    sized = tmp_path / "sized"
    assert run_main(_zeroshot(fx, sized, tmp_path / "cache")) == 0
    size_kb = sum((p.stat().st_size + 4095) // 4096 * 4 for p in sized.rglob("*") if p.is_file())
    stack = contextlib.ExitStack()
    if MOUNT:  # a real small file system: one run's outputs fit, two do not
        disk = stack.enter_context(tmpfs(tmp_path / "disk", int(size_kb * 1.6) + 64))
    else:  # a fake one: the margin check sees 1 MiB free, the report's figures fail with ENOSPC
        disk = tmp_path / "disk"
        disk.mkdir()
        monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 2**20, 2**20))  # type: ignore[attr-defined]
    with stack:
        out = disk / "out"
        assert run_main(_zeroshot(fx, out, tmp_path / "cache")) == 2
        assert "free" in capsys.readouterr().err
        faults.inject("full disk (margin)")
        monkeypatch.setenv("HISTOVL_MIN_FREE_MB", "0")
        assert run_main(_zeroshot(fx, out, tmp_path / "cache")) == 0
        before = digest(out)
        if not MOUNT:
            _fail_figures_with_enospc(monkeypatch)
        assert run_main(_zeroshot(fx, out, tmp_path / "cache", "--seed", "4")) == 2
        err = capsys.readouterr().err
        assert "no space left" in err.lower() and "Traceback" not in err, err
        assert digest(out) == before  # the previous results, whole
        assert_whole(out)
        assert not [p for p in disk.iterdir() if ".staging-" in p.name]
        faults.inject("disk full while writing")


def _fail_figures_with_enospc(monkeypatch: pytest.MonkeyPatch) -> None:
    import histovl.reports.html as html

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "figures/confusion_matrix.png")

    monkeypatch.setattr(html, "save_figure", full)


# ---- one writer, whole folders ------------------------------------------------------------------


def test_a_second_writer_is_refused_naming_the_first_ones_pid(fx: dict[str, Path], tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str], faults: FaultLog) -> None:
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from histovl.outputs_guard import output_lock\n"
         "with output_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)", str(out)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert run_main(_zeroshot(fx, out, tmp_path / "cache")) == 2
        assert f"pid {holder.pid}" in capsys.readouterr().err
        faults.inject("second writer to one --out")
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.1)
    assert run_main(_zeroshot(fx, out, tmp_path / "cache")) == 0  # the kernel dropped the lock with its holder
    assert not lock_path(out).exists()


def test_a_rerun_replaces_the_folder_whole_and_keeps_files_histovl_did_not_write(fx: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    robust = ["robustness", "-m", str(fx["model"]), "-d", str(fx["manifest"]), "-p", str(fx["prompts"]), "-o", str(out),
              "-c", "blur", "-l", "1", "--cache", str(tmp_path / "c"), "--n-boot", "0", "--quiet", "--workers", "0"]
    assert run_main(robust) == 0
    assert (out / "robustness.csv").is_file()
    (out / "my-notes.md").write_text("mine")
    assert run_main(_zeroshot(fx, out, tmp_path / "c")) == 0
    assert not (out / "robustness.csv").exists()  # the previous run's file is gone: no mix
    assert (out / "my-notes.md").read_text() == "mine"  # not histovl's: carried over
    assert json.loads((out / "run.json").read_text())["command"] == "histovl zeroshot"
    listed = set((out / MANIFEST_FILE).read_text().split())
    assert "my-notes.md" not in listed and "metrics.json" in listed


def test_leftovers_of_a_killed_swap_are_cleaned_or_put_back(tmp_path: Path, faults: FaultLog) -> None:
    out = tmp_path / "out"
    with staged_folder(out) as stage:
        (stage / "run.json").write_text("{}")
    stale = tmp_path / ".out.staging-999-dead"
    stale.mkdir()
    (stale / "half.png").write_bytes(b"x")
    os.rename(out, tmp_path / ".out.old-999-dead")  # killed between the two renames of a swap
    with staged_folder(out) as stage:
        raise_inside = False
        (stage / "run.json").write_text('{"new": 1}')
        assert not raise_inside
    assert json.loads((out / "run.json").read_text()) == {"new": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    faults.inject("kill between the renames of a swap")


def test_a_failure_inside_a_staged_folder_leaves_the_previous_one(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with staged_folder(out) as stage:
        (stage / "run.json").write_text("old")
    with pytest.raises(OutputPathError, match="still holds what it held before"), staged_folder(out) as stage:
        (stage / "metrics.json").write_text("new")
        raise OSError(errno.EROFS, "Read-only file system", str(stage / "run.json"))
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST_FILE, "run.json"]
    assert (out / "run.json").read_text() == "old"


def test_the_current_folder_is_refused_and_a_symlinked_out_is_written_through(
    fx: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], faults: FaultLog
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.txt").write_text("mine")
    assert run_main(_zeroshot(fx, Path("."), tmp_path / "cache")) == 2  # replacing it would pull it from under the shell
    assert "current folder" in capsys.readouterr().err and (tmp_path / "mine.txt").read_text() == "mine"
    faults.inject("--out . (the current folder)")
    target = tmp_path / "real"
    target.mkdir()
    (tmp_path / "link").symlink_to(target)
    with staged_folder(tmp_path / "link") as stage:
        (stage / "run.json").write_text("{}")
    assert (tmp_path / "link").is_symlink() and (target / "run.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "mine.txt", "real"]
