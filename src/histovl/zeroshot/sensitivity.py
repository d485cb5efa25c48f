"""Prompt sensitivity (`histovl zeroshot --per-template`): does a result depend on the wording?

The ensemble classifier averages every (description × template) prompt of a class. This step
re-scores the same image embeddings with variants of the prompt set:

* one variant per template, alone (every class keeps all its descriptions), when the set has
  several templates;
* one variant per description of each class that has several: that class restricted to that one
  description, every other class unchanged (all templates).

Each variant gets the metrics of `histovl.metrics.classification_metrics` with bootstrap CIs,
and every variant is evaluated on the *same* bootstrap resamples (one seed), so the spread of a
family (templates, descriptions) has an interval too: per resample, the best variant's value
minus the worst's. Outputs: ``prompt_sensitivity.csv`` (one row per variant), a
``prompt_sensitivity`` block in metrics.json and a report section (docs/zeroshot.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from histovl.metrics.bootstrap import percentile_interval
from histovl.metrics.classification import classification_metrics, classification_replicates
from histovl.options import RunOptions
from histovl.zeroshot.classifier import Aggregate, build_text_classifier

if TYPE_CHECKING:
    from histovl.models.encoder import Encoder

#: metrics reported per variant and summarised as a spread.
SENSITIVITY_METRICS = ("accuracy", "balanced_accuracy", "f1_macro", "auroc_macro")


@dataclass(frozen=True)
class PromptVariant:
    """One way of prompting: the full ensemble, one template alone, or one class description alone."""

    name: str
    kind: str  # "ensemble", "template" or "description"
    prompt_set: Any
    template: str | None = None
    class_name: str | None = None
    description: str | None = None


@dataclass
class SensitivityResult:
    """The per-variant table (prompt_sensitivity.csv) and the metrics.json block."""

    table: pd.DataFrame
    summary: dict[str, Any]


def prompt_variants(prompt_set: Any) -> list[PromptVariant]:
    """The ensemble, then each template alone, then each description alone (module docstring)."""
    variants = [PromptVariant("ensemble", "ensemble", prompt_set)]
    templates = list(prompt_set.templates)
    if len(templates) > 1:
        for i, template in enumerate(templates):
            variants.append(PromptVariant(f"template {i + 1}", "template",
                                          prompt_set.model_copy(update={"templates": [template]}), template=template))
    for label, descriptions in prompt_set.classes.items():
        if len(descriptions) < 2:
            continue
        for j, description in enumerate(descriptions):
            classes = {**prompt_set.classes, label: [description]}
            variants.append(PromptVariant(f"{label} description {j + 1}", "description",
                                          prompt_set.model_copy(update={"classes": classes}),
                                          class_name=label, description=description))
    return variants


def prompt_sensitivity(
    encoder: Encoder, prompt_set: Any, embeddings: np.ndarray, y_true: np.ndarray,
    groups: Sequence[Any] | None, class_names: list[str], aggregate: Aggregate, opts: RunOptions,
) -> SensitivityResult:
    """Score every variant on the same embeddings; the spread of each family with its interval."""
    rows, replicates = [], []
    group_array = None if groups is None else np.asarray(groups, dtype=object)
    for variant in prompt_variants(prompt_set):
        probs = build_text_classifier(encoder, variant.prompt_set, aggregate, memoise=False).probabilities(embeddings)
        m = classification_metrics(y_true, probs, class_names, n_boot=0)
        reps = (classification_replicates(y_true, probs, probs.argmax(axis=1), len(class_names), groups=group_array,
                                          n_boot=opts.n_boot, seed=opts.seed) if opts.n_boot > 0 else None)
        rows.append(_row(variant, m, reps))
        replicates.append(reps)
    table = pd.DataFrame(rows)
    summary = {
        "metrics": list(SENSITIVITY_METRICS),
        "n_variants": len(rows),
        "ensemble": {k: rows[0][k] for k in SENSITIVITY_METRICS},
        "spread": {kind: _spread(table, replicates, kind) for kind in ("template", "description")
                   if (table["kind"] == kind).any()},
    }
    return SensitivityResult(table, summary)


def sensitivity_for_run(
    encoder: Encoder, prompt_set: Any, embeddings: np.ndarray, records: Sequence[Any], class_names: list[str],
    aggregate: Aggregate, opts: RunOptions,
) -> SensitivityResult:
    """`prompt_sensitivity` for a zero-shot run: labels and groups taken from its kept records."""
    index = {c: i for i, c in enumerate(class_names)}
    y = np.array([index[str(r.label)] for r in records], dtype=np.int64)
    groups = [r.group for r in records]
    return prompt_sensitivity(encoder, prompt_set, embeddings, y, groups if any(g is not None for g in groups) else None,
                              class_names, aggregate, opts)


def write_sensitivity_section(report: Any, result: SensitivityResult) -> None:
    """The report section: the spread per family, then every variant with its CI (figure)."""
    rows = []
    for kind, block in result.summary["spread"].items():
        for metric in SENSITIVITY_METRICS:
            s = block.get(metric)
            if s is None:
                continue
            lo, hi = s["range_ci95"]
            rows.append({"family": kind, "variants": block["n_variants"], "metric": metric, "min": s["min"],
                         "max": s["max"], "range": s["range"],
                         "range 95% CI": "–" if lo is None else f"[{lo:.3f}, {hi:.3f}]", "worst": s["worst"],
                         "best": s["best"]})
    report.add_table(pd.DataFrame(rows), title="Prompt sensitivity",
                     caption="Each template alone and each class description alone, scored on the same images; "
                             "range = best − worst variant of a family, its interval from the same bootstrap "
                             "resamples for every variant. Per-variant values: prompt_sensitivity.csv.")
    report.add_figure("prompt_sensitivity", sensitivity_figure(result.table), title="Prompt sensitivity per variant")


def _row(variant: PromptVariant, metrics: dict[str, Any], reps: dict[str, np.ndarray] | None) -> dict[str, Any]:
    row: dict[str, Any] = {
        "variant": variant.name, "kind": variant.kind, "template": variant.template,
        "class": variant.class_name, "description": variant.description,
    }
    for m in SENSITIVITY_METRICS:
        iv = percentile_interval(reps[m]).as_list() if reps is not None else [None, None]
        row[m], row[f"{m}_lo"], row[f"{m}_hi"] = metrics[m], iv[0], iv[1]
    row["ece"] = metrics.get("ece")
    return row


def _spread(table: pd.DataFrame, replicates: list[dict[str, np.ndarray] | None], kind: str) -> dict[str, Any]:
    """Per metric over one family: min, max, range (with its bootstrap interval), std, best/worst."""
    members = [i for i, k in enumerate(table["kind"]) if k == kind]
    out: dict[str, Any] = {"n_variants": len(members)}
    for m in SENSITIVITY_METRICS:
        values = table.loc[members, m].astype(float)
        if values.isna().all():
            out[m] = None
            continue
        reps = [replicates[i] for i in members]
        interval: list[float | None] = [None, None]
        if all(r is not None for r in reps):
            stacked = np.vstack([r[m] for r in reps if r is not None])
            with np.errstate(invalid="ignore"):
                interval = percentile_interval(np.nanmax(stacked, axis=0) - np.nanmin(stacked, axis=0)).as_list()
        out[m] = {
            "min": float(values.min()), "max": float(values.max()), "range": float(values.max() - values.min()),
            "range_ci95": interval, "std": float(values.std(ddof=0)),
            "best": str(table.loc[values.idxmax(), "variant"]), "worst": str(table.loc[values.idxmin(), "variant"]),
        }
    return out


def sensitivity_figure(table: pd.DataFrame, metric: str = "f1_macro") -> Figure:
    """Each variant's value with its 95% CI; the ensemble's value as a dashed line."""
    fig = Figure(figsize=(6.5, max(2.2, 0.3 * len(table) + 1.2)), layout="constrained")
    ax = fig.subplots()
    ypos = np.arange(len(table))
    colours = {"ensemble": "#1f3b73", "template": "#4C72B0", "description": "#DD8452"}
    for y, row in zip(ypos, table.itertuples(index=False), strict=True):
        value, lo, hi = getattr(row, metric), getattr(row, f"{metric}_lo"), getattr(row, f"{metric}_hi")
        if value is None or not np.isfinite(value):
            continue
        if lo is not None and hi is not None and np.isfinite(lo) and np.isfinite(hi):
            ax.plot([lo, hi], [y, y], color=colours[row.kind], linewidth=2)
        ax.plot([value], [y], marker="o", color=colours[row.kind])
    ensemble = table.iloc[0][metric]
    if ensemble is not None and np.isfinite(ensemble):
        ax.axvline(float(ensemble), color="grey", linestyle="--", linewidth=1)
    ax.set_yticks(ypos, labels=list(table["variant"]), fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(f"{metric} (whiskers: 95% CI; dashed: ensemble)")
    ax.set_title("Prompt sensitivity: each template / description alone", fontsize=10)
    return fig
