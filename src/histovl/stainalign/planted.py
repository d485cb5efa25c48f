"""A planted-signal benchmark for paired slides, with its Bayes-optimal accuracy in closed form.

Every case has a latent status score ``z ~ N(0, 1)`` (think "Ki67 index, standardised") and a
status ``y = high`` when ``z > θ`` (θ = Φ⁻¹(1 − prevalence)), plus a nuisance vector
``u ~ N(0, I_r)`` that both stains show (tissue type, scanner, thickness...). Tiles are
``dim``-dimensional "embeddings" built in fixed orthonormal directions (drawn once from
``world_seed``, so a training and a test draw share them):

- **IHC bag** (``ihc_tiles`` tiles): every tile ``γ A_ihc u + σ ε``; ``ihc_signal_tiles`` of them,
  at random positions, also ``+ β z d_ihc``. A strong signal in a few tiles: attention has to
  find them.
- **H&E bag** (``he_tiles`` tiles): every tile ``γ A_he u + (α z + τ η) d_he + σ ε`` with a
  per-case noise ``η ~ N(0, 1)``. A weak (α small against σ) and noisy (τ) signal.

(``α`` = `he_strength`, ``τ`` = `he_case_noise`, ``β`` = `ihc_strength`, ``γ`` =
`nuisance_strength`, ``σ`` = `tile_noise`; ``A_he``, ``A_ihc`` are [dim, r] and ``d_he``, ``d_ihc``
unit vectors, all mutually orthogonal.) Finally every tile is multiplied by `scale` (``1/√dim``
mimics the small per-feature values of L2-normalised encoder embeddings).

**Bayes-optimal accuracy from the H&E bag** (what a model that reads only H&E can reach). The
tiles' components outside ``d_he`` do not depend on ``z``, so the bag's mean projection
``t = mean_k ⟨x_k, d_he⟩ = α z + τ η + σ ε̄`` is sufficient, with ``t | z ~ N(α z, s²)``,
``s² = τ² + σ²/K``. Standardised, ``w = t / √(α² + s²)`` is N(0, 1) with correlation
``ρ = α / √(α² + s²)`` to ``z``. The posterior of ``z`` given ``t`` is Gaussian with mean
``ρ w``, so the Bayes rule (0–1 loss) says high exactly when ``ρ w > θ``, i.e. ``w > θ/ρ``, and

    accuracy = Φ₂(θ, θ/ρ; ρ) + 1 − Φ(θ) − Φ(θ/ρ) + Φ₂(θ, θ/ρ; ρ)

(Φ₂ the standard bivariate normal CDF); at prevalence 1/2 (θ = 0) this is
``1/2 + arcsin(ρ)/π``. The Bayes AUROC is ``P(w⁺ > w⁻)``, a one-dimensional integral computed
numerically (`bayes_auroc`). `bayes_posterior` gives the Bayes classifier itself, so both can
be checked by Monte Carlo (tests/unit/stainalign/test_planted.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from scipy import stats

HIGH, LOW = "high", "low"


@dataclass(frozen=True)
class PlantedConfig:
    """Sizes and strengths of the planted benchmark (symbols as in the module docstring)."""

    dim: int = 64
    he_tiles: int = 16
    """K, tiles per H&E bag."""
    ihc_tiles: int = 16
    ihc_signal_tiles: int = 3
    """Tiles of each IHC bag that carry the status (random positions)."""
    ihc_strength: float = 3.0
    """β: the IHC signal per signal tile (tile noise is σ per dimension)."""
    he_strength: float = 0.5
    """α: the H&E signal per tile, present in every tile."""
    he_case_noise: float = 0.3
    """τ: per-case noise on the H&E signal (limits what any number of tiles can reach)."""
    tile_noise: float = 1.0
    """σ: per-tile, per-dimension noise in both stains."""
    nuisance_dim: int = 4
    """r: dimension of the nuisance shared by both stains."""
    nuisance_strength: float = 2.0
    """γ: scale of the shared nuisance."""
    prevalence: float = 0.5
    """P(high)."""
    world_seed: int = 0
    """Seeds the directions (d_he, d_ihc, A_he, A_ihc); draws with different `seed` share them."""
    scale: float = 1.0
    """Multiplies every tile of both stains. An invertible map, so the Bayes accuracy does not
    change; ``1/√dim`` gives the per-feature scale of an L2-normalised encoder's embeddings."""

    def __post_init__(self) -> None:
        if self.dim < 2 * self.nuisance_dim + 2:
            raise ValueError(f"dim {self.dim} is too small for 2 x nuisance_dim {self.nuisance_dim} + 2 orthogonal directions")
        if not 0.0 < self.prevalence < 1.0:
            raise ValueError(f"prevalence must lie in (0, 1), not {self.prevalence}")
        if not 0 < self.ihc_signal_tiles <= self.ihc_tiles or self.he_tiles < 1:
            raise ValueError("need 1 <= ihc_signal_tiles <= ihc_tiles and he_tiles >= 1")
        if self.he_strength <= 0 or self.tile_noise <= 0 or self.he_case_noise < 0 or self.scale <= 0:
            raise ValueError("he_strength, tile_noise and scale must be > 0, he_case_noise >= 0")

    @property
    def threshold(self) -> float:
        """θ: the status is high when z > θ."""
        return float(stats.norm.ppf(1.0 - self.prevalence))

    @property
    def rho(self) -> float:
        """Correlation between z and the H&E bag's sufficient statistic."""
        s2 = self.he_case_noise**2 + self.tile_noise**2 / self.he_tiles
        return self.he_strength / math.sqrt(self.he_strength**2 + s2)


@dataclass
class PlantedPairs:
    """One draw: bags per stain (float32 [tiles, dim]), labels, latent scores and groups."""

    he: list[np.ndarray]
    ihc: list[np.ndarray]
    labels: list[str]
    z: np.ndarray
    groups: list[str]
    config: PlantedConfig

    def __len__(self) -> int:
        return len(self.labels)


def _directions(cfg: PlantedConfig) -> dict[str, np.ndarray]:
    """Orthonormal d_he, d_ihc [dim], A_he, A_ihc [dim, r] from `world_seed`."""
    rng = np.random.default_rng(cfg.world_seed)
    q, _ = np.linalg.qr(rng.normal(size=(cfg.dim, cfg.dim)))
    r = cfg.nuisance_dim
    return {"d_he": q[:, 0], "d_ihc": q[:, 1], "A_he": q[:, 2 : 2 + r], "A_ihc": q[:, 2 + r : 2 + 2 * r]}


def planted_pairs(n: int, config: PlantedConfig | None = None, *, seed: int = 0, **changes: Any) -> PlantedPairs:
    """`n` paired H&E/IHC bags from the planted model (`changes`: fields of `PlantedConfig`).

    Example:
        >>> data = planted_pairs(8, seed=1, dim=16, nuisance_dim=2)
        >>> len(data), data.he[0].shape, sorted(set(data.labels)) <= ["high", "low"]
        (8, (16, 16), True)
    """
    cfg = replace(config or PlantedConfig(), **changes)
    dirs = _directions(cfg)
    rng = np.random.default_rng([cfg.world_seed, seed])
    z = rng.normal(size=n)
    u = rng.normal(size=(n, cfg.nuisance_dim))
    eta = rng.normal(size=n)
    he = cfg.tile_noise * rng.normal(size=(n, cfg.he_tiles, cfg.dim))
    he += (cfg.nuisance_strength * u @ dirs["A_he"].T)[:, None, :]
    he += ((cfg.he_strength * z + cfg.he_case_noise * eta)[:, None] * dirs["d_he"])[:, None, :]
    ihc = cfg.tile_noise * rng.normal(size=(n, cfg.ihc_tiles, cfg.dim))
    ihc += (cfg.nuisance_strength * u @ dirs["A_ihc"].T)[:, None, :]
    signal = np.argsort(rng.random((n, cfg.ihc_tiles)), axis=1)[:, : cfg.ihc_signal_tiles]  # random positions
    rows = np.repeat(np.arange(n), cfg.ihc_signal_tiles)
    ihc[rows, signal.ravel()] += (cfg.ihc_strength * z)[rows, None] * dirs["d_ihc"]
    theta = cfg.threshold
    labels = [HIGH if v > theta else LOW for v in z]
    he, ihc = cfg.scale * he, cfg.scale * ihc
    return PlantedPairs(list(he.astype(np.float32)), list(ihc.astype(np.float32)), labels, z, [f"case{seed}-{i}" for i in range(n)], cfg)


def bayes_accuracy(config: PlantedConfig | None = None) -> float:
    """The Bayes-optimal accuracy of predicting the status from the H&E bag (closed form)."""
    cfg = config or PlantedConfig()
    theta, rho = cfg.threshold, cfg.rho
    both_low = stats.multivariate_normal(mean=[0.0, 0.0], cov=[[1.0, rho], [rho, 1.0]]).cdf([theta, theta / rho])
    both_high = 1.0 - stats.norm.cdf(theta) - stats.norm.cdf(theta / rho) + both_low
    return float(both_low + both_high)


def bayes_auroc(config: PlantedConfig | None = None, grid: int = 4001) -> float:
    """The AUROC of the Bayes score (any increasing function of the H&E statistic w).

    ``P(w⁺ > w⁻) = ∫ f(w | high) F(w | low) dw`` on a grid over [-9, 9]; with
    ``f(w | high) = φ(w) Φ̄((θ − ρ w)/√(1 − ρ²)) / P(high)`` and
    ``F(w | low) = Φ₂(w, θ; ρ) / P(low)``, the latter by cumulative summation of
    ``φ(w) Φ((θ − ρ w)/√(1 − ρ²))``.
    """
    cfg = config or PlantedConfig()
    theta, rho = cfg.threshold, cfg.rho
    w = np.linspace(-9.0, 9.0, grid)
    step = w[1] - w[0]
    scale = math.sqrt(max(1.0 - rho**2, 1e-12))
    low_density = stats.norm.pdf(w) * stats.norm.cdf((theta - rho * w) / scale) / (1.0 - cfg.prevalence)
    high_density = stats.norm.pdf(w) * stats.norm.sf((theta - rho * w) / scale) / cfg.prevalence
    low_cdf = np.cumsum(low_density) * step - 0.5 * low_density * step  # trapezoid up to each point
    return float(np.sum(high_density * low_cdf) * step)


def bayes_posterior(he_bags: Sequence[np.ndarray], config: PlantedConfig | None = None) -> np.ndarray:
    """P(high | H&E bag) under the planted model: the Bayes classifier (> 0.5 says high)."""
    cfg = config or PlantedConfig()
    d_he = _directions(cfg)["d_he"]
    sizes = [len(b) for b in he_bags]
    projections = np.concatenate([np.asarray(b, dtype=np.float64) for b in he_bags]) @ d_he
    t = np.add.reduceat(projections, np.cumsum([0, *sizes[:-1]])) / np.asarray(sizes) / cfg.scale  # bag means
    w = t / math.sqrt(cfg.he_strength**2 + cfg.he_case_noise**2 + cfg.tile_noise**2 / cfg.he_tiles)
    rho = cfg.rho
    return np.asarray(stats.norm.sf((cfg.threshold - rho * w) / math.sqrt(max(1.0 - rho**2, 1e-12))))
