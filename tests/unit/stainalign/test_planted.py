"""The planted-signal generator and its Bayes-optimal accuracy / AUROC (checked by Monte Carlo)."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from histovl.stainalign.planted import (
    PlantedConfig,
    bayes_accuracy,
    bayes_auroc,
    bayes_posterior,
    planted_pairs,
)

SMALL = PlantedConfig(dim=12, nuisance_dim=2, he_tiles=8, ihc_tiles=6, ihc_signal_tiles=2)


def test_draws_are_deterministic_and_share_their_directions() -> None:
    a, b = planted_pairs(6, SMALL, seed=3), planted_pairs(6, SMALL, seed=3)
    assert all(np.array_equal(x, y) for x, y in zip(a.he + a.ihc, b.he + b.ihc, strict=True))
    assert a.he[0].shape == (8, 12) and a.ihc[0].shape == (6, 12) and a.he[0].dtype == np.float32
    other = planted_pairs(6, SMALL, seed=4)
    assert not np.array_equal(a.he[0], other.he[0])
    assert a.labels == ["high" if z > SMALL.threshold else "low" for z in a.z]
    assert len(set(a.groups)) == 6


def test_signal_sits_where_the_docstring_says() -> None:
    from histovl.stainalign.planted import _directions

    cfg = PlantedConfig(dim=12, nuisance_dim=2, ihc_tiles=10, ihc_signal_tiles=2, tile_noise=1e-3,
                        nuisance_strength=0.0, he_case_noise=0.0)
    data = planted_pairs(5, cfg, seed=0)
    d = _directions(cfg)
    for i in range(5):
        ihc_proj = data.ihc[i] @ d["d_ihc"]
        assert np.sum(np.abs(ihc_proj) > 1e-2) == 2  # a strong signal in exactly 2 IHC tiles
        np.testing.assert_allclose(ihc_proj[np.abs(ihc_proj) > 1e-2], cfg.ihc_strength * data.z[i], atol=0.02)
        np.testing.assert_allclose(data.he[i] @ d["d_he"], cfg.he_strength * data.z[i], atol=0.02)  # every H&E tile


def test_bayes_accuracy_closed_form_at_prevalence_half() -> None:
    cfg = PlantedConfig()
    assert bayes_accuracy(cfg) == pytest.approx(0.5 + math.asin(cfg.rho) / math.pi, abs=1e-6)


@pytest.mark.parametrize(
    "changes",
    [{}, {"prevalence": 0.3}, {"he_strength": 0.25, "he_tiles": 4, "he_case_noise": 0.5, "scale": 0.1}],
)
def test_bayes_accuracy_and_auroc_match_monte_carlo(changes: dict[str, Any]) -> None:
    cfg = replace(SMALL, **changes)
    data = planted_pairs(20_000, cfg, seed=11)
    y = np.array(data.labels) == "high"
    posterior = bayes_posterior(data.he, cfg)
    mc_acc = float(np.mean((posterior > 0.5) == y))
    se = math.sqrt(mc_acc * (1 - mc_acc) / len(y))
    assert abs(mc_acc - bayes_accuracy(cfg)) < 4 * se, (mc_acc, bayes_accuracy(cfg))
    assert abs(roc_auc_score(y, posterior) - bayes_auroc(cfg)) < 0.01
    assert abs(y.mean() - cfg.prevalence) < 0.01


def test_no_rule_beats_the_bayes_rule_on_the_h_and_e_bag() -> None:
    """Plain rules (mean projection at 0, the oracle direction with the wrong threshold) do no
    better than the Bayes accuracy."""
    from histovl.stainalign.planted import _directions

    cfg = replace(SMALL, prevalence=0.3)
    data = planted_pairs(20_000, cfg, seed=12)
    y = np.array(data.labels) == "high"
    d_he = _directions(cfg)["d_he"]
    t = np.array([float(np.mean(b @ d_he)) for b in data.he])
    for cut in (0.0, 0.5 * cfg.threshold, 2.0 * cfg.threshold):
        assert np.mean((t > cut) == y) <= bayes_accuracy(cfg) + 0.01


def test_bad_configs_are_refused() -> None:
    with pytest.raises(ValueError, match="too small"):
        PlantedConfig(dim=6, nuisance_dim=4)
    with pytest.raises(ValueError, match="prevalence"):
        PlantedConfig(prevalence=1.0)
    with pytest.raises(ValueError, match="ihc_signal_tiles"):
        PlantedConfig(ihc_tiles=2, ihc_signal_tiles=3)
