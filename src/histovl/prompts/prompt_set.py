"""The prompt-set model: class descriptions (synonyms) x templates, validated and hashable.

Prompt sets are data, not code (docs/style.md, "Data, not code"): a YAML file per set, shipped
ones under ``histovl/prompts/sets/``. A set's `content_hash` goes into run records and
text-classifier memo keys, so two runs with the same hash used exactly the same prompt text.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from histovl.errors import HistovlError, UnknownNameError, did_you_mean

PLACEHOLDER = "{}"


class PromptSetError(HistovlError, ValueError):
    """A prompt-set file or mapping is malformed (the message names the key and the problem)."""


class PromptSet(BaseModel):
    """Per-class descriptions and the templates they are slotted into.

    Each prompt is ``template.replace("{}", description)``; a class's text embedding is built
    from all of its (description x template) prompts.

    Attributes:
        name: Versioned identifier, e.g. ``lung-he-v1``.
        classes: Label -> descriptions (synonyms). A single string is accepted and made a list.
            The order of the labels is the order of the classifier's rows.
        templates: Sentences with exactly one ``{}`` each.
        negative: Optional "nothing of interest" prompt for multi-label strategies.
        version, description, citation: Optional provenance.

    Example:
        >>> ps = PromptSet(name="demo", classes={"tumor": "tumour tissue"}, templates=["an image of {}."])
        >>> ps.prompts_for("tumor")
        ['an image of tumour tissue.']
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    classes: dict[str, list[str]]
    templates: list[str]
    negative: str | None = None
    version: str | None = None
    description: str | None = None
    citation: str | None = None

    @field_validator("classes", mode="before")
    @classmethod
    def _descriptions_as_lists(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: [v] if isinstance(v, str) else v for k, v in value.items()}
        return value

    @field_validator("templates", mode="before")
    @classmethod
    def _template_as_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("version", mode="before")
    @classmethod
    def _version_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value

    @field_validator("classes")
    @classmethod
    def _check_classes(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        if not value:
            raise ValueError("needs at least one class (label: [descriptions])")
        for label, descriptions in value.items():
            if not label.strip():
                raise ValueError("a class label is empty")
            if not descriptions:
                raise ValueError(f"class {label!r} has no descriptions; give at least one")
            for d in descriptions:
                if not d.strip():
                    raise ValueError(f"class {label!r} has an empty description")
                if PLACEHOLDER in d:
                    raise ValueError(f"class {label!r} description {d!r} contains '{{}}'; only templates may")
        return value

    @field_validator("templates")
    @classmethod
    def _check_templates(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("needs at least one template, e.g. 'an H&E image of {}.'")
        for t in value:
            rest = t.replace(PLACEHOLDER, "", 1)
            if t.count(PLACEHOLDER) != 1 or "{" in rest or "}" in rest:
                raise ValueError(
                    f"template {t!r} must contain exactly one '{{}}' (where the description goes) "
                    "and no other braces"
                )
        if len(set(value)) != len(value):
            raise ValueError("templates are repeated; each should appear once")
        return value

    @model_validator(mode="after")
    def _check_negative(self) -> PromptSet:
        if self.negative is not None and not self.negative.strip():
            raise ValueError("`negative` is empty; remove it or give a sentence")
        return self

    @property
    def class_names(self) -> list[str]:
        """Labels in file order (the classifier's row order)."""
        return list(self.classes)

    def prompts_for(self, label: str) -> list[str]:
        """All prompts of one class, description-major: (d1,t1), (d1,t2), ..., (d2,t1), ...

        Raises:
            UnknownNameError: `label` is not a class of this set (with close matches).
        """
        return [p for group in self.prompts_by_description(label) for p in group]

    def prompts_by_description(self, label: str) -> list[list[str]]:
        """One list of prompts per description of `label` (for per-description max pooling)."""
        if label not in self.classes:
            raise UnknownNameError(
                f"class {label!r} is not in prompt set {self.name!r}.{did_you_mean(label, self.classes)} "
                f"Classes: {self.class_names}"
            )
        return [[t.replace(PLACEHOLDER, d, 1) for t in self.templates] for d in self.classes[label]]

    def all_prompts(self) -> list[str]:
        """Every class prompt, class by class in `class_names` order (not the negative prompt)."""
        return [p for label in self.classes for p in self.prompts_for(label)]

    def negative_prompts(self) -> list[str]:
        """The negative prompt as-is (it is a full sentence, not slotted into templates)."""
        return [] if self.negative is None else [self.negative]

    def to_dict(self) -> dict[str, Any]:
        """A plain mapping (the YAML form) with only the fields that are set; for run records."""
        out: dict[str, Any] = {
            "name": self.name,
            "classes": {k: list(v) for k, v in self.classes.items()},
            "templates": list(self.templates),
        }
        for key in ("negative", "version", "description", "citation"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out

    def content_hash(self) -> str:
        """SHA-256 (hex) of the full text, class order included; stable across runs and machines."""
        canonical = json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"), sort_keys=False)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
