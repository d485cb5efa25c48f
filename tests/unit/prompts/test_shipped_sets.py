"""Every shipped prompt set parses, and its labels are the ones the data sets use."""

from __future__ import annotations

import pytest

from histovl.prompts import list_prompt_sets, load_prompt_set

EXPECTED_LABELS = {
    "lung-he-v1": ["lung_aca", "lung_n", "lung_scc"],
    "ki67-ihc-v1": ["positive", "negative"],
    "crc100k-v1": ["ADI", "BACK", "DEB", "LYM", "MUC", "MUS", "NORM", "STR", "TUM"],
    "breakhis-v1": ["benign", "malignant"],
    "osteosarcoma-v1": ["non_tumor", "viable_tumor", "necrotic_tumor"],
    "wsss4luad-v1": ["tumor", "normal"],
    "bcss-wsss-v1": ["tumor", "stroma", "lymphocyte", "necrosis"],
    "luad-histoseg-v1": ["tumor", "stroma", "lymphocyte", "necrosis"],
    "pannuke-v1": ["neoplastic", "inflammatory", "connective", "dead", "epithelial"],
    "mihic-tissue-v1": ["tumor", "alveoli", "stroma", "necrosis", "immune_cells", "background", "other"],
    "mihic-biomarker-v1": [
        "CD3", "CD20", "CD34", "CD38", "CD68", "CDK4", "Cyclin-D1", "D2-40", "FAP", "Ki67", "P53", "SMA",
    ],
}
MULTILABEL_SETS = {"wsss4luad-v1", "bcss-wsss-v1", "luad-histoseg-v1", "pannuke-v1", "mihic-tissue-v1"}
IHC_SETS = {"ki67-ihc-v1", "mihic-tissue-v1", "mihic-biomarker-v1"}


def test_the_shipped_sets_are_exactly_these() -> None:
    assert set(list_prompt_sets()) == set(EXPECTED_LABELS)


@pytest.mark.parametrize("name", sorted(EXPECTED_LABELS))
def test_shipped_set(name: str) -> None:
    ps = load_prompt_set(name)
    assert ps.name == name and ps.version == "1" and ps.description
    assert ps.class_names == EXPECTED_LABELS[name]
    assert len(ps.templates) >= 4
    prompts = ps.all_prompts()
    assert len(prompts) == len(set(prompts)), "duplicate prompts"
    for label in ps.class_names:
        assert len(ps.classes[label]) >= 2, f"{label}: give synonyms"
    if name in MULTILABEL_SETS or name == "mihic-biomarker-v1":
        assert ps.negative
    text = " ".join(ps.templates).lower()
    if name in IHC_SETS:
        assert "h&e" not in text and ("ihc" in text or "immuno" in text)
    else:
        assert "h&e" in text or "hematoxylin and eosin" in text
