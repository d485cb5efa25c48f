from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from open_clip.zero_shot_classifier import build_zero_shot_classifier

from histovl.zeroshot.classifier import build_text_classifier, encode_prompts


@dataclass
class _Prompts:
    name: str
    classes: dict[str, list[str]]
    templates: list[str]
    negative: str | None = None
    extra: dict = field(default_factory=dict)

    def content_hash(self) -> str:
        return repr((self.classes, self.templates))


def test_equals_open_clip_build_zero_shot_classifier(tiny_clip):
    classes = ["lung adenocarcinoma", "benign lung tissue", "squamous cell carcinoma of the lung"]
    templates = ["an H&E image of {}.", "a histopathology image showing {}.", "{}"]
    ps = _Prompts("t", {c: [c] for c in classes}, templates)
    ours = build_text_classifier(tiny_clip, ps, memoise=False)
    ref = build_zero_shot_classifier(tiny_clip.model, tiny_clip.tokenizer, classes, templates)
    np.testing.assert_allclose(ours.weights, ref.T.numpy(), atol=2e-6, rtol=0)


def test_truncated_text_equals_full_context(tiny_clip):
    prompts = ["a", "an H&E image of lung adenocarcinoma with acinar glands and mucin."]
    tokens = tiny_clip.tokenize(prompts)
    full = torch.nn.functional.normalize(tiny_clip.model.encode_text(tokens), dim=-1)
    np.testing.assert_allclose(encode_prompts(tiny_clip, prompts), full.detach().numpy(), atol=1e-5, rtol=0)


def test_max_aggregate_picks_best_description(tiny_clip):
    ps = _Prompts("t", {"a": ["tumour", "carcinoma", "cancer cells"], "b": ["stroma"]}, ["{}"])
    clf = build_text_classifier(tiny_clip, ps, aggregate="max", memoise=False)
    x = torch.nn.functional.normalize(torch.randn(4, 32), dim=-1)
    desc = encode_prompts(tiny_clip, ["tumour", "carcinoma", "cancer cells", "stroma"])
    sims = x.numpy() @ desc.T
    expected = np.stack([sims[:, :3].max(axis=1), sims[:, 3]], axis=1)
    np.testing.assert_allclose(clf.cosine(x), expected, atol=1e-5)


def test_memoised_per_model_and_prompt_set(tiny_clip, monkeypatch):
    ps = _Prompts("t", {"a": ["x"], "b": ["y"]}, ["{}"])
    first = build_text_classifier(tiny_clip, ps)
    calls = []
    monkeypatch.setattr(tiny_clip, "_encode_text", lambda t: calls.append(t) or torch.zeros(len(t), 32))
    assert build_text_classifier(tiny_clip, ps) is first and not calls


def test_probabilities_are_softmax_of_scaled_cosine(tiny_clip):
    ps = _Prompts("t", {"a": ["x"], "b": ["y"], "c": ["z"]}, ["{}"])
    clf = build_text_classifier(tiny_clip, ps, memoise=False)
    x = torch.nn.functional.normalize(torch.randn(5, 32), dim=-1).numpy()
    p = clf.probabilities(x)
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-9)
    np.testing.assert_allclose(p, torch.softmax(torch.tensor(clf.logits(x)).double(), 1).numpy(), atol=1e-9)
