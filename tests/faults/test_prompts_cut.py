"""Prompts longer than the text tower's context, and prompt sets too large to copy into run.json
(docs/reliability.md, "long prompt", "huge prompt file").

* a prompt file whose descriptions run past 77 tokens: one warning per run naming how many
  prompts were cut and the context length, the same count in run.json (``prompts_cut``), also on
  a fully cached re-run; a run without long prompts records ``prompts_cut: null``;
* a prompt set of several MB (a library call, past the CLI's 1 MiB file limit): run.json and
  report.html hold a capped copy and the full set's sha256, not the set;
* token counts against the tokenizers themselves (open_clip's CLIP BPE, a transformers CLIP
  tokenizer, CONCH's).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

from histovl._prompt_cuts import PromptCutWarning, collecting, cuts_record
from tests.faults.conftest import FaultLog, run_main

LONG = " ".join(["pink eosinophilic stroma with scattered lymphocytes"] * 30)  # ~180 CLIP tokens


def _zeroshot(fx: dict[str, Path], prompts: Path, out: Path, cache: Path) -> list[str]:
    return ["zeroshot", "-m", str(fx["model"]), "-d", str(fx["manifest"]), "-p", str(prompts), "-o", str(out),
            "--cache", str(cache), "--n-boot", "0", "--workers", "0", "--quiet"]


def _cut_warnings(record: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, PromptCutWarning)]


def test_long_prompts_warn_once_per_run_and_are_counted_in_run_json(fx: dict[str, Path], tmp_path: Path,
                                                                    faults: FaultLog) -> None:
    prompts = tmp_path / "long.yaml"  # two classes get a long description: 2 x 2 templates = 4 prompts cut
    prompts.write_text(fx["prompts"].read_text().replace("[green tissue]", f"[green tissue, {LONG}]")
                       .replace("[blue tissue, bluish sheets]", f"[blue tissue, {LONG} sheets]"))
    faults.inject("prompts: longer than the context")
    for attempt in ("cold", "cached"):
        out = tmp_path / attempt
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            assert run_main(_zeroshot(fx, prompts, out, tmp_path / "cache")) == 0
        messages = _cut_warnings(seen)
        assert len(messages) == 1, (attempt, messages)
        assert "4 prompt(s)" in messages[0] and "77 tokens" in messages[0], messages[0]
        cut = json.loads((out / "run.json").read_text())["prompts_cut"]
        assert cut["n_prompts_cut"] == 4, cut
        (model,) = cut["models"].values()
        assert model["context_length"] == 77 and model["longest_tokens"] > 150
        assert all(len(e) <= 81 for e in model["examples"])
    with warnings.catch_warnings(record=True) as seen:  # short prompts: nothing cut, nothing said
        warnings.simplefilter("always")
        assert run_main(_zeroshot(fx, fx["prompts"], tmp_path / "short", tmp_path / "cache")) == 0
    assert _cut_warnings(seen) == []
    assert json.loads((tmp_path / "short" / "run.json").read_text())["prompts_cut"] is None


def test_a_prompt_set_of_megabytes_is_capped_in_run_json_and_report_with_its_hash(fx: dict[str, Path], tmp_path: Path,
                                                                                  faults: FaultLog) -> None:
    from histovl.prompts import PromptSet
    from histovl.zeroshot import zeroshot

    base = PromptSet.model_validate({"name": "huge", "version": 1, "templates": ["an image of {}."], "classes": {
        "lung_aca": ["red tissue"], "lung_n": ["green tissue", "green tissue " * 400_000],  # 5.2 MB
        "lung_scc": [f"blue tissue {i}" for i in range(200)]}})
    faults.inject("prompts: 5 MB prompt set in run.json and report.html")
    with warnings.catch_warnings(), collecting():
        warnings.simplefilter("ignore", PromptCutWarning)
        zeroshot(str(fx["model"]), fx["manifest"], base, tmp_path / "out", cache=tmp_path / "cache", n_boot=0, workers=0)
    run = (tmp_path / "out" / "run.json").read_bytes()
    report = (tmp_path / "out" / "report.html").read_bytes()
    assert len(run) < 300_000 and len(report) < 1_000_000, (len(run), len(report))
    record = json.loads(run)
    full = json.dumps(base.model_dump(mode="json"), sort_keys=True, ensure_ascii=False)
    assert record["prompt_set_sha256"] == hashlib.sha256(full.encode()).hexdigest()
    assert "_capped" in record["prompt_set"] and set(record["prompt_set"]["classes"]) == {"lung_aca", "lung_n", "lung_scc"}
    assert record["prompts_cut"]["n_prompts_cut"] == 1


def test_a_small_prompt_set_is_recorded_whole_with_its_hash() -> None:
    from histovl.reports import build_run_record

    prompt_set = {"name": "p", "classes": {"a": ["x"]}, "templates": ["{}"]}
    with collecting():
        record = build_run_record(command="c", config={}, models=[], prompt_set=prompt_set, seed=0, inputs=[])
    assert record["prompt_set"] == prompt_set and record["prompts_cut"] is None
    assert record["prompt_set_sha256"] == hashlib.sha256(json.dumps(prompt_set, sort_keys=True).encode()).hexdigest()


def test_token_counts_match_the_tokenizers(tmp_path: Path) -> None:
    from transformers import CLIPTokenizer

    from histovl.models._tokens import token_counts
    from tests.helpers.tiny import tiny_encoder, write_clip_tokenizer, write_conch_style_tokenizer

    texts = ["a tile", "an image of lung adenocarcinoma.", LONG, "日本語のテキスト" * 3]
    encoder = tiny_encoder(0)
    counts, context = encoder.text_token_counts(texts)  # type: ignore[misc]
    assert context == 77
    tokens = encoder.tokenizer(texts)
    for text, n, row in zip(texts, counts, tokens, strict=True):
        used = int((row != 0).sum())
        if n <= 77:
            assert used == n or (text.isascii() and used <= n), (text, n, used)  # short ASCII: an upper bound
        else:
            assert used == 77
    assert counts[2] > 150
    hf = CLIPTokenizer.from_pretrained(str(write_clip_tokenizer(tmp_path / "clip")))
    hf_counts, hf_context = token_counts(hf, texts, 77)  # type: ignore[misc]
    assert hf_context == 77 and hf_counts[0] == len(hf("a tile")["input_ids"]) and hf_counts[2] > 150
    from histovl.models._conch import ConchTokenizer

    conch = ConchTokenizer(write_conch_style_tokenizer(tmp_path / "conch.json"), 128)
    conch_counts, conch_context = token_counts(conch, texts, 127)  # type: ignore[misc]
    assert conch_context == 127 and conch_counts[2] > 127
    assert token_counts(object(), texts, 77) is None


def test_cuts_outside_a_run_block_are_recorded_by_the_next_run_record_only() -> None:
    from histovl._prompt_cuts import note_cut

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PromptCutWarning)
        note_cut("m", ["long"], [100], 77)
    first = cuts_record()
    assert first is not None and first["n_prompts_cut"] == 1
    assert cuts_record() is None


def test_the_cli_prints_a_warning_as_one_line() -> None:
    from histovl.cli.guard import _one_line_warning

    assert _one_line_warning(PromptCutWarning("4 prompt(s) ..."), PromptCutWarning, "/x/histovl/embed/a.py", 3) == \
        "warning: 4 prompt(s) ...\n"
    other = _one_line_warning(DeprecationWarning("old"), DeprecationWarning, "/x/lib/y.py", 7)
    assert other == "warning: DeprecationWarning: old (/x/lib/y.py:7)\n"
