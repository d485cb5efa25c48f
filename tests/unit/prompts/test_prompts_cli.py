"""`histovl prompts list|show`: thin CLI over the prompt-set library."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from histovl.cli.app import app


def test_list_shows_every_shipped_set() -> None:
    result = CliRunner().invoke(app, ["prompts", "list"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "lung-he-v1" in result.output and "mihic-biomarker-v1" in result.output


def test_show_expands_a_yaml_file(tmp_path: Path) -> None:
    f = tmp_path / "mine.yaml"
    f.write_text("classes: {a: [alpha]}\ntemplates: ['an image of {}.']\n")
    result = CliRunner().invoke(app, ["prompts", "show", str(f)])
    assert result.exit_code == 0, result.output
    assert "an image of alpha." in result.output
