"""Captions from labels: tissue type x stain/biomarker templates with several paraphrases.

A manifest with a `caption` column is used as is; labelled data without one gets captions from a
caption-template file (``caption_templates.yaml`` ships with histovl), as HIS2LIP's caption
workflow does. Each label maps to a tissue key and a stain key; those keys are also the metadata
ids the `his2lip` loss compares.

Example:
    >>> templates = load_caption_templates()
    >>> len(templates.captions_for("lung_aca")) > 10
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from itertools import product
from pathlib import Path

import numpy as np
import yaml
from pydantic import BaseModel, Field, model_validator

from histovl.errors import UnknownNameError, did_you_mean

DEFAULT_CAPTION_TEMPLATES = "caption_templates.yaml"


class LabelKeys(BaseModel):
    """Which tissue phrases and stain phrases describe one label."""

    tissue: str
    stain: str


class CaptionTemplates(BaseModel):
    """A caption-template file: phrases per tissue and stain, label mapping, templates."""

    name: str
    stains: dict[str, list[str]]
    tissues: dict[str, list[str]]
    labels: dict[str, LabelKeys]
    templates: list[str] = Field(min_length=1)

    @model_validator(mode="after")
    def _check_keys(self) -> CaptionTemplates:
        for label, keys in self.labels.items():
            if keys.tissue not in self.tissues:
                raise ValueError(f"label {label!r}: tissue {keys.tissue!r} is not under `tissues`")
            if keys.stain not in self.stains:
                raise ValueError(f"label {label!r}: stain {keys.stain!r} is not under `stains`")
        for t in self.templates:
            if "{tissue}" not in t:
                raise ValueError(f"caption template {t!r} must contain {{tissue}}")
        return self

    def _keys(self, label: str) -> LabelKeys:
        if label not in self.labels:
            raise UnknownNameError(
                f"label {label!r} has no caption templates in {self.name!r}.{did_you_mean(label, self.labels)} "
                "Add it under `labels`, or give the manifest a `caption` column."
            )
        return self.labels[label]

    def captions_for(self, label: str) -> list[str]:
        """Every caption for `label` (template x tissue phrase x stain phrase), deduplicated."""
        keys = self._keys(label)
        out: dict[str, None] = {}
        for template, tissue, stain in product(self.templates, self.tissues[keys.tissue], self.stains[keys.stain]):
            text = template.format(tissue=tissue, stain=stain)
            out[text[0].upper() + text[1:]] = None
        return list(out)

    def metadata_ids(self, labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Integer tissue ids and stain ids per label (for the his2lip loss)."""
        tissue_index = {k: i for i, k in enumerate(self.tissues)}
        stain_index = {k: i for i, k in enumerate(self.stains)}
        keys = [self._keys(lab) for lab in labels]
        return (
            np.array([tissue_index[k.tissue] for k in keys], dtype=np.int64),
            np.array([stain_index[k.stain] for k in keys], dtype=np.int64),
        )


def load_caption_templates(path: str | Path | None = None) -> CaptionTemplates:
    """The shipped caption templates, or a user's YAML file of the same shape."""
    if path is None:
        text = resources.files("histovl.train").joinpath(DEFAULT_CAPTION_TEMPLATES).read_text(encoding="utf-8")
    else:
        text = Path(path).read_text(encoding="utf-8")
    return CaptionTemplates.model_validate(yaml.safe_load(text))


def sample_captions(templates: CaptionTemplates, labels: Sequence[str], seed: int) -> list[str]:
    """One caption per item, drawn reproducibly from its label's paraphrases (new draw per seed)."""
    rng = np.random.default_rng(seed)
    pools = {lab: templates.captions_for(lab) for lab in set(labels)}
    return [pools[lab][int(rng.integers(len(pools[lab])))] for lab in labels]
