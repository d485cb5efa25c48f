"""Warm and cold zero-shot runs end to end, `histovl --help`, and CLIP_benchmark on the same job.

Every figure is the wall time of a whole command in a fresh process (imports, model load, data,
encoding, metrics with CIs, outputs), measured in one run and interleaved per repeat so load
drift on a shared machine hits every side alike (docs/performance.md):

  cold       `histovl zeroshot` with an empty cache (model loaded, images and prompts encoded)
  cold_plain the same with HISTOVL_PLAIN_IMPORTS=1 (plain imports of torchvision and open_clip,
             as before histovl._lean_imports; with --plain-imports-too)
  warm       the same command again: every image and prompt embedding is cached, so the model
             is never loaded and torch is never imported (target <= 1.5 s)
  edited     warm, but with one description of the prompt set changed: only that
             description's prompts are encoded (the model loads for them)
  help       `histovl --help` (target < 0.5 s)
  clip_bench CLIP_benchmark 1.6 (`clip_benchmark.metrics.zeroshot_classification.evaluate`,
             the library its CLI calls) on the same images, weights, prompts, batch size and
             decode workers, amp off (bf16 autocast is ~10x slower on these CPUs); its top-k
             `accuracy` helper is replaced by the same computation with ``.item()``, because
             1.6.2's raises under NumPy 2 (float() of a 1-element array)

  RATIO warm speed-up       = cold ÷ warm
  RATIO cold vs CLIP_bench  = CLIP_benchmark ÷ histovl cold (target >= 1.3)

Both report top-1 accuracy; they must agree to the last digit. The model is an open_clip
architecture with seeded random weights saved as safetensors (no download); the data is 120
LC25000 lung tiles (40 per class) from ../shared/data when present, else seeded synthetic
tiles. CPU seconds (user + sys of the child) are printed beside each wall time: on a loaded
machine they say how much of the wall time was the command's own work.

Usage:
    python benchmarks/bench_warm.py [--n 120] [--arch ViT-B-32] [--repeats 3] [--no-clip-benchmark]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "lc25000-lung"
PROMPTS = "lung-he-v1"
CLASSES = ("lung_aca", "lung_n", "lung_scc")

CLIP_BENCHMARK_JOB = r"""
import json, sys
import open_clip, pandas as pd, torch
from PIL import Image
from safetensors.torch import load_file
from clip_benchmark.metrics import zeroshot_classification

def _accuracy(output, target, topk=(1,)):  # CLIP_benchmark 1.6.2's, with .item() (NumPy 2 refuses float() of a 1-element array)
    pred = output.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    return [correct[:k].reshape(-1).float().sum().item() / len(target) for k in topk]

zeroshot_classification.accuracy = _accuracy

arch, weights, manifest, prompts_json, workers, batch = sys.argv[1:7]
torch.manual_seed(0)
model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=None)
model.load_state_dict(load_file(weights))
model.eval()
tokenizer = open_clip.get_tokenizer(arch)
frame = pd.read_csv(manifest)
prompts = json.loads(open(prompts_json).read())
classnames = list(prompts)

class Tiles(torch.utils.data.Dataset):
    classes = classnames
    def __len__(self):
        return len(frame)
    def __getitem__(self, i):
        row = frame.iloc[i]
        return preprocess(Image.open(row["path"]).convert("RGB")), classnames.index(row["label"])

loader = torch.utils.data.DataLoader(Tiles(), batch_size=int(batch), num_workers=int(workers))
metrics = zeroshot_classification.evaluate(model, loader, tokenizer, classnames, prompts, "cpu", amp=False)
print("CLIPBENCH " + json.dumps({"acc1": metrics["acc1"]}))
"""


def _manifest(work: Path, n: int) -> tuple[Path, str]:
    """120 tiles (40 per class): LC25000 when present, else seeded synthetic tiles."""
    rows = ["path,label"]
    per = n // len(CLASSES)
    if SHARED.is_dir():
        for c in CLASSES:
            rows += [f"{p},{c}" for p in sorted((SHARED / c).glob("*.jpeg"))[:per]]
        source = f"LC25000 lung ({SHARED})"
    else:
        import numpy as np
        from PIL import Image

        rng = np.random.default_rng(0)
        for ci, c in enumerate(CLASSES):
            (work / "tiles" / c).mkdir(parents=True, exist_ok=True)
            for i in range(per):
                base = np.zeros((224, 224, 3), np.int16)
                base[..., ci] = 150
                img = np.clip(base + rng.integers(0, 100, base.shape), 0, 255).astype(np.uint8)
                path = work / "tiles" / c / f"{c}_{i}.png"
                Image.fromarray(img).save(path)
                rows.append(f"{path},{c}")
        source = "synthetic tiles (../shared/data not found)"
    target = work / "manifest.csv"
    target.write_text("\n".join(rows) + "\n")
    return target, source


def _weights(work: Path, arch: str) -> Path:
    import open_clip
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = open_clip.create_model(arch, pretrained=None)
    path = work / f"{arch}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def _prompt_files(work: Path) -> tuple[Path, Path, Path]:
    """The shipped prompt set as YAML, a copy with one description edited, and its prompts as
    JSON for CLIP_benchmark (class -> every description × template, histovl's order)."""
    import yaml

    from histovl.prompts import load_prompt_set

    ps = load_prompt_set(PROMPTS)
    data = ps.model_dump(mode="json")
    original = work / "prompts.yaml"
    original.write_text(yaml.safe_dump(data, sort_keys=False))
    first = next(iter(data["classes"]))
    data["classes"][first][0] = data["classes"][first][0] + " (edited)"
    edited = work / "prompts-edited.yaml"
    edited.write_text(yaml.safe_dump(data, sort_keys=False))
    texts = {c: [t.replace("{}", d) for d in ps.classes[c] for t in ps.templates] for c in ps.classes}
    as_json = work / "prompts.json"
    as_json.write_text(json.dumps(texts))
    return original, edited, as_json


def _timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Wall and CPU seconds (user + sys) of a child process, and its output."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, done.stdout


def _zeroshot_cmd(model: str, manifest: Path, prompts: Path, out: Path, cache: Path) -> list[str]:
    return [sys.executable, "-m", "histovl.cli.app", "zeroshot", "--model", model, "--data", str(manifest),
            "--prompts", str(prompts), "--out", str(out), "--cache", str(cache), "--allow-absolute-paths", "--quiet"]


def _accuracy(out: Path) -> float:
    return float(json.loads((out / "metrics.json").read_text())["accuracy"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=120, help="images (balanced over the three classes)")
    ap.add_argument("--arch", default="ViT-B-32")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-clip-benchmark", action="store_true", help="skip the CLIP_benchmark reference")
    ap.add_argument("--plain-imports-too", action="store_true",
                    help="also time the cold run with HISTOVL_PLAIN_IMPORTS=1 (the lean CLI imports' saving)")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="histovl-bench-warm-"))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    manifest, source = _manifest(work, args.n)
    weights = _weights(work, args.arch)
    prompts, edited, prompts_json = _prompt_files(work)
    model = f"open_clip:{args.arch}:{weights}"
    have_cb = not args.no_clip_benchmark and importlib.util.find_spec("clip_benchmark") is not None
    from histovl.embed.engine import default_num_workers

    workers = default_num_workers(args.n, 64)
    print(f"data: {args.n} tiles, {source}; model {args.arch} (random weights, safetensors); prompts {PROMPTS}")
    print(f"cores={os.cpu_count()} decode workers={workers} batch=64; load average {os.getloadavg()[0]:.1f}")
    if not have_cb:
        print("CLIP_benchmark: not installed (pip install clip-benchmark, the 'bench' extra): reference skipped")

    keys = ("cold", "cold_plain", "warm", "edited", "help", "clip_bench")
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in keys}
    accs: dict[str, float] = {}
    for r in range(args.repeats):
        cache, out = work / f"cache{r}", work / f"out{r}"
        wall, cpu, _ = _timed(_zeroshot_cmd(model, manifest, prompts, out / "cold", cache), env)
        times["cold"].append((wall, cpu))
        accs["histovl"] = _accuracy(out / "cold")
        wall, cpu, _ = _timed(_zeroshot_cmd(model, manifest, prompts, out / "warm", cache), env)
        times["warm"].append((wall, cpu))
        if (out / "warm" / "predictions.csv").read_bytes() != (out / "cold" / "predictions.csv").read_bytes():
            raise RuntimeError("the warm run's predictions differ from the cold run's")
        times["edited"].append(_timed(_zeroshot_cmd(model, manifest, edited, out / "edited", cache), env)[:2])
        times["help"].append(_timed([sys.executable, "-m", "histovl.cli.app", "--help"], env)[:2])
        if args.plain_imports_too:
            plain_env = {**env, "HISTOVL_PLAIN_IMPORTS": "1"}
            times["cold_plain"].append(_timed(_zeroshot_cmd(model, manifest, prompts, out / "cold-plain", work / f"plain{r}"),
                                              plain_env)[:2])
            if (out / "cold-plain" / "predictions.csv").read_bytes() != (out / "cold" / "predictions.csv").read_bytes():
                raise RuntimeError("the plain-imports run's predictions differ from the cold run's")
            shutil.rmtree(work / f"plain{r}")
        if have_cb:
            job = [sys.executable, "-c", CLIP_BENCHMARK_JOB, args.arch, str(weights), str(manifest), str(prompts_json),
                   str(workers), "64"]
            wall, cpu, stdout = _timed(job, env)
            times["clip_bench"].append((wall, cpu))
            accs["clip_benchmark"] = json.loads(stdout.split("CLIPBENCH ", 1)[1])["acc1"]
        print(f"repeat {r + 1}: " + ", ".join(f"{k} {v[-1][0]:.2f} s" for k, v in times.items() if v))
        shutil.rmtree(cache)

    def med(key: str, i: int = 0) -> float:
        return statistics.median(t[i] for t in times[key])

    for key in keys:
        if times[key]:
            print(f"{key:<10} wall {med(key):7.2f} s   cpu {med(key, 1):7.2f} s   (median of {len(times[key])})")
    warm_ratio = statistics.median(c[0] / w[0] for c, w in zip(times["cold"], times["warm"], strict=True))
    print(f"histovl accuracy {accs['histovl']:.4f}" + (f"; CLIP_benchmark acc1 {accs['clip_benchmark']:.4f}" if have_cb else ""))
    print(f"RATIO warm speed-up = {warm_ratio:.1f}x  (cold ÷ warm; warm wall {med('warm'):.2f} s, target <= 1.5 s)")
    print(f"histovl --help = {med('help'):.2f} s  (target < 0.5 s)")
    if times["cold_plain"]:
        lean = [p[0] / c[0] for p, c in zip(times["cold_plain"], times["cold"], strict=True)]
        print(f"RATIO lean imports = {statistics.median(lean):.2f}x  (cold with HISTOVL_PLAIN_IMPORTS=1 ÷ cold)")
    if have_cb:
        ratios = [b[0] / c[0] for b, c in zip(times["clip_bench"], times["cold"], strict=True)]
        same = "same accuracy" if round(accs["clip_benchmark"], 12) == round(accs["histovl"], 12) else "ACCURACY DIFFERS"
        print(f"RATIO cold vs CLIP_bench = {statistics.median(ratios):.2f}x  (CLIP_benchmark ÷ histovl cold; target >= 1.3; {same})")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
