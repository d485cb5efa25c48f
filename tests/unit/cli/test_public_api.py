"""The public API mirrors the CLI; the shared run options parse the same way in every command."""

from __future__ import annotations

import subprocess
import sys
import types

import pytest
import typer
from typer.testing import CliRunner

import histovl
from histovl.cli.app import API_FUNCTIONS, COMMANDS, app, command_function
from histovl.cli.common import deprecated_alias, with_run_options
from histovl.options import RunOptions


def test_every_command_has_its_library_function_in_histovl():
    assert set(API_FUNCTIONS) == set(COMMANDS), "API_FUNCTIONS and COMMANDS must list the same commands"
    for words, name in API_FUNCTIONS.items():
        assert name in histovl.__all__, f"`histovl {words}`: histovl.{name} is not exported"
        value = getattr(histovl, name)
        assert callable(value), f"histovl.{name} is not callable"
        if isinstance(value, types.ModuleType):  # a package named like its command calls it
            assert value.__command__ is getattr(value, name), name


def test_a_package_named_like_its_command_calls_it(monkeypatch):
    import histovl.zeroshot.single_label  # binds histovl.zeroshot to the package, as any import would

    calls = []
    monkeypatch.setitem(histovl.zeroshot.__dict__, "__command__", lambda *a, **k: calls.append((a, k)) or "ran")
    assert histovl.zeroshot("m", "d", n_boot=0) == "ran" and calls == [(("m", "d"), {"n_boot": 0})]
    assert histovl.zeroshot.ZeroshotConfig is histovl.zeroshot.single_label.ZeroshotConfig


def test_every_command_is_a_module_level_function():
    for words, target in COMMANDS.items():
        fn = command_function(target)
        module, _, name = target.partition(":")
        assert fn.__module__ == module and fn.__name__ == name, words
        assert not hasattr(sys.modules[module], "register"), f"{module} still registers itself"


def test_every_command_shows_help():
    runner = CliRunner()
    for words in COMMANDS:
        res = runner.invoke(app, [*words.split(), "--help"])
        assert res.exit_code == 0, (words, res.output)


def test_import_histovl_does_not_import_torch():
    code = "import sys, histovl; histovl.RunOptions; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        histovl.nope  # noqa: B018


def _probe_app(**decorator_kwargs) -> tuple[typer.Typer, list[RunOptions]]:
    seen: list[RunOptions] = []

    @with_run_options(**decorator_kwargs)
    def probe(options: RunOptions, name: str = "x") -> None:
        seen.append(options)

    probe_app = typer.Typer()
    probe_app.command("probe")(probe)
    probe_app.command("other")(lambda: None)
    return probe_app, seen


def test_run_options_are_parsed_into_one_value(tmp_path):
    probe_app, seen = _probe_app()
    res = CliRunner().invoke(probe_app, ["probe", "--cache", str(tmp_path), "--no-cache", "--batch-size", "8",
                                         "--workers", "0", "--on-error", "skip", "--device", "cuda:1",
                                         "--trust-checkpoint", "--allow-absolute-paths", "--n-boot", "5",
                                         "--seed", "9", "--quiet", "--name", "y"])
    assert res.exit_code == 0, res.output
    assert seen == [RunOptions(cache=tmp_path, use_cache=False, batch_size=8, workers=0, on_error="skip",
                               device="cuda:1", trust_checkpoint=True, allow_absolute_paths=True, n_boot=5,
                               seed=9, progress=False)]


def test_defaults_exclusions_and_bad_values():
    probe_app, seen = _probe_app(exclude=("n_boot",), batch_size=256)
    assert CliRunner().invoke(probe_app, ["probe"]).exit_code == 0
    assert seen[-1] == RunOptions(batch_size=256)
    res = CliRunner().invoke(probe_app, ["probe", "--n-boot", "3"])
    assert res.exit_code == 2 and "No such option" in res.output
    res = CliRunner().invoke(probe_app, ["probe", "--on-error", "ignore"])
    assert res.exit_code == 2
    with pytest.raises(TypeError, match="not RunOptions fields"):
        with_run_options(exclude=("nboot",))


def test_deprecated_alias(capsys):
    assert deprecated_alias(None, 3, old="--readers", new="--workers") == 3
    assert deprecated_alias(4, None, old="--readers", new="--workers") == 4
    assert "--readers is deprecated" in capsys.readouterr().err
    with pytest.raises(typer.BadParameter, match="give only --workers"):
        deprecated_alias(4, 5, old="--readers", new="--workers")


def test_models_hub_cache_old_spelling_still_works(tmp_path):
    res = CliRunner().invoke(app, ["models", "--cache-dir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "--cache-dir is deprecated" in res.output


def test_architecture_doc_lists_every_command():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[3] / "docs" / "architecture.md").read_text()
    for words, name in API_FUNCTIONS.items():
        assert f"| `histovl {words}` | `histovl.{name}` |" in text, f"docs/architecture.md lacks `histovl {words}`"
