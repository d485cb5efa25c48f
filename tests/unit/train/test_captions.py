"""Caption templates: every label gets several paraphrases; bad files fail clearly."""

from __future__ import annotations

from pathlib import Path

import pytest

from histovl.errors import UnknownNameError
from histovl.train.captions import load_caption_templates, sample_captions


def test_shipped_templates_cover_tissue_by_stain() -> None:
    t = load_caption_templates()
    for label, keys in t.labels.items():
        caps = t.captions_for(label)
        assert len(caps) == len(set(caps)) >= 10, label
        assert all(c[0].isupper() or c[0].isdigit() or not c[0].isalpha() for c in caps)
        # every tissue phrase appears in some caption of the label
        for phrase in t.tissues[keys.tissue]:
            assert any(phrase in c for c in caps)


def test_metadata_ids_share_tissue_and_stain() -> None:
    t = load_caption_templates()
    tissue, stain = t.metadata_ids(["lung_aca", "lung_n", "lung_aca", "ki67_positive"])
    assert tissue[0] == tissue[2] != tissue[1]
    assert stain[0] == stain[1] == stain[2] != stain[3]


def test_sampling_is_reproducible_and_varies_with_seed() -> None:
    t = load_caption_templates()
    labels = ["lung_n"] * 50
    assert sample_captions(t, labels, 3) == sample_captions(t, labels, 3)
    assert sample_captions(t, labels, 3) != sample_captions(t, labels, 4)
    assert all(c in t.captions_for("lung_n") for c in sample_captions(t, labels, 3))


def test_unknown_label_and_bad_file(tmp_path: Path) -> None:
    t = load_caption_templates()
    with pytest.raises(UnknownNameError, match="lung_aca"):
        t.captions_for("lung_acaa")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nstains: {he: [H&E]}\ntissues: {a: [A]}\nlabels: {a: {tissue: b, stain: he}}\ntemplates: ['{tissue}']\n")
    with pytest.raises(ValueError, match="tissue 'b'"):
        load_caption_templates(bad)
