"""The Pillow-drawn stroke coverage against an exact distance-field reference."""

from __future__ import annotations

import torch

from histovl.robustness.markup import MARKER_INKS, plan_strokes, stroke_coverage


def _distance_field_coverage(stroke, height: int, width: int) -> torch.Tensor:
    """Naive reference: coverage = clamp(w/2 + 0.5 - distance to the polyline) x opacity."""
    pts = torch.as_tensor(stroke.points, dtype=torch.float64) * torch.tensor([width, height], dtype=torch.float64)
    ys, xs = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    pix = torch.stack([xs.reshape(-1), ys.reshape(-1)], 1).double()
    a, b = pts[:-1], pts[1:]
    ab = b - a
    t = (((pix[:, None] - a[None]) * ab[None]).sum(2) / (ab * ab).sum(1).clamp_min(1e-12)).clamp(0, 1)
    d = (pix[:, None] - (a[None] + t[..., None] * ab[None])).norm(dim=2).min(1).values
    half = stroke.width * min(height, width) / 2
    return ((half + 0.5 - d).clamp(0, 1) * stroke.opacity).reshape(height, width).float()


def test_coverage_matches_distance_field():
    for seed in (0, 1, 2):
        for stroke in plan_strokes(seed, 4):
            fast = torch.from_numpy(stroke_coverage(stroke, 80, 80))
            ref = _distance_field_coverage(stroke, 80, 80)
            inside = ref > 0.5 * stroke.opacity
            assert float((fast - ref).abs().mean()) < 0.01
            assert float(fast[inside].mean()) > 0.8 * stroke.opacity  # the core is inked
            assert float(((fast > 0) & (ref == 0)).float().mean()) < 0.01  # no ink far away


def test_strokes_are_reproducible_and_use_marker_inks():
    a, b = plan_strokes(3, 4), plan_strokes(3, 4)
    assert all((x.points == y.points).all() and x.ink == y.ink for x, y in zip(a, b, strict=True))
    assert {s.ink for i in range(20) for s in plan_strokes(i, 4)} == set(MARKER_INKS)
