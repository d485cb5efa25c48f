"""Damaged inputs through the CLI (docs/reliability.md): truncated and bit-flipped weights,
safetensors named .bin, a pickle named .safetensors, a damaged card.json, truncated slides,
truncated and bit-flipped indexes and manifests, a Latin-1 manifest, a huge image, duplicate keys
and a huge prompt file, a device this machine lacks, and skips that empty a class or everything.

Every fault ends in exit 2 with one line naming the file (or option) and no traceback; after the
file is repaired, a re-run gives exactly the uninterrupted run's outputs (nothing stale was kept).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.faults.conftest import FaultLog, digest, run_main

COMPARED = ["metrics.json", "predictions.csv"]


def _zeroshot(model: Path | str, data: Path, prompts: Path, out: Path, cache: Path, *extra: str) -> list[str]:
    return ["zeroshot", "-m", str(model), "-d", str(data), "-p", str(prompts), "-o", str(out), "--cache", str(cache),
            "--n-boot", "20", "--quiet", "--workers", "0", *extra]


@pytest.fixture(scope="module")
def reference(fx: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("files-ref") / "out"
    assert run_main(_zeroshot(fx["model"], fx["manifest"], fx["prompts"], out, out.parent / "cache")) == 0
    return digest(out, COMPARED)


def _fails_naming(argv: list[str], capsys: pytest.CaptureFixture[str], *names: str) -> str:
    code = run_main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and err.startswith("error: "), err
    for name in names:
        assert name in err, (name, err)
    return err


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


# ---- weights ------------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncated", "header-bit-flip", "empty"])
def test_damaged_weights_name_the_file_and_a_repaired_copy_runs_like_before(
    damage: str, fx: dict[str, Path], reference: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str], faults: FaultLog
) -> None:
    model = tmp_path / "model"
    shutil.copytree(fx["model"], model)
    weights = model / "model.safetensors"
    good = weights.read_bytes()
    if damage == "truncated":
        weights.write_bytes(good[: len(good) // 2])
    elif damage == "empty":
        weights.write_bytes(b"")
    else:
        _flip(weights, 20)  # inside the JSON header
    out, cache = tmp_path / "out", tmp_path / "cache"
    _fails_naming(_zeroshot(model, fx["manifest"], fx["prompts"], out, cache), capsys, str(weights))
    faults.inject(f"weights: {damage}")
    weights.write_bytes(good)
    assert run_main(_zeroshot(model, fx["manifest"], fx["prompts"], out, cache)) == 0
    assert digest(out, COMPARED) == reference


def test_a_bit_flip_in_the_tensors_changes_the_weights_identity_so_no_stale_cache_is_used(
    fx: dict[str, Path], reference: dict[str, str], tmp_path: Path, faults: FaultLog
) -> None:
    model = tmp_path / "model"
    shutil.copytree(fx["model"], model)
    weights = model / "model.safetensors"
    good = weights.read_bytes()
    _flip(weights, len(good) - 7)  # the last tensor's bytes: still a valid file
    out, cache = tmp_path / "out", tmp_path / "cache"
    assert run_main(_zeroshot(model, fx["manifest"], fx["prompts"], out, cache)) == 0
    flipped = json.loads((out / "run.json").read_text())["extra"]["weights_ids"]
    faults.inject("weights: bit flip in tensor data")
    weights.write_bytes(good)
    assert run_main(_zeroshot(model, fx["manifest"], fx["prompts"], out, cache)) == 0
    assert json.loads((out / "run.json").read_text())["extra"]["weights_ids"] != flipped
    assert digest(out, COMPARED) == reference


def test_safetensors_named_bin_is_read_as_tensors_and_a_pickle_named_safetensors_is_refused(
    fx: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], faults: FaultLog
) -> None:
    import torch

    from tests.helpers.tiny import register_tiny_open_clip_arch

    arch = register_tiny_open_clip_arch(tmp_path)
    as_bin = tmp_path / "weights.bin"
    shutil.copyfile(fx["model"] / "model.safetensors", as_bin)
    out = tmp_path / "out"
    assert run_main(_zeroshot(f"open_clip:{arch}:{as_bin}", fx["manifest"], fx["prompts"], out, tmp_path / "c")) == 0
    faults.inject("weights: safetensors named .bin")
    pickle = tmp_path / "weights.safetensors"
    torch.save({"x": torch.zeros(2)}, pickle)
    err = _fails_naming(_zeroshot(f"open_clip:{arch}:{pickle}", fx["manifest"], fx["prompts"], out, tmp_path / "c"), capsys, str(pickle))
    assert "pickle" in err
    faults.inject("weights: pickle named .safetensors")


@pytest.mark.parametrize("card", ["{not json", '{"format_version": 1}', '{"format_version": 1, "card": {"name": "x"}}', ""])
def test_a_damaged_card_json_is_named(card: str, fx: dict[str, Path], tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str], faults: FaultLog) -> None:
    model = tmp_path / "model"
    shutil.copytree(fx["model"], model)
    (model / "card.json").write_text(card)
    _fails_naming(_zeroshot(model, fx["manifest"], fx["prompts"], tmp_path / "o", tmp_path / "c"), capsys, str(model / "card.json"))
    faults.inject("model folder: damaged card.json")


def test_a_device_this_machine_lacks_is_refused_before_loading(fx: dict[str, Path], tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str], faults: FaultLog) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    _fails_naming(_zeroshot(fx["model"], fx["manifest"], fx["prompts"], tmp_path / "o", tmp_path / "c", "--device", "cuda"),
                  capsys, "--device cuda")
    faults.inject("--device cuda without CUDA")


# ---- slides -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["tiff", "png"])
def test_a_truncated_slide_is_named(kind: str, fx: dict[str, Path], tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str], faults: FaultLog) -> None:
    import tifffile

    pixels = np.asarray(Image.open(fx["slide"]).convert("RGB"))
    slide = tmp_path / f"slide.{'tif' if kind == 'tiff' else 'png'}"
    if kind == "tiff":
        tifffile.imwrite(slide, pixels, tile=(64, 64), photometric="rgb")
    else:
        Image.fromarray(pixels).save(slide)
    good = slide.read_bytes()
    slide.write_bytes(good[: len(good) // 3])
    out = tmp_path / "tiles"
    _fails_naming(["slides", "tile", "--slide", str(slide), "-o", str(out), "--size", "64", "--save-tiles"], capsys, str(slide))
    faults.inject(f"slide: truncated {kind}")
    slide.write_bytes(good)
    assert run_main(["slides", "tile", "--slide", str(slide), "-o", str(out), "--size", "64", "--save-tiles"]) == 0


# ---- indexes ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def index(fx: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("index") / "ix"
    assert run_main(["index", "build", "-m", str(fx["model"]), "-d", str(fx["manifest"]), "-o", str(folder),
                     "--cache", str(folder.parent / "c"), "--quiet", "--workers", "0"]) == 0
    return folder


@pytest.mark.parametrize("damage", ["faiss-truncated", "faiss-header-flip", "parquet-empty", "parquet-truncated", "parquet-flip"])
def test_a_damaged_index_is_named(damage: str, index: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str], faults: FaultLog) -> None:
    ix = tmp_path / "ix"
    shutil.copytree(index, ix)
    faiss_file = next(ix.glob("vectors-*.faiss"))
    target = faiss_file if damage.startswith("faiss") else ix / "metadata.parquet"
    data = target.read_bytes()
    if damage.endswith("truncated"):
        target.write_bytes(data[: len(data) // 2])
    elif damage.endswith("empty"):
        target.write_bytes(b"")
    else:
        _flip(target, 2 if damage.startswith("faiss") else len(data) - 6)  # the format's magic / footer length
    query = ["index", "query", "-i", str(ix), "--text", "red tissue", "--k", "2"]
    _fails_naming(query, capsys, str(target))
    faults.inject(f"index: {damage}")
    target.write_bytes(data)
    assert run_main(query) == 0


# ---- manifests, images, prompts ---------------------------------------------------------------


def _copy_data(fx: dict[str, Path], tmp_path: Path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(fx["tiles"], root / "tiles")
    shutil.copyfile(fx["manifest"], root / "manifest.csv")
    return root / "manifest.csv"


@pytest.mark.parametrize("damage", ["latin-1", "truncated", "bit-flip"])
def test_a_damaged_manifest_is_named(damage: str, fx: dict[str, Path], reference: dict[str, str], tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str], faults: FaultLog) -> None:
    manifest = _copy_data(fx, tmp_path)
    good = manifest.read_bytes()
    if damage == "latin-1":
        manifest.write_bytes(good.replace(b"p1\n", "pé\n".encode("latin-1"), 1))
    elif damage == "truncated":
        manifest.write_bytes(good[: good.index(b",", len(good) // 2) + 1])  # cut inside a row
    else:
        at = good.index(b"lung_n_3.png")
        manifest.write_bytes(good[:at] + b"lung_n_3.pnf" + good[at + 12 :])
    out, cache = tmp_path / "out", tmp_path / "cache"
    err = _fails_naming(_zeroshot(fx["model"], manifest, fx["prompts"], out, cache), capsys)
    assert str(manifest) in err or "lung_n_3.pnf" in err, err
    if damage == "latin-1":
        assert "UTF-8" in err and "line" in err
    faults.inject(f"manifest: {damage}")
    manifest.write_bytes(good)
    assert run_main(_zeroshot(fx["model"], manifest, fx["prompts"], out, cache)) == 0
    assert digest(out, COMPARED) == reference


def test_a_huge_image_is_refused_on_open_and_the_limit_is_configurable(fx: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture[str], faults: FaultLog) -> None:
    manifest = _copy_data(fx, tmp_path)
    huge = manifest.parent / "tiles" / "lung_aca" / "lung_aca_0.png"
    Image.new("1", (12000, 12000), 1).save(huge, optimize=True)  # ~20 KB on disk, 144 Mpx (432 MB as RGB)
    err = _fails_naming(_zeroshot(fx["model"], manifest, fx["prompts"], tmp_path / "o", tmp_path / "c"), capsys, str(huge))
    assert "Mpx" in err and "HISTOVL_MAX_PIXELS" in err
    faults.inject("image: 144 Mpx PNG")
    monkeypatch.setenv("HISTOVL_MAX_PIXELS", "1000")
    _fails_naming(_zeroshot(fx["model"], manifest, fx["prompts"], tmp_path / "o", tmp_path / "c"), capsys, "lung_aca")


def test_duplicate_prompt_keys_and_a_huge_prompt_file_are_refused(fx: dict[str, Path], tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str], faults: FaultLog) -> None:
    dup = tmp_path / "dup.yaml"
    dup.write_text(fx["prompts"].read_text().replace("  lung_scc:", "  lung_aca: [copied]\n  lung_scc:"))
    err = _fails_naming(_zeroshot(fx["model"], fx["manifest"], dup, tmp_path / "o", tmp_path / "c"), capsys, str(dup), "lung_aca")
    assert "line 4" in err and "line 6" in err, err
    faults.inject("prompts: duplicate key")
    huge = tmp_path / "huge.yaml"
    huge.write_text(fx["prompts"].read_text().replace("[green tissue]", "[" + ", ".join(["green tissue"] * 150_000) + "]"))
    _fails_naming(_zeroshot(fx["model"], fx["manifest"], huge, tmp_path / "o", tmp_path / "c"), capsys, str(huge), "MiB")
    faults.inject("prompts: 2 MB file")


# ---- skips ----------------------------------------------------------------------------------------


def test_skips_that_empty_a_class_stop_the_run_and_still_write_run_json(fx: dict[str, Path], tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str], faults: FaultLog) -> None:
    manifest = _copy_data(fx, tmp_path)
    for tile in (manifest.parent / "tiles" / "lung_n").iterdir():
        tile.write_bytes(tile.read_bytes()[:40])  # truncated
    out = tmp_path / "out"
    args = _zeroshot(fx["model"], manifest, fx["prompts"], out, tmp_path / "c", "--on-error", "skip")
    _fails_naming(args, capsys, "lung_n", "--allow-missing-classes")
    record = json.loads((out / "run.json").read_text())
    assert len(record["skipped"]) == 8 and record["extra"]["status"] == "failed"
    faults.inject("skips empty a class")
    assert run_main([*args, "--allow-missing-classes"]) == 0
    assert json.loads((out / "metrics.json").read_text())["n_skipped"] == 8


def test_a_run_that_skips_everything_writes_run_json_with_the_reasons(fx: dict[str, Path], tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str], faults: FaultLog) -> None:
    manifest = _copy_data(fx, tmp_path)
    for tile in (manifest.parent / "tiles").rglob("*.png"):
        tile.write_bytes(b"")
    out = tmp_path / "out"
    _fails_naming(_zeroshot(fx["model"], manifest, fx["prompts"], out, tmp_path / "c", "--on-error", "skip",
                            "--allow-missing-classes"), capsys, "no image of 24")
    record = json.loads((out / "run.json").read_text())
    assert len(record["skipped"]) == 24 and all("zero-byte" in s["reason"] for s in record["skipped"])
    faults.inject("every input skipped")
