"""`RuntimeEncoder`: the `Encoder` interface with the towers run by ONNX Runtime.

It stands in for a torch encoder (an `Encoder` or a `LazyEncoder`): the same card, preprocessing,
logit scale and prompt cache, a `weights_id` that names the runtime (so the embedding cache never
mixes its embeddings with torch's), and `encode_image` / `encode_text` answered by ONNX Runtime
sessions over towers exported once into the cache folder (`histovl.models.runtime.export`). The
torch model is loaded only to export, to measure the parity gate on the first images and prompts
(`histovl.models.runtime.gate`), and to tokenise prompts where the export folder keeps no
tokeniser (`histovl.models.runtime.tokenizer`): a run on exports an earlier run made and measured
loads no torch model.
"""

from __future__ import annotations

import shutil
import time
from collections import OrderedDict
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from histovl.models._weights_id import files_weights_id
from histovl.models.runtime import export as ex
from histovl.models.runtime import gate
from histovl.models.runtime import tokenizer as tk
from histovl.models.runtime._ort import open_session, versions
from histovl.models.runtime._wrapper import EncoderWrapper
from histovl.models.runtime.towers import ImageTower, has_text_tower, text_tower

#: Lowest cosine (min over the export's first images) of a fused-attention image tower to the
#: torch tower for the fusion to be kept: fp32 arithmetic in another order reaches 0.9999997 on
#: ViT-B-32, a wrong fusion far less.
FUSION_MIN = 0.99999
FUSION_CHECK_N = 4


class RuntimeEncoder(EncoderWrapper):
    """An encoder whose forward passes run in ONNX Runtime (``onnx`` or ``onnx-int8``).

    Attributes:
        base: the torch encoder it was made from (parity reference, tokeniser, exporter input).
        runtime: ``onnx`` or ``onnx-int8``.
        folder: the export folder (meta.json, towers, calibration embeddings).
    """

    device_name = "cpu"

    def __init__(self, base: Any, runtime: str, *, export_root: Path, allow_approximate: bool = False,
                 sink: dict[str, Any] | None = None) -> None:
        self.base = base
        self.runtime = self.label = runtime
        self.allow_approximate = allow_approximate
        self.sink = sink if sink is not None else {}
        self.folder = ex.export_dir(export_root, base.weights_id, runtime)
        self._sessions: dict[str, Any] = {}
        self._tokenizer: Any = None
        self._meta_base = {
            "format": ex.EXPORT_FORMAT, "model": base.card.name, "weights_id": base.weights_id,
            "runtime": runtime, "opset": ex.OPSET, **versions(), "torch": _torch_version(),
        }
        self._meta = ex.read_meta(self.folder)
        self.publish()  # a parity measured by an earlier run is checked (and recorded) now

    # ---- the Encoder interface (card, weights_id, ... : EncoderWrapper) ----------------------------
    def encode_image(self, pixels: Any, normalize: bool = True) -> Any:
        import torch

        pixels = pixels.detach().to("cpu", torch.float32)
        session = self._session("image", pixels)
        if not self._measured("image"):
            self._measure_image(session, pixels[: gate.CALIBRATION_N])
        feats = torch.from_numpy(_run(session, {"pixels": pixels.numpy()}))
        return torch.nn.functional.normalize(feats, dim=-1) if normalize else feats

    def encode_text(self, texts: Sequence[str], normalize: bool = True) -> Any:
        import torch

        texts = list(texts)
        if not has_text_tower(self.card.family):  # this family's prompts stay in torch
            return self.base.encode_text(texts, normalize)
        session = self._session("text", texts)
        if not self._measured("text"):
            self._measure_text(session, texts[: gate.CALIBRATION_TEXTS])
        feats = torch.from_numpy(_run(session, self._tokenize(texts)))
        return torch.nn.functional.normalize(feats, dim=-1) if normalize else feats

    def text_token_counts(self, texts: Sequence[str]) -> tuple[list[int], int] | None:
        """The torch encoder's count (same tokenizer and context), so ONNX runs warn of cut prompts
        too; from the exported tokeniser where there is one (no torch model loaded for it)."""
        tokenizer = self._stored_tokenizer()
        if tokenizer is None:
            return super().text_token_counts(texts)
        from histovl.models._tokens import token_counts

        return token_counts(tokenizer.raw, texts, tokenizer.context_length)

    def __repr__(self) -> str:
        return f"RuntimeEncoder({self.card.name!r}, runtime={self.runtime!r}, {self.folder})"

    # ---- export and sessions --------------------------------------------------------------------------
    def _torch(self) -> Any:
        """The torch encoder (loaded now if the base is lazy)."""
        return self.base.model() if getattr(self.base, "is_lazy_encoder", False) else self.base

    def _session(self, kind: str, example: Any) -> Any:
        if kind not in self._sessions:
            path = self.folder / f"{kind}.onnx"
            if not path.is_file() or kind not in self._meta.get("towers", {}):
                with ex.locked(self.folder):
                    self._meta = ex.read_meta(self.folder)
                    if not path.is_file() or kind not in self._meta.get("towers", {}):
                        self._export(kind, example, path)
            self._sessions[kind] = open_session(path)
        return self._sessions[kind]

    def _export(self, kind: str, example: Any, path: Path) -> None:
        """Export one tower (then quantise it under onnx-int8) and record it in meta.json."""
        if kind == "text":
            self._export_text(list(example), path)
            return
        started = time.perf_counter()
        model = self._torch()
        fp32 = path.with_name("image.fp32.onnx") if self.runtime == "onnx-int8" else path
        export = partial(ex.export_module, ImageTower(model), (example[:2],), ("pixels",), fp32, {"pixels": {0: "n"}})
        exporter = export(fuse_attention=True)
        # the fp32 file is the tower itself under onnx: its check session then serves the runs too
        attention, keep = self._check_fusion(model, fp32, example, final=fp32 == path)
        if not keep:
            exporter = export()
        quant = "none (fp32)"
        if self.runtime == "onnx-int8":
            quant = self._quantize(kind, fp32, path, example)
            fp32.unlink(missing_ok=True)
        entry = {**ex.tower_entry(path.name, exporter, quant, started), "attention": attention}
        self._meta = ex.update_meta(self.folder, self._meta_base, "towers", kind, entry)

    def _check_fusion(self, model: Any, path: Path, example: Any, *, final: bool) -> tuple[str, bool]:
        """How the exported image tower spells attention (meta.json's ``attention``), and whether
        to keep the file: a fused graph is kept only where it gives the torch tower's features on
        the export's first images (cosine >= `FUSION_MIN`); else the caller exports it plainly."""
        import torch

        from histovl.models.runtime import fusion

        nodes = fusion.fused_nodes(path)
        if not nodes:
            return "plain (the export holds no fused attention node: no self-attention the node takes, or its tracing failed)", True
        pixels = example[:FUSION_CHECK_N]
        with torch.inference_mode():
            reference = model._encode_image(pixels).float().numpy()
        try:
            candidate = _run(open_session(path, cached=final), {"pixels": pixels.numpy()})
        except Exception as err:  # noqa: BLE001 - e.g. an ONNX Runtime build without the fused kernel
            return f"plain: the fused graph did not run in ONNX Runtime ({type(err).__name__}: {str(err)[:200]})", False
        stats = gate.tower_parity(reference, candidate)
        if stats["cosine_min"] < FUSION_MIN:
            return f"plain: the fused graph reached cosine min {stats['cosine_min']:.6f} to torch, under {FUSION_MIN}", False
        return f"fused: {nodes} {fusion.DOMAIN}.{fusion.OP} nodes (cosine min {stats['cosine_min']:.6f} to torch on {stats['n']} images)", True

    def _export_text(self, texts: list[str], path: Path) -> None:
        """Export the text tower; under onnx-int8, start from the fp32 tower the ``onnx`` runtime
        already exported where there is one (the dynamo export is the slow one), then keep an int8
        copy only where it stays within `TEXT_INT8_MIN` of fp32 on the run's prompts."""
        import torch

        started = time.perf_counter()
        int8 = self.runtime == "onnx-int8"
        fp32 = path.with_name("text.fp32.onnx") if int8 else path
        extra: dict[str, Any] = {}
        sibling = ex.export_dir(self.folder.parent, self.base.weights_id, "onnx") if int8 else None
        entry = ex.read_meta(sibling).get("towers", {}).get("text") if sibling is not None else None
        tower = text_tower(self._torch())
        assert tower is not None
        if sibling is not None and entry and (sibling / "text.onnx").is_file():
            from histovl._io import atomic_path

            with atomic_path(fp32, suffix=".onnx") as tmp:
                shutil.copyfile(sibling / "text.onnx", tmp)
            exporter, extra = str(entry.get("exporter")), {"copied_from": str(sibling)}
        else:
            tokens = tower.tokenize(texts[:2])
            inputs = tuple(torch.from_numpy(tokens[n]) for n in tower.input_names)
            dynamic = {n: {0: "n", 1: "length"} for n in tower.input_names}
            exporter = ex.export_module(tower.module, inputs, tower.input_names, fp32, dynamic, dynamo_only=True)
        quant = "none (fp32)"
        if int8:
            quant = self._quantize_text(fp32, path, tower.tokenize(texts[: gate.CALIBRATION_TEXTS]))
        entry = {**ex.tower_entry(path.name, exporter, quant, started), **extra}
        self._meta = ex.update_meta(self.folder, self._meta_base, "towers", "text", entry)

    def _quantize_text(self, fp32: Path, target: Path, tokens: dict[str, np.ndarray]) -> str:
        """Dynamic int8 text tower if its embeddings of `tokens` stay within `TEXT_INT8_MIN` of the
        fp32 tower's, else the fp32 tower (int8 MiniLM, for one, fell under the gate)."""
        candidate = target.with_name("text.int8.onnx")
        how = ex.quantize_dynamic_int8(fp32, candidate)
        reference = _run(open_session(fp32, cached=False), tokens)
        stats = gate.tower_parity(reference, _run(open_session(candidate, cached=False), tokens))
        check = f"cosine min {stats['cosine_min']:.6f} to the fp32 tower on {stats['n']} prompts of the run"
        keep = stats["cosine_min"] >= ex.TEXT_INT8_MIN
        (candidate if keep else fp32).replace(target)
        (fp32 if keep else candidate).unlink(missing_ok=True)
        if keep:
            return f"{how}; {check} >= {ex.TEXT_INT8_MIN}"
        return f"none (fp32: int8 reached {check}, under {ex.TEXT_INT8_MIN})"

    def _quantize(self, kind: str, fp32: Path, target: Path, example: Any) -> str:
        """Dynamic int8 for transformer towers; static int8 calibrated on the run's first images
        for convolutional ones (dynamic int8 convolutions are slower than fp32 on CPUs)."""
        if kind == "image" and ex.conv_count(fp32) > 2:
            calibration = np.ascontiguousarray(example[: gate.CALIBRATION_N].numpy(), dtype=np.float32)
            return ex.quantize_static_int8(fp32, target, "pixels", calibration)
        return ex.quantize_dynamic_int8(fp32, target)

    # ---- tokenising prompts ---------------------------------------------------------------------------
    def _stored_tokenizer(self) -> tk.Tokenizer | None:
        """The tokeniser kept in the export folder (`histovl.models.runtime.tokenizer`), or None."""
        record = self._meta.get("tokenizer", {}).get("text")
        if not isinstance(record, dict) or not (self.folder / "text.onnx").is_file():
            return None
        try:
            return tk.load(self.folder, record)
        except Exception:  # noqa: BLE001 - a damaged or foreign tokenizer folder: tokenise with torch
            return None

    def _tokenize(self, texts: list[str]) -> dict[str, np.ndarray]:
        """The text tower's inputs: from the stored tokeniser, else from the torch encoder (loaded
        now), whose tokeniser is then stored for later runs where it can be rebuilt exactly."""
        if self._tokenizer is None:
            self._tokenizer = self._stored_tokenizer() or self._store_tokenizer(texts)
        return self._tokenizer.tokenize(texts)

    def _store_tokenizer(self, texts: list[str]) -> Any:
        """The torch tower's tokeniser; recorded in meta.json (files beside the towers) when a
        rebuilt copy gives the same ids on `texts` and the probes."""
        model = self._torch()
        tower = text_tower(model)
        assert tower is not None
        record = tk.describe(model, cut=_cuts(model))
        if record is not None:
            with ex.locked(self.folder):
                tk.save(model, record, self.folder)
                candidate = tk.load(self.folder, record)
                if tk.same_ids(candidate, tower.tokenize, texts):
                    self._meta = ex.update_meta(self.folder, self._meta_base, "tokenizer", "text", record)
        return tower

    # ---- the parity gate ------------------------------------------------------------------------------
    def _measured(self, kind: str) -> bool:
        """Whether the gate was measured on the tower file as it is now (an edited file is re-measured)."""
        record = self._meta.get("parity", {}).get(kind)
        return isinstance(record, dict) and record.get("sha256") == self._sha(kind)

    def _sha(self, kind: str) -> str:
        return files_weights_id([self.folder / f"{kind}.onnx"])

    def _measure_image(self, session: Any, pixels: Any) -> None:
        import torch

        with torch.inference_mode():
            reference = self._torch().encode_image(pixels).float().numpy()
        candidate = _run(session, {"pixels": pixels.numpy()})
        self._record("image", reference, candidate)

    def _measure_text(self, session: Any, texts: list[str]) -> None:
        import torch

        model = self._torch()
        tower = text_tower(model)
        assert tower is not None
        with torch.inference_mode():
            reference = model.encode_text(texts).float().numpy()
        self._record("text", reference, _run(session, tower.tokenize(texts)))

    def _record(self, kind: str, reference: np.ndarray, candidate: np.ndarray) -> None:
        """Store one tower's parity (and, once both towers are measured, the argmax agreement),
        then apply the gate."""
        stats = {**gate.tower_parity(reference, candidate), "sha256": self._sha(kind),
                 "measured_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        arrays = ex.save_calibration(self.folder, kind, reference, candidate)
        self._meta = ex.update_meta(self.folder, self._meta_base, "parity", kind, stats)
        if {"image_torch", "text_torch"} <= set(arrays):
            agreement = gate.argmax_agreement(arrays["image_torch"], arrays["text_torch"], arrays["image_runtime"], arrays["text_runtime"])
            self._meta = ex.update_meta(self.folder, self._meta_base, "parity", "argmax_agreement", agreement)
        self.publish(measured=kind)

    def publish(self, measured: str | None = None) -> dict[str, Any]:
        """The parity record as run.json shows it (into the run's options), after the gate."""
        parity = {k: v for k, v in self._meta.get("parity", {}).items()}
        for kind in ("image", "text"):
            if isinstance(parity.get(kind), dict) and (self.folder / f"{kind}.onnx").is_file() and not self._measured(kind):
                parity.pop(kind)  # the tower file changed since: measured again on first use
        bad = gate.failed_towers(parity, self.runtime)
        record = {
            "runtime": self.runtime, "export": str(self.folder), "threshold": gate.THRESHOLDS[self.runtime],
            "image": parity.get("image"), "argmax_agreement": parity.get("argmax_agreement"),
            "text": parity.get("text") if has_text_tower(self.card.family) else "torch (no exported text tower for this family)",
            "passed": None if not any(isinstance(parity.get(k), dict) for k in ("image", "text")) else not bad,
            "accepted_approximate": bool(bad) and self.allow_approximate,
            "towers": self._meta.get("towers", {}), "measured_in_this_run": measured is not None or None,
        }
        self.sink[self.card.name] = record
        gate.check(parity, model=self.card.name, runtime=self.runtime, allow_approximate=self.allow_approximate,
                   where=str(self.folder / ex.META_FILE))
        return record


#: RuntimeEncoders kept per process, as the torch path keeps its loaded model (`loaded_model`): a
#: later run over the same torch encoder object, with its export files unchanged, gets the same
#: RuntimeEncoder back, so what a run memoises per encoder object (the zero-shot text classifier,
#: `histovl.zeroshot.classifier`) serves the next run under ONNX as it does under torch. Only those
#: over the most recent torch encoder are kept (each holds its model), as `histovl.models.lazy`
#: keeps one model: a sweep over several models still frees each before the next.
_ENCODERS: OrderedDict[tuple[Any, ...], RuntimeEncoder] = OrderedDict()
_MAX_ENCODERS = 4


def runtime_encoder(base: Any, runtime: str, *, export_root: Path, allow_approximate: bool = False,
                    sink: dict[str, Any] | None = None) -> RuntimeEncoder:
    """`RuntimeEncoder(base, runtime, ...)`, reused within the process (see `_ENCODERS`); a reused
    one re-reads meta.json and publishes its parity into this run's `sink` (the gate applied again)."""
    folder = ex.export_dir(export_root, base.weights_id, runtime)
    files = tuple(_stat(folder / f"{kind}.onnx") for kind in ("image", "text"))
    key = (id(base), runtime, str(folder), allow_approximate, files)
    found = _ENCODERS.get(key)
    if found is None or found.base is not base:
        found = RuntimeEncoder(base, runtime, export_root=export_root, allow_approximate=allow_approximate, sink=sink)
        for old in [k for k, enc in _ENCODERS.items() if enc.base is not base]:
            del _ENCODERS[old]
        _ENCODERS[key] = found
        while len(_ENCODERS) > _MAX_ENCODERS:
            _ENCODERS.popitem(last=False)
        return found
    _ENCODERS.move_to_end(key)
    found.sink = sink if sink is not None else {}
    found._meta = ex.read_meta(folder)
    found.publish()
    return found


def _stat(path: Path) -> tuple[int, int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return (stat.st_mtime_ns, stat.st_size, stat.st_ino)


def _torch_version() -> str:
    import torch

    return str(torch.__version__)


def _cuts(model: Any) -> bool:
    """Whether the open_clip text tower is cut to the longest prompt (`towers._open_clip_tower`)."""
    return bool(model.card.family == "open_clip" and model.card.text_causal and model._supports_truncation())


def _run(session: Any, feeds: dict[str, np.ndarray]) -> np.ndarray:
    names = [i.name for i in session.get_inputs()]
    return np.asarray(session.run(None, {n: np.ascontiguousarray(feeds[n]) for n in names})[0], dtype=np.float32)
