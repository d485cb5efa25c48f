"""The one error boundary (`histovl.cli.guard.run_cli`, docs/reliability.md "error boundary"):
every error the user can cause is one line and exit 2; a signal is one line and 128 + signum;
anything else is the traceback plus a one-line summary and exit 1."""

from __future__ import annotations

import errno
import os
import signal

import pytest

from histovl.cli import guard
from histovl.errors import HistovlError
from tests.faults.conftest import FaultLog

USER = [
    HistovlError("model folder x/card.json is damaged"),
    ValueError("manifest m.csv has a header but no rows"),
    FileNotFoundError("weights file w.safetensors does not exist"),
    PermissionError(errno.EACCES, os.strerror(errno.EACCES), "/data/out/run.json"),
    OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/out/report.html"),
    OSError(errno.EROFS, os.strerror(errno.EROFS), "/mnt/ro/out"),
    IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), "/data/out"),
    NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), "/data/file/out"),
]


def _raise(err: BaseException) -> object:
    def body() -> None:
        raise err

    return body


@pytest.mark.parametrize("err", USER, ids=lambda e: type(e).__name__ + str(getattr(e, "errno", "") or ""))
def test_user_errors_are_one_line_and_exit_2(err: BaseException, capsys: pytest.CaptureFixture[str], faults: FaultLog) -> None:
    assert guard.run_cli(_raise(err)) == 2  # type: ignore[arg-type]
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in lines[0]
    if getattr(err, "filename", None):
        assert str(err.filename) in lines[0]  # type: ignore[attr-defined]
    faults.inject("user error at the boundary")


@pytest.mark.parametrize("err", [KeyError("boom"), RuntimeError("internal"), OSError(errno.EIO, "I/O error")])
def test_unexpected_errors_print_the_traceback_and_one_line_and_exit_1(err: BaseException, capsys: pytest.CaptureFixture[str]) -> None:
    assert guard.run_cli(_raise(err)) == 1  # type: ignore[arg-type]
    text = capsys.readouterr().err
    assert "Traceback" in text
    assert text.strip().splitlines()[-1].startswith(f"error: unexpected {type(err).__name__}")


def test_sigterm_is_one_line_and_exit_143(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(guard, "_received", {"signal": signal.SIGTERM})
    assert guard.run_cli(_raise(KeyboardInterrupt())) == 143  # type: ignore[arg-type]
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stopped by SIGTERM")


def test_usage_errors_keep_click_status(capsys: pytest.CaptureFixture[str]) -> None:
    def body() -> None:
        raise SystemExit(2)

    assert guard.run_cli(body) == 2
