"""ONNX Runtime encoders: every family's export matches torch, the cache keeps runtimes apart,
the parity gate refuses a broken export, and a missing onnxruntime is one line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from histovl.models.runtime import (
    INSTALL_HINT,
    OnnxRuntimeMissingError,
    RuntimeParityError,
    apply_runtime,
)
from histovl.options import RunOptions
from tests.helpers.tiny import TINY_IMAGE_SIZE, tiny_encoder, tiny_hf_clip_dir

pytest.importorskip("onnxruntime")

@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache folder for the tests of `tiny_encoder(0)`: its towers are exported once."""
    return tmp_path_factory.mktemp("exports")


PROMPTS = ["an H&E image of lung adenocarcinoma.", "benign lung tissue", "squamous cell carcinoma of the lung, keratin pearls"]


def _cosines(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1).numpy()


def _check_fp32_parity(encoder: object, tmp_path: Path, size: int) -> None:
    opts = RunOptions(cache=tmp_path, runtime="onnx")
    rt = apply_runtime(encoder, opts)
    pixels = torch.randn(5, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert _cosines(rt.encode_image(pixels), encoder.encode_image(pixels)).min() >= 0.9999  # type: ignore[attr-defined]
        assert _cosines(rt.encode_text(PROMPTS), encoder.encode_text(PROMPTS)).min() >= 0.9999  # type: ignore[attr-defined]
        # another batch size and another prompt length run through the same exported graphs
        assert _cosines(rt.encode_image(pixels[:3]), encoder.encode_image(pixels[:3])).min() >= 0.9999  # type: ignore[attr-defined]
        assert _cosines(rt.encode_text(PROMPTS[:1]), encoder.encode_text(PROMPTS[:1])).min() >= 0.9999  # type: ignore[attr-defined]
    record = opts.runtime_parity[encoder.card.name]  # type: ignore[attr-defined]
    assert record["passed"] is True and record["image"]["cosine_min"] >= 0.9999
    assert record["argmax_agreement"]["n_prompts"] == len(PROMPTS)
    meta = json.loads((Path(record["export"]) / "meta.json").read_text())
    assert set(meta["towers"]) == {"image", "text"} and meta["parity"]["text"]["n"] == len(PROMPTS)
    # the tokeniser is kept beside the towers (checked against the torch ids), so later runs need no model
    kind = "clip-bpe" if encoder.card.family == "open_clip" else "hf"  # type: ignore[attr-defined]
    assert meta["tokenizer"]["text"]["kind"] == kind


def test_open_clip_export_matches_torch(exports: Path) -> None:
    _check_fp32_parity(tiny_encoder(), exports, TINY_IMAGE_SIZE)


@pytest.mark.slow
def test_hf_clip_export_matches_torch(tmp_path: Path) -> None:
    from histovl.models import load_model

    _check_fp32_parity(load_model(f"hf-clip:{tiny_hf_clip_dir(tmp_path / 'hf')}"), tmp_path, TINY_IMAGE_SIZE)


@pytest.mark.slow
def test_histovl_lite_export_matches_torch(tmp_path: Path) -> None:
    from histovl.models._lite import build_histovl_lite, bundled_card

    _check_fp32_parity(build_histovl_lite(bundled_card(), None), tmp_path, 224)


def test_export_is_reused_and_keyed_by_runtime(exports: Path) -> None:
    encoder = tiny_encoder()
    pixels = torch.randn(4, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)
    first = apply_runtime(encoder, RunOptions(cache=exports, runtime="onnx"))
    first.encode_image(pixels)
    stamp = (first.folder / "image.onnx").stat().st_mtime_ns
    again = apply_runtime(encoder, RunOptions(cache=exports, runtime="onnx"))
    assert again.folder == first.folder
    again.encode_image(pixels)
    assert (again.folder / "image.onnx").stat().st_mtime_ns == stamp  # reused, not exported again
    int8 = apply_runtime(encoder, RunOptions(cache=exports, runtime="onnx-int8", allow_approximate=True))
    assert int8.folder != first.folder
    # the cache key of every embedding: torch keeps its id, each runtime gets its own
    assert {encoder.weights_id, first.weights_id, int8.weights_id} == {
        "tiny-seed0", "tiny-seed0|runtime=onnx", "tiny-seed0|runtime=onnx-int8"}
    int8.encode_image(pixels)
    first.encode_text(PROMPTS)
    int8.encode_text(PROMPTS)
    meta = json.loads((int8.folder / "meta.json").read_text())
    assert meta["towers"]["image"]["quantisation"].startswith("dynamic int8")
    assert meta["towers"]["text"]["copied_from"] == str(first.folder)  # fp32 text, exported once
    assert not [f for f in int8.folder.iterdir() if f.name.endswith(".data")]  # single-file towers
    assert apply_runtime(encoder, RunOptions(runtime="torch")) is encoder


def test_int8_text_tower_is_kept_only_within_its_margin(exports: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """onnx-int8 keeps a quantised text tower only where it stays within TEXT_INT8_MIN of fp32."""
    import shutil

    import onnx

    from histovl.models.runtime import export as ex
    from histovl.models.runtime.towers import text_tower

    encoder = tiny_encoder()
    fp32 = apply_runtime(encoder, RunOptions(cache=exports, runtime="onnx"))
    fp32.encode_text(PROMPTS)
    int8 = apply_runtime(encoder, RunOptions(cache=exports, runtime="onnx-int8", allow_approximate=True))
    tower = text_tower(encoder)
    assert tower is not None
    for floor, kept, integer_ops in ((-1.0, "dynamic int8", True), (1.01, "none (fp32: int8 reached", False)):
        monkeypatch.setattr(ex, "TEXT_INT8_MIN", floor)
        folder = tmp_path / "towers"
        folder.mkdir(exist_ok=True)
        source, target = folder / "text.fp32.onnx", folder / "text.onnx"
        shutil.copyfile(fp32.folder / "text.onnx", source)
        how = int8._quantize_text(source, target, tower.tokenize(PROMPTS))
        assert how.startswith(kept) and "cosine min" in how
        assert [p.name for p in folder.iterdir()] == ["text.onnx"]  # the other candidate is gone
        ops = {node.op_type for node in onnx.load(str(target)).graph.node}
        assert ("MatMulInteger" in ops) is integer_ops


def test_cache_keeps_runtimes_apart(tmp_path: Path, exports: Path) -> None:
    from histovl.embed import EmbeddingCache, encode_images
    from tests.helpers.synthetic import lung_tiles

    manifest = lung_tiles(tmp_path / "data", per_class=2)
    paths = sorted(str(p) for p in manifest.parent.glob("tiles/*/*.png"))
    cache = EmbeddingCache(tmp_path / "cache")
    encoder = tiny_encoder()
    torch_res = encode_images(encoder, paths, cache=cache, num_workers=0, progress=False)
    rt = apply_runtime(encoder, RunOptions(cache=exports, runtime="onnx"))
    onnx_res = encode_images(rt, paths, cache=cache, num_workers=0, progress=False)
    assert torch_res.n_encoded == len(paths) and onnx_res.n_encoded == len(paths)  # no torch row reused
    again = encode_images(rt, paths, cache=cache, num_workers=0, progress=False)
    assert again.n_cached == len(paths)
    assert np.allclose(onnx_res.embeddings, again.embeddings)


def test_missing_onnxruntime_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    with pytest.raises(OnnxRuntimeMissingError) as err:
        apply_runtime(tiny_encoder(), RunOptions(runtime="onnx-int8"))
    message = str(err.value)
    assert "\n" not in message and INSTALL_HINT in message and "--runtime onnx-int8" in message


def test_token_counts_come_from_the_torch_encoder(exports: Path) -> None:
    """ONNX runs warn about prompts cut to the context like torch runs (docs/reliability.md)."""
    encoder = tiny_encoder()
    rt = apply_runtime(encoder, RunOptions(cache=exports, runtime="onnx"))
    texts = ["short", "word " * 500]
    assert rt.text_token_counts(texts) == encoder.text_token_counts(texts)


def test_runtime_needs_the_cpu() -> None:
    from histovl.errors import HistovlError

    with pytest.raises(HistovlError, match="runs on the CPU"):
        apply_runtime(tiny_encoder(), RunOptions(runtime="onnx", device="cuda"))


def _break(onnx_path: Path) -> None:
    """Perturb the largest weight of an exported tower (what a bad export or a bad kernel does)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    init = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    values = numpy_helper.to_array(init).copy()
    values += np.random.default_rng(0).normal(0, 3 * float(values.std()) + 1e-3, values.shape).astype(values.dtype)
    init.CopyFrom(numpy_helper.from_array(values, init.name))
    onnx.save(model, str(onnx_path))


def test_gate_refuses_a_broken_export(tmp_path: Path) -> None:
    encoder = tiny_encoder(seed=1)  # its own export folder: this test breaks it
    pixels = torch.randn(6, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE, generator=torch.Generator().manual_seed(1))
    good = apply_runtime(encoder, RunOptions(cache=tmp_path, runtime="onnx"))
    good.encode_image(pixels)
    _break(good.folder / "image.onnx")
    with pytest.raises(RuntimeParityError, match="--allow-approximate"):
        apply_runtime(encoder, RunOptions(cache=tmp_path, runtime="onnx")).encode_image(pixels)
    # once measured, the failure is known before anything is encoded
    with pytest.raises(RuntimeParityError):
        apply_runtime(encoder, RunOptions(cache=tmp_path, runtime="onnx"))
    opts = RunOptions(cache=tmp_path, runtime="onnx", allow_approximate=True)
    apply_runtime(encoder, opts).encode_image(pixels)
    record = opts.runtime_parity[encoder.card.name]
    assert record["passed"] is False and record["accepted_approximate"] is True
    assert record["image"]["cosine_min"] < 0.999


# ---- the command line ------------------------------------------------------------------------------


def _args(root: Path, fixture: dict[str, str], out: str, *extra: str) -> list[str]:
    return ["zeroshot", "--model", fixture["model"], "--data", fixture["manifest"], "--prompts", fixture["prompts"],
            "--out", str(root / out), "--cache", str(root / "cache"), "--n-boot", "10", "--workers", "0", "--quiet", *extra]


def _zeroshot(root: Path, fixture: dict[str, str], out: str, *extra: str) -> object:
    from typer.testing import CliRunner

    from histovl.cli.app import app

    return CliRunner().invoke(app, _args(root, fixture, out, *extra))


def _exit_code_and_error(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], args: list[str]) -> tuple[int, str]:
    from histovl.cli.app import main

    monkeypatch.setattr(sys, "argv", ["histovl", *args])
    with pytest.raises(SystemExit) as stop:
        main()
    return int(stop.value.code or 0), capsys.readouterr().err


@pytest.mark.slow
def test_cli_zeroshot_onnx_records_parity_and_the_gate_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.golden.cases import build_fixture

    fixture = build_fixture(tmp_path)
    r = _zeroshot(tmp_path, fixture, "torch")
    assert r.exit_code == 0, r.output  # type: ignore[attr-defined]
    r = _zeroshot(tmp_path, fixture, "onnx", "--runtime", "onnx")
    assert r.exit_code == 0, r.output  # type: ignore[attr-defined]
    config = json.loads((tmp_path / "onnx" / "run.json").read_text())["config"]
    assert config["runtime"] == "onnx" and config["allow_approximate"] is False
    (record,) = config["runtime_parity"].values()
    assert record["passed"] is True and record["measured_in_this_run"] is True
    assert record["image"]["n"] == 18 and record["image"]["cosine_min"] >= 0.9999  # the run's own images
    assert record["text"]["cosine_min"] >= 0.9999 and record["argmax_agreement"]["agreement"] == 1.0
    torch_preds = (tmp_path / "torch" / "predictions.csv").read_text().splitlines()
    onnx_preds = (tmp_path / "onnx" / "predictions.csv").read_text().splitlines()
    assert [row.split(",")[:3] for row in torch_preds] == [row.split(",")[:3] for row in onnx_preds]
    assert json.loads((tmp_path / "torch" / "run.json").read_text())["config"]["runtime_parity"] is None

    _break(Path(record["export"]) / "image.onnx")
    code, err = _exit_code_and_error(monkeypatch, capsys, _args(tmp_path, fixture, "broken", "--runtime", "onnx", "--no-cache"))
    assert code == 2 and "--allow-approximate" in err and "Traceback" not in err
    r = _zeroshot(tmp_path, fixture, "approx", "--runtime", "onnx", "--no-cache", "--allow-approximate")
    assert r.exit_code == 0, r.output  # type: ignore[attr-defined]
    (record,) = json.loads((tmp_path / "approx" / "run.json").read_text())["config"]["runtime_parity"].values()
    assert record["passed"] is False and record["accepted_approximate"] is True


def test_cli_missing_onnxruntime_exits_2_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.golden.cases import build_fixture

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    code, err = _exit_code_and_error(monkeypatch, capsys, _args(tmp_path, build_fixture(tmp_path), "out", "--runtime", "onnx"))
    assert code == 2 and INSTALL_HINT in err and len(err.strip().splitlines()) == 1


def test_quantiser_advice_does_not_reach_users(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """ONNX Runtime's quantiser logs "Please consider to run pre-processing ..." on every call;
    users cannot act on it, so it is dropped (and only it: the root logger keeps other records)."""
    import logging

    from histovl.models.runtime import export as ex

    module = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4)).eval()
    fp32, int8 = tmp_path / "m.onnx", tmp_path / "m8.onnx"
    ex.export_module(module, (torch.randn(2, 8),), ("pixels",), fp32, {"pixels": {0: "n"}})
    with caplog.at_level(logging.WARNING):
        ex.quantize_dynamic_int8(fp32, int8)
        logging.getLogger().warning("another library's warning")
    assert int8.is_file()
    messages = [r.getMessage() for r in caplog.records]
    assert not any("pre-processing before quantization" in m for m in messages)
    assert "another library's warning" in messages
    assert not logging.getLogger().filters  # the filter is removed afterwards
