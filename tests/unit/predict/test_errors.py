"""Bad input to `histovl predict`: one line on stderr, exit code 2, nothing written."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from histovl.errors import HistovlError
from histovl.predict import predict
from tests.unit.predict.conftest import CLASSES, StandInHead, write_stand_in_head


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from histovl.models import save_model_dir
    from tests.helpers.tiny import tiny_encoder

    return save_model_dir(tiny_encoder(0), tmp_path_factory.mktemp("m") / "tiny-model")


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    from histovl.cli.app import main

    old = sys.argv
    sys.argv = ["histovl", *argv]
    try:
        with pytest.raises(SystemExit) as exc:
            main()
    finally:
        sys.argv = old
    return int(exc.value.code or 0), capsys.readouterr().err


def _assert_one_line_exit_2(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_head_fitted_on_another_encoder(model_dir, class_folder, tmp_path, capsys, stand_in_heads):
    head = write_stand_in_head(tmp_path / "head", CLASSES, "sha256:someone-else")
    out = tmp_path / "out"
    code, err = run_main(["predict", "--model", str(model_dir), "--data", str(class_folder), "--head", str(head),
                          "--out", str(out), "--no-cache", "--quiet"], capsys)
    _assert_one_line_exit_2(code, err, "fitted on encoder sha256:someone-else")
    assert not out.exists()


def test_prompt_classes_differ_from_the_heads(model_dir, class_folder, prompts, tmp_path, capsys, stand_in_heads):
    head = write_stand_in_head(tmp_path / "head", ["tumour", "stroma"], "any")
    out = tmp_path / "out"
    code, err = run_main(["predict", "--model", str(model_dir), "--data", str(class_folder), "--head", str(head),
                          "--prompts", str(prompts), "--out", str(out)], capsys)
    _assert_one_line_exit_2(code, err, "differ from the classes of head", "'tumour'", "'lung_aca'")
    assert not out.exists()


@pytest.mark.parametrize("name, content", [("broken.svs", b"not a slide at all"), ("broken.png", b"\x89PNG\r\n\x1a\n garbage")])
def test_slide_that_cannot_be_opened(model_dir, prompts, tmp_path, capsys, name, content):
    slide = tmp_path / name
    slide.write_bytes(content)
    out = tmp_path / "out"
    code, err = run_main(["predict", "--model", str(model_dir), "--data", str(slide), "--prompts", str(prompts),
                          "--out", str(out), "--no-cache"], capsys)
    _assert_one_line_exit_2(code, err, "cannot open", name)
    assert not out.exists()


def test_slide_resolution_unknown_fails_before_writing(model_dir, slide_png, prompts, tmp_path, capsys):
    out = tmp_path / "out"
    code, err = run_main(["predict", "--model", str(model_dir), "--data", str(slide_png), "--prompts", str(prompts),
                          "--mpp", "0.5", "--out", str(out)], capsys)
    _assert_one_line_exit_2(code, err, "records no µm/px")
    assert not out.exists()


def test_no_scoring_source_and_missing_data(model_dir, class_folder, prompts, tmp_path, capsys):
    code, err = run_main(["predict", "--model", str(model_dir), "--data", str(class_folder), "--out", str(tmp_path / "o")], capsys)
    _assert_one_line_exit_2(code, err, "--prompts", "--head")
    code, err = run_main(["predict", "--model", str(model_dir), "--data", str(tmp_path / "nope"), "--prompts", str(prompts),
                          "--out", str(tmp_path / "o")], capsys)
    _assert_one_line_exit_2(code, err, "does not exist")
    assert not (tmp_path / "o").exists()


def test_library_errors_are_histovl_errors(tiny_clip, class_folder, prompts):
    with pytest.raises(HistovlError, match="fitted on encoder"):
        predict(tiny_clip, class_folder, None, head=StandInHead(CLASSES, "other"), use_cache=False, progress=False)
    with pytest.raises(HistovlError, match="differ"):
        predict(tiny_clip, class_folder, None, prompts=prompts, head=StandInHead(["a", "b", "c"], tiny_clip.weights_id))
    with pytest.raises(ValueError, match="top_j"):
        predict(tiny_clip, class_folder, None, prompts=prompts, top_j=0)
    with pytest.raises(TypeError, match="unexpected keyword"):
        predict(tiny_clip, class_folder, None, prompts=prompts, topj=3)
