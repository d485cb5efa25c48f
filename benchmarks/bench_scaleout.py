"""Embedding throughput: the local engine vs the Ray engine on the same images, same model.

Measured in one run (docs/performance.md: report ratios, not absolute times):

  ray ratio (cold) = Ray images/s including `ray.init` ÷ local images/s
  ray ratio (warm) = Ray images/s with Ray already running ÷ local images/s

Neither run uses a cache, so both encode every image. Both engines must agree (max |diff| is
printed; the test suite holds it to 1e-5). On one small machine Ray cannot win: the model forward
is already near the CPU's arithmetic limit, and Ray adds its start-up (raylet, GCS, workers),
pickling the model into the object store for each actor, and copying every decoded batch through
the object store between the decode tasks and the encode actor. Its value is scale-out (many
nodes, GPU actors), which this script cannot show on 2 cores.

Usage:
    python benchmarks/bench_scaleout.py [--n 128] [--arch ViT-B-32|tiny] [--num-cpus 2]
        [--data ../shared/data/lc25000-lung]   # synthetic images when the folder is absent
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
from PIL import Image
from safetensors.torch import save_file

from histovl.embed import encode_images
from histovl.embed.ray_engine import encode_images_ray
from histovl.models import load_model
from histovl.models.encoder import Encoder


def _paths(data: Path, n: int, tmp: Path) -> tuple[list[Path], str]:
    if data.is_dir():
        classes = sorted(p for p in data.iterdir() if p.is_dir())
        per = -(-n // len(classes))
        paths = [p for c in classes for p in sorted(c.glob("*.jpeg"))[:per]][:n]
        return paths, f"LC25000 lung ({data})"
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        p = tmp / f"synthetic_{i}.png"
        Image.fromarray(rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)).save(p)
        out.append(p)
    return out, "synthetic 224 px noise"


def _encoder(arch: str, tmp: Path) -> Encoder:
    if arch == "tiny":
        import sys

        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from tests.helpers.tiny import tiny_encoder

        return tiny_encoder(0)
    torch.manual_seed(0)
    model = open_clip.create_model(arch, pretrained=None)
    weights = tmp / f"{arch}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    return load_model(f"open_clip:{arch}:{weights}")


def _timed(fn: object) -> tuple[float, np.ndarray]:
    t0 = time.perf_counter()
    emb = fn()  # type: ignore[operator]
    return time.perf_counter() - t0, emb


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/lc25000-lung")
    ap.add_argument("--n", type=int, default=128, help="images")
    ap.add_argument("--arch", default="ViT-B-32", help="open_clip architecture (random weights) or `tiny`")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--num-cpus", type=int, default=2, help="CPUs given to the local Ray instance")
    ap.add_argument("--repeats", type=int, default=2, help="warm runs of each engine (median reported)")
    args = ap.parse_args()

    import ray

    tmp = Path(tempfile.mkdtemp(prefix="histovl-bench-scaleout-"))
    paths, source = _paths(args.data, args.n, tmp)
    enc = _encoder(args.arch, tmp)
    n = len(paths)
    print(f"images={n} from {source}; model={args.arch} (random weights); batch={args.batch_size}; "
          f"torch threads={torch.get_num_threads()}; Ray CPUs={args.num_cpus}")

    def local() -> np.ndarray:
        return encode_images(enc, paths, batch_size=args.batch_size, progress=False).embeddings

    def on_ray() -> np.ndarray:
        return encode_images_ray(enc, paths, batch_size=args.batch_size, num_cpus=args.num_cpus).embeddings

    local_times, ray_times = [], []
    t_local, emb_local = _timed(local)  # warm-up (page cache, MKL) not counted
    t0 = time.perf_counter()
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    t_init = time.perf_counter() - t0
    t_cold, emb_ray = _timed(on_ray)
    for _ in range(args.repeats):
        local_times.append(_timed(local)[0])
        ray_times.append(_timed(on_ray)[0])
    ray.shutdown()

    diff = float(np.abs(emb_local - emb_ray).max())
    loc, warm = statistics.median(local_times), statistics.median(ray_times)
    cold = t_init + t_cold
    print(f"local engine        : {n / loc:7.2f} img/s  ({loc:.1f} s, median of {len(local_times)})")
    print(f"ray engine, warm    : {n / warm:7.2f} img/s  ({warm:.1f} s, median of {len(ray_times)}; Ray already up)")
    print(f"ray engine, cold    : {n / cold:7.2f} img/s  ({cold:.1f} s = ray.init {t_init:.1f} s + first run {t_cold:.1f} s)")
    print(f"ratio ray/local     : warm {loc / warm:.2f}x, cold {loc / cold:.2f}x")
    print(f"Ray time beyond the local run: {warm - loc:.1f} s (actor start-up + model pickle + object-store copies "
          "+ a 1-thread encoder actor; run two --n values to split fixed and per-image cost)")
    print(f"max |embedding diff| local vs ray: {diff:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
