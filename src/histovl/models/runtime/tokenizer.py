"""The text tower's tokeniser, kept in the export folder so prompts are tokenised without the model.

An exported text tower takes token ids; before this module the ids came from the torch encoder,
so a run whose towers were exported and measured by an earlier process still loaded the whole
torch model to tokenise its prompts. At export (or the first time a folder without it is used with
the model loaded) the tokeniser is written beside the towers and described in meta.json
(``tokenizer.text``):

- ``hf``: a transformers tokenizer (histovl-lite's MiniLM, transformers CLIP), saved with
  ``save_pretrained`` into ``<folder>/tokenizer/``; padded to the longest prompt, truncated to the
  context, as both families' ``tokenize`` do;
- ``clip-bpe``: open_clip's own CLIP BPE (`SimpleTokenizer`, shipped with open_clip), rebuilt with
  the context length, then cut to the longest prompt where the tower is causal.

A tokeniser is recorded only after it gave the same ids as the torch tower's on the run's prompts
and on fixed probes (a long one checks truncation); anything else (other tokenisers, a mismatch)
is not recorded, and the run tokenises with the torch model as before.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

TOKENIZER_DIR = "tokenizer"
#: Texts every recorded tokeniser must tokenise exactly as the torch tower (besides the run's prompts).
PROBES = ("an H&E image of lung adenocarcinoma.", "Benign  lung tissue, 40x!", "word " * 200, "ÄÖÜ éè – “quotes”")


@dataclass(frozen=True)
class Tokenizer:
    """Prompts -> the text tower's inputs, without the torch model.

    Attributes:
        raw: the underlying tokenizer (what `histovl.models._tokens.token_counts` counts with).
        context_length: the most tokens the tower reads.
        tokenize: texts -> {input name: int64 [N, L]}.
    """

    raw: Any
    context_length: int
    tokenize: Callable[[Sequence[str]], dict[str, np.ndarray]]


def describe(encoder: Any, cut: bool) -> dict[str, Any] | None:
    """How `encoder`'s tokeniser can be rebuilt without it, or None (not a kind this module knows)."""
    family, tok = encoder.card.family, getattr(encoder, "tokenizer", None)
    context = int(encoder.card.context_length)
    if family in ("histovl_lite", "hf_clip") and callable(getattr(tok, "save_pretrained", None)):
        return {"kind": "hf", "context_length": context, "inputs": ["input_ids", "attention_mask"]}
    if family == "open_clip" and type(tok).__name__ == "SimpleTokenizer" and type(tok).__module__.startswith("open_clip"):
        return {"kind": "clip-bpe", "context_length": int(getattr(tok, "context_length", context)), "cut": bool(cut),
                "inputs": ["tokens"]}
    return None


def save(encoder: Any, record: dict[str, Any], folder: Path) -> None:
    """Write the files `record` needs into `folder` (an ``hf`` tokenizer's files; atomically)."""
    if record["kind"] != "hf":
        return
    target = folder / TOKENIZER_DIR
    tmp = Path(tempfile.mkdtemp(prefix=".tokenizer.", dir=folder))
    try:
        encoder.tokenizer.save_pretrained(str(tmp))
        if target.exists():
            shutil.rmtree(target)
        tmp.replace(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


_LOADED: dict[tuple[str, str], Tokenizer] = {}


def load(folder: Path, record: dict[str, Any]) -> Tokenizer:
    """The tokeniser `record` describes (kept per process: a run after a run does not reload it)."""
    key = (str(folder), repr(sorted(record.items())))
    if key not in _LOADED:
        _LOADED[key] = _build(folder, record)
    return _LOADED[key]


def _build(folder: Path, record: dict[str, Any]) -> Tokenizer:
    context = int(record["context_length"])
    if record["kind"] == "hf":
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(str(folder / TOKENIZER_DIR), local_files_only=True)

        def hf_tokenize(texts: Sequence[str]) -> dict[str, np.ndarray]:
            batch = hf(list(texts), padding="longest", truncation=True, max_length=context, return_tensors="np")
            return {n: np.asarray(batch[n], dtype=np.int64) for n in record["inputs"]}

        return Tokenizer(hf, context, hf_tokenize)
    if record["kind"] == "clip-bpe":
        bpe = _clip_bpe_module().SimpleTokenizer(context_length=context)
        cut = bool(record.get("cut"))

        def bpe_tokenize(texts: Sequence[str]) -> dict[str, np.ndarray]:
            tokens = bpe(list(texts)).numpy().astype(np.int64)
            if cut:  # as `towers._cut_length`: the longest prompt's length (padding id is 0)
                tokens = tokens[:, : max(1, min(int((tokens != 0).sum(axis=1).max()), tokens.shape[1]))]
            return {"tokens": tokens}

        return Tokenizer(bpe, context, bpe_tokenize)
    raise ValueError(f"unknown tokenizer kind {record['kind']!r}")


def _clip_bpe_module() -> Any:
    """open_clip's ``tokenizer`` module, without importing the open_clip package where it is not
    imported yet: the package imports all its model code (~3 s on the development machine, as
    long as torch's own import), the module only ftfy, regex, numpy and torch. Loaded from the
    installed package's file under a private name; any failure imports it the ordinary way."""
    import importlib.util
    import sys

    if "open_clip" not in sys.modules:
        name = "_histovl_open_clip_tokenizer"
        if name in sys.modules:
            return sys.modules[name]
        try:
            package = importlib.util.find_spec("open_clip")  # locates, imports nothing
            assert package is not None and package.origin is not None
            spec = importlib.util.spec_from_file_location(name, Path(package.origin).with_name("tokenizer.py"))
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
            return module
        except Exception:  # noqa: BLE001 - a layout this does not expect: the ordinary import
            sys.modules.pop(name, None)
    from open_clip import tokenizer

    return tokenizer


def same_ids(tokenizer: Tokenizer, reference: Callable[[Sequence[str]], dict[str, np.ndarray]], texts: Sequence[str]) -> bool:
    """Whether `tokenizer` gives `reference`'s ids on `texts` and on `PROBES`, one text at a time and together."""
    batches = [list(texts) + list(PROBES), *[[t] for t in PROBES]]
    for batch in batches:
        mine, theirs = tokenizer.tokenize(batch), reference(batch)
        if set(mine) != set(theirs) or any(not np.array_equal(mine[n], theirs[n]) for n in theirs):
            return False
    return True
