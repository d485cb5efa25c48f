"""`--runtime onnx` on every command that encodes (docs/runtime.md): fewshot fit / eval, predict
(images and a slide), slides embed, stainalign fit / eval, index build, bench. Each runs from
Python and from the CLI, run.json (or the command's own record) holds the runtime and the
parity gate, and torch's and onnx's cached embeddings never mix. The commands without it refuse
with their reason. One tiny model, its image tower exported once for the whole module."""

from __future__ import annotations

import inspect
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from histovl.options import RunOptions

pytest.importorskip("onnxruntime")


@dataclass(frozen=True)
class World:
    root: Path
    model: str
    manifest: str
    exports: Path  # <cache>/onnx of the module's one export (the image tower, gate measured)
    head: Path  # a few-shot head fitted under torch


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    import torch

    from histovl.heads import fewshot_fit
    from histovl.models import load_model
    from histovl.models.runtime import apply_runtime
    from tests.golden.cases import build_fixture

    root = tmp_path_factory.mktemp("runtime_commands")
    files = build_fixture(root)
    encoder = apply_runtime(load_model(files["model"]), RunOptions(cache=root / "exports", runtime="onnx"))
    encoder.encode_image(torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)))  # export + gate
    fewshot_fit(files["model"], files["manifest"], root / "head", use_cache=False, workers=0, progress=False)
    return World(root, files["model"], files["manifest"], root / "exports" / "onnx", root / "head")


def _cache(tmp_path: Path, world: World) -> Path:
    """A fresh embedding cache holding the module's export (so no test exports again)."""
    cache = tmp_path / "cache"
    shutil.copytree(world.exports, cache / "onnx")
    return cache


def _config(folder: Path) -> dict[str, Any]:
    return dict(json.loads((folder / "run.json").read_text())["config"])


def _assert_onnx_record(config: dict[str, Any]) -> None:
    """run.json's config names the runtime and carries the gate's verdict on this model."""
    assert config["runtime"] == "onnx" and config["allow_approximate"] is False
    (record,) = config["runtime_parity"].values()
    assert record["runtime"] == "onnx" and record["passed"] is True and record["threshold"] == 0.999
    assert record["image"]["cosine_min"] >= 0.9999
    assert record["measured_in_this_run"] is None  # the module's export and gate, reused: exported once


def _cli(*args: str) -> None:
    from histovl.cli.app import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output


def test_fewshot_and_predict_under_onnx(world: World, tmp_path: Path) -> None:
    from histovl.heads import fewshot_fit
    from histovl.predict import predict

    cache = _cache(tmp_path, world)
    common: dict[str, Any] = {"cache": cache, "workers": 0, "progress": False}
    fewshot_fit(world.model, world.manifest, tmp_path / "head", runtime="onnx", **common)
    _assert_onnx_record(_config(tmp_path / "head"))
    # the head fitted under onnx applies under onnx: its 18 embeddings come from onnx's cache
    onnx = predict(world.model, world.manifest, tmp_path / "pred-onnx", head=tmp_path / "head", runtime="onnx", n_boot=0, **common)
    assert (onnx.n_cached, onnx.n_encoded) == (18, 0)
    _assert_onnx_record(_config(tmp_path / "pred-onnx"))
    # ... and under torch (heads name the weights, not the runtime); torch never reads onnx's rows
    torch_run = predict(world.model, world.manifest, None, head=tmp_path / "head", n_boot=0, **common)
    assert (torch_run.n_cached, torch_run.n_encoded) == (0, 18)
    assert list(torch_run.predictions["prediction"]) == list(onnx.predictions["prediction"])
    # a head fitted under torch, predicted from the CLI under onnx
    _cli("predict", "--model", world.model, "--data", world.manifest, "--head", world.head, "--out", tmp_path / "cli",
         "--cache", cache, "--workers", "0", "--n-boot", "0", "--quiet", "--runtime", "onnx")
    _assert_onnx_record(_config(tmp_path / "cli"))
    _cli("fewshot", "eval", "--model", world.model, "--data", world.manifest, "--out", tmp_path / "eval", "--method", "knn",
         "--shots", "1,2", "--seeds", "1", "--cache", cache, "--workers", "0", "--n-boot", "0", "--quiet", "--runtime", "onnx")
    _assert_onnx_record(_config(tmp_path / "eval"))
    _cli("fewshot", "fit", "--model", world.model, "--data", world.manifest, "--out", tmp_path / "head-cli", "--method", "knn",
         "--cache", cache, "--workers", "0", "--quiet", "--runtime", "onnx")
    _assert_onnx_record(_config(tmp_path / "head-cli"))


def test_slides_embed_and_slide_predict_under_onnx(world: World, tmp_path: Path) -> None:
    from PIL import Image

    from histovl.predict import predict
    from histovl.slides import SlideEmbedConfig, TileSpec, slides_embed
    from tests.unit.slides.conftest import synthetic_tissue

    slide = tmp_path / "slide.png"
    Image.fromarray(synthetic_tissue(256, 192)).save(slide)
    cache = _cache(tmp_path, world)
    config = SlideEmbedConfig(spec=TileSpec(size=64))
    torch_se = slides_embed(world.model, slide, tmp_path / "torch", config, RunOptions(cache=cache, workers=0, progress=False))
    _cli("slides", "embed", "--slide", slide, "--out", tmp_path / "onnx", "--model", world.model, "--size", "64",
         "--cache", cache, "--quiet", "--runtime", "onnx")
    record = json.loads((tmp_path / "onnx" / "encoder.json").read_text())
    assert record["runtime"] == "onnx" and record["weights_id"].endswith("|runtime=onnx")
    assert next(iter(record["runtime_parity"].values()))["passed"] is True
    onnx_emb = np.load(tmp_path / "onnx" / "embeddings.npy")
    assert len(onnx_emb) == len(torch_se.tiles) > 0 and np.sum(onnx_emb * torch_se.embeddings, axis=1).min() >= 0.9999
    again = slides_embed(world.model, slide, tmp_path / "onnx2", config, RunOptions(cache=cache, runtime="onnx", progress=False))
    assert (again.n_cached, again.n_encoded) == (len(torch_se.tiles), 0)  # onnx's rows, not torch's
    assert json.loads((tmp_path / "torch" / "encoder.json").read_text())["runtime"] == "torch"

    res = predict(world.model, slide, tmp_path / "pred", head=world.head, tile_size=64, cache=cache, runtime="onnx",
                  workers=0, progress=False)
    assert res.kind == "slide" and (res.n_cached, res.n_encoded) == (len(torch_se.tiles), 0)
    _assert_onnx_record(_config(tmp_path / "pred"))


def test_stainalign_under_onnx(world: World, tmp_path: Path) -> None:
    from histovl.stainalign import StainAlignFitConfig, StainAlignParams, stainalign_fit
    from tests.helpers.synthetic import stainalign_pairs

    pairs = stainalign_pairs(tmp_path / "data")
    cache = _cache(tmp_path, world)
    small = StainAlignParams(epochs=2, batch_size=4, hidden_dim=8, attention_dim=4, projection_dim=4)
    stainalign_fit(pairs, tmp_path / "fit", StainAlignFitConfig(params=small, cv_folds=2),
                   RunOptions(cache=cache, n_boot=0, runtime="onnx"), model=world.model)
    _assert_onnx_record(_config(tmp_path / "fit"))
    _cli("stainalign", "eval", "--pairs", pairs, "--head", tmp_path / "fit", "--cache", cache, "--n-boot", "0",
         "--out", tmp_path / "eval", "--runtime", "onnx")
    _assert_onnx_record(_config(tmp_path / "eval"))


def test_index_build_under_onnx_is_queried_with_torch(world: World, tmp_path: Path) -> None:
    from histovl.retrieval import VectorIndex, build_index, query_index
    from histovl.retrieval.query import ModelMismatchError

    cache = _cache(tmp_path, world)
    index = build_index(world.model, world.manifest, tmp_path / "index", runtime="onnx", cache=cache, workers=0, progress=False)
    assert index.model["runtime"] == "onnx" and next(iter(index.model["runtime_parity"].values()))["passed"] is True
    _cli("index", "build", "--model", world.model, "--data", world.manifest, "--out", tmp_path / "index-cli",
         "--cache", cache, "--workers", "0", "--quiet", "--runtime", "onnx")
    assert VectorIndex.open(tmp_path / "index-cli").model["weights_id"].endswith("|runtime=onnx")
    image = sorted(Path(world.manifest).parent.glob("tiles/*/*.png"))[0]
    hits = query_index(tmp_path / "index", image=str(image), k=3, include_self=True, cache=cache)
    assert Path(hits["path"][0]).name == image.name and hits["score"][0] >= 0.9999
    with pytest.raises(ValueError, match="one text or image per query"):
        query_index(tmp_path / "index", image=str(image), k=3, runtime="onnx", cache=cache)
    with pytest.raises(ModelMismatchError):  # one index never mixes runtimes
        build_index(world.model, world.manifest, tmp_path / "index", append=True, cache=cache, workers=0, progress=False)


def test_bench_passes_the_runtime_to_every_cell(world: World, tmp_path: Path) -> None:
    """bench's --runtime reaches each cell's library call (here fewshot_eval)."""
    from histovl.bench import bench
    from histovl.errors import HistovlError

    suite = tmp_path / "suite.yaml"
    suite.write_text(f"models:\n  - {world.model}\ndatasets:\n  - name: lung\n    path: {world.manifest}\n"
                     "tasks:\n  - task: fewshot\n    options: {methods: [knn], shots: [1], seeds: 1}\n")
    cache = _cache(tmp_path, world)
    _cli("bench", suite, "--out", tmp_path / "bench", "--cache", cache, "--n-boot", "0", "--workers", "0", "--quiet",
         "--runtime", "onnx")
    (cell,) = (tmp_path / "bench" / "cells").glob("*/*/*")
    _assert_onnx_record(_config(cell))
    with pytest.raises(HistovlError, match="computed with --runtime onnx"):  # a leaderboard never mixes runtimes
        bench(suite, tmp_path / "bench", cache=cache, n_boot=0, workers=0, progress=False)
    bench(suite, tmp_path / "bench", cache=cache, n_boot=0, workers=0, progress=False, runtime="onnx")  # resumes
    with pytest.raises(HistovlError, match="computed with --precision auto"):  # nor fp32 and autocast cells
        bench(suite, tmp_path / "bench", cache=cache, n_boot=0, workers=0, progress=False, runtime="onnx", precision="fp32")


def test_commands_without_a_runtime_refuse_it_with_their_reason(tmp_path: Path) -> None:
    from histovl import cmm_eval
    from histovl.serve import ServeConfig, serve

    with pytest.raises(ValueError, match="patch tokens") as err:
        cmm_eval(tmp_path / "no-head", tmp_path / "data.csv", runtime="onnx")
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="one search query at a time"):
        serve([tmp_path], ServeConfig(), runtime="onnx-int8")


def test_the_cli_offers_runtime_exactly_where_the_library_takes_it() -> None:
    """Each command's CLI shows --runtime iff its library function accepts a non-torch runtime."""
    import histovl
    from histovl.cli.app import API_FUNCTIONS, COMMANDS, command_function

    takes = {"stainalign eval"}  # takes `options` only and applies its runtime
    for words, target in COMMANDS.items():
        offered = "runtime" in inspect.signature(command_function(target)).parameters
        fn = getattr(histovl, API_FUNCTIONS[words])
        config = inspect.signature(fn).parameters.get("config")
        config_type = _config_type(config.annotation) if config is not None else None
        accepts = words in takes or bool(config_type is not None and getattr(config_type, "TAKES_RUNTIME", False))
        assert offered == accepts, f"histovl {words}: --runtime offered={offered}, library takes it={accepts}"


def _config_type(annotation: Any) -> Any:
    import histovl

    name = str(annotation).split("|")[0].strip()
    return getattr(histovl, name, None) or _from_modules(name)


def _from_modules(name: str) -> Any:
    import importlib

    for module in ("histovl.heads.cmm_run", "histovl.stainalign", "histovl.retrieval.query", "histovl.serve",
                   "histovl.train.finetune", "histovl.slides", "histovl.bench", "histovl.embed.run"):
        found = getattr(importlib.import_module(module), name, None)
        if found is not None:
            return found
    return None
