"""ONNX runs tokenise prompts from the export folder: a run whose towers an earlier process
exported and measured never loads the torch model (before, it loaded it just to tokenise, and
`apply_runtime` loaded it by asking a LazyEncoder for an attribute); and within a process a later
run reuses the RuntimeEncoder, as the torch path reuses its model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from histovl.embed.encoders import open_encoder
from histovl.models import lazy
from histovl.options import RunOptions
from tests.golden.cases import build_fixture
from tests.helpers.loads import count_model_loads

pytest.importorskip("onnxruntime")

PROMPTS = ["an H&E image of lung adenocarcinoma.", "benign lung tissue"]
NEW_PROMPTS = ["squamous cell carcinoma, keratin pearls", "necrosis", "word " * 300]
PIXELS = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The tiny fixture model with both towers exported and measured (one cache folder)."""
    root = tmp_path_factory.mktemp("tok")
    fixture = build_fixture(root)
    lazy.forget_loaded_models()
    first = open_encoder(fixture["model"], RunOptions(cache=root / "cache", runtime="onnx"))
    first.encode_image(PIXELS)
    first.encode_text(PROMPTS)
    return {"spec": fixture["model"], "cache": root / "cache", "folder": first.folder}  # type: ignore[attr-defined]


def _fresh_process() -> None:
    from histovl.models.runtime import _ort, encoder
    from histovl.models.runtime import tokenizer as tk

    lazy.forget_loaded_models()
    tk._LOADED.clear()
    _ort._SESSIONS.clear()
    encoder._ENCODERS.clear()




def test_a_cached_export_encodes_prompts_without_loading_the_model(exported: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    meta = json.loads((exported["folder"] / "meta.json").read_text())
    assert meta["tokenizer"]["text"] == {"kind": "clip-bpe", "context_length": 77, "cut": True, "inputs": ["tokens"]}
    _fresh_process()
    calls = count_model_loads(monkeypatch)
    fresh = open_encoder(exported["spec"], RunOptions(cache=exported["cache"], runtime="onnx"))
    text = fresh.encode_text(NEW_PROMPTS)  # prompts the export never saw (one cut to the context)
    counts = fresh.text_token_counts(NEW_PROMPTS)  # type: ignore[attr-defined]
    image = fresh.encode_image(PIXELS)
    assert calls == [], "the torch model was loaded"
    assert not fresh.base.is_loaded  # type: ignore[attr-defined]

    torch_enc = fresh.base.model()  # type: ignore[attr-defined]  # now load it, as the reference
    with torch.inference_mode():
        ref_text, ref_image = torch_enc.encode_text(NEW_PROMPTS), torch_enc.encode_image(PIXELS)
    assert torch.nn.functional.cosine_similarity(text, ref_text).min() >= 0.9999
    assert torch.nn.functional.cosine_similarity(image, ref_image).min() >= 0.9999
    assert counts == torch_enc.text_token_counts(NEW_PROMPTS)


def test_no_cache_with_a_cached_export_does_not_load_the_model_either(exported: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """--no-cache concerns embeddings: the model identity the cache folder records keeps an ONNX
    run lazy (under torch, --no-cache loads the model as before: test_warm_runs)."""
    _fresh_process()
    calls = count_model_loads(monkeypatch)
    fresh = open_encoder(exported["spec"], RunOptions(cache=exported["cache"], use_cache=False, runtime="onnx"))
    fresh.encode_text(NEW_PROMPTS)
    fresh.encode_image(PIXELS)
    assert calls == [] and not fresh.base.is_loaded  # type: ignore[attr-defined]
    _fresh_process()
    plain = open_encoder(exported["spec"], RunOptions(cache=exported["cache"], use_cache=False))
    assert not getattr(plain, "is_lazy_encoder", False) and calls == [exported["spec"]]


def test_a_tokenizer_that_gives_other_ids_is_not_recorded(exported: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Rebuilt tokenisers are checked against the torch tower's ids; a mismatch keeps the torch path."""
    from histovl.models.runtime import tokenizer as tk

    meta_file = exported["folder"] / "meta.json"
    saved = meta_file.read_text()
    meta = json.loads(saved)
    meta.pop("tokenizer")  # as an export made before tokenisers were kept
    meta_file.write_text(json.dumps(meta))
    real = tk._build

    def shifted(folder, record):  # type: ignore[no-untyped-def]
        built = real(folder, record)
        return tk.Tokenizer(built.raw, built.context_length, lambda t: {k: v + 1 for k, v in built.tokenize(t).items()})

    try:
        _fresh_process()
        monkeypatch.setattr(tk, "_build", shifted)
        rt = open_encoder(exported["spec"], RunOptions(cache=exported["cache"], runtime="onnx"))
        feats = rt.encode_text(NEW_PROMPTS)
        assert "tokenizer" not in json.loads(meta_file.read_text())
        with torch.inference_mode():
            reference = rt.base.model().encode_text(NEW_PROMPTS)  # type: ignore[attr-defined]
        assert np.allclose(feats.numpy(), reference.numpy(), atol=1e-4)
    finally:
        meta_file.write_text(saved)
        _fresh_process()


def test_a_later_run_over_the_same_model_reuses_the_runtime_encoder(exported: dict[str, Any]) -> None:
    """As the torch path keeps its model per process, so what a run memoises per encoder (the
    zero-shot text classifier) serves the next run under ONNX too; each run gets its own record."""

    from histovl.models.runtime import encoder

    def opts(**kw: Any) -> RunOptions:
        return RunOptions(cache=exported["cache"], use_cache=False, runtime="onnx", **kw)

    first = open_encoder(exported["spec"], opts())  # without the cache: the per-process torch model
    second_opts = opts()
    assert open_encoder(exported["spec"], second_opts) is first
    (record,) = second_opts.runtime_parity.values()
    assert record["text"]["cosine_min"] >= 0.9999 and record["measured_in_this_run"] is None
    assert open_encoder(exported["spec"], opts(allow_approximate=True)) is not first
    lazy.forget_loaded_models()  # another torch model object: another RuntimeEncoder, and the old
    assert open_encoder(exported["spec"], opts()) is not first  # ones (holding that model) are let go
    assert all(enc.base is not first.base for enc in encoder._ENCODERS.values())  # type: ignore[attr-defined]


def test_the_clip_bpe_tokenizer_does_not_import_open_clip() -> None:
    """open_clip's package imports all its model code (~3 s); its tokenizer module needs none of it."""
    import os
    import subprocess
    import sys

    code = (
        "import json, sys\n"
        "from histovl.models.runtime import tokenizer as tk\n"
        f"record = json.loads({json.dumps(json.dumps({'kind': 'clip-bpe', 'context_length': 77, 'cut': True, 'inputs': ['tokens']}))})\n"
        f"ids = tk._build(None, record).tokenize({NEW_PROMPTS!r})['tokens']\n"
        "print(json.dumps({'open_clip': 'open_clip' in sys.modules, 'ids': ids.tolist()}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3] / "src")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["open_clip"] is False
    import open_clip

    tokens = open_clip.get_tokenizer("ViT-B-32")(NEW_PROMPTS).numpy()
    cut = int((tokens != 0).sum(axis=1).max())
    assert np.array_equal(np.asarray(result["ids"]), tokens[:, :cut])
