"""`predict --head` with a real few-shot head (`histovl.heads.fewshot`), fitted on the tiny model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from histovl.embed import encode_images
from histovl.predict import predict

fewshot = pytest.importorskip("histovl.heads.fewshot")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from histovl.models import save_model_dir
    from tests.helpers.tiny import tiny_encoder

    return save_model_dir(tiny_encoder(0), tmp_path_factory.mktemp("m") / "tiny-model")


@pytest.fixture
def head_dir(model_dir: Path, class_folder: Path, tmp_path: Path) -> Path:
    from histovl.data import load_image_set
    from histovl.models import load_model

    encoder = load_model(model_dir)
    images = load_image_set(class_folder)
    emb = encode_images(encoder, images.paths, progress=False).embeddings
    head = fewshot.SimpleShotHead(encoder=fewshot.EncoderInfo.of(encoder)).fit(emb, images.labels)
    head.save(tmp_path / "head")
    return tmp_path / "head"


def test_real_head_scores_like_the_head_itself(model_dir, head_dir, nested_folder, prompts, tmp_path):
    from histovl.models import load_model

    encoder = load_model(model_dir)
    res = predict(model_dir, nested_folder, tmp_path / "out", head=head_dir, prompts=prompts, use_cache=False, progress=False)
    paths = [nested_folder / p for p in res.predictions["path"]]
    expected = fewshot.load_head(head_dir).predict_proba(encode_images(encoder, paths, progress=False).embeddings)
    np.testing.assert_allclose(res.probabilities, expected, atol=1e-6)
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["config"]["source"] == "head+prompts" and run["extra"]["head_weights_id"] == encoder.weights_id


def test_real_head_with_another_encoder_is_one_line_exit_2(head_dir, class_folder, tmp_path, capsys):
    from histovl.cli.app import main
    from histovl.models import save_model_dir
    from tests.helpers.tiny import tiny_encoder

    other = save_model_dir(tiny_encoder(1), tmp_path / "other-model")
    out = tmp_path / "out"
    old = sys.argv
    sys.argv = ["histovl", "predict", "--model", str(other), "--data", str(class_folder), "--head", str(head_dir),
                "--out", str(out), "--no-cache", "--quiet"]
    try:
        with pytest.raises(SystemExit) as exc:
            main()
    finally:
        sys.argv = old
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and "was fitted on" in err[0], err
    assert not out.exists()
