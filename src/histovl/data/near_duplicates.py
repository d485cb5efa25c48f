"""Find images that are rotated, flipped or rescaled copies of one original.

Augmented data sets such as LC25000 (about 250 originals per class, each rotated by up to 25°
about its centre, cropped back to a square and flipped) leak badly under a random split: a test
tile's twin sits in the training set. A perceptual hash made invariant to the 8 right-angle
rotations and flips only catches the flips and near-exact copies (measured on LC25000 lung_n:
about 1,000 "groups" for ~250 originals), because a 10-25° rotation with its crop changes every
hash bit. So each image is described in log-polar coordinates around its centre, where a
rotation is a circular shift along the angle axis, a flip reverses that axis, and a zoom is a
shift along the log-radius axis:

1. *Candidates.* Per ring, the magnitude of the angular Fourier transform is exactly invariant to
   rotation and flip; comparing these ring profiles under small log-radius shifts finds, for each
   image, its `candidates` most similar images (a dense matrix product, in row blocks).
2. *Verification.* For each candidate pair, the normalised cross-correlation of the two log-polar
   images maximised over every angle shift, both flip states and the log-radius shifts (computed
   with FFTs along the angle axis). Copies score about 0.8-1.0, unrelated tissue 0.2-0.6.
3. *Groups.* Pairs with ``1 - correlation <= max_distance`` are joined with union-find
   (connected components).

Not detected: copies that are translated (overlapping crops of one slide) or recoloured; use the
slide or patient id as `group` for those.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from histovl.data.decode import read_rgb

SIDE = 128  # images are centre-cropped to a square and resized to SIDE x SIDE greyscale
N_RINGS = 32  # log-spaced radii from R_MIN to R_MAX pixels
N_ANGLES = 64  # 5.6° steps; the cross-correlation peak is found on this grid
R_MIN, R_MAX = 4.0, SIDE / 2 - 2.0
BLUR_SIGMA = 1.5  # pixels at SIDE; makes resampling error small next to tissue structure
N_FREQS = 16  # angular frequencies 1..16 in the candidate descriptor
MAX_RADIAL_SHIFT = 6  # log-radius steps (~0.088 each): zoom factors up to ~1.7 either way
DEFAULT_MAX_DISTANCE = 0.28  # 1 - correlation; LC25000's histogram has its valley at 0.26-0.30


@dataclass(frozen=True)
class NearDuplicatePairs:
    """Verified candidate pairs, for inspection and threshold tuning.

    Attributes:
        first, second: Indices into the input paths (first < second).
        distance: ``1 - max normalised cross-correlation`` (0 = identical up to rotation/flip/zoom).
    """

    first: np.ndarray
    second: np.ndarray
    distance: np.ndarray


def near_duplicate_groups(
    paths: Sequence[str | os.PathLike[str]],
    *,
    max_distance: float = DEFAULT_MAX_DISTANCE,
    candidates: int = 20,
    workers: int | None = None,
) -> list[str]:
    """Group images that are rotations, flips or rescaled near-copies of one original.

    Args:
        paths: Image files (any format `read_rgb` reads).
        max_distance: Join two images when ``1 - correlation`` of their aligned log-polar forms is
            at most this. Lower is stricter (more, smaller groups).
        candidates: Neighbours per image that are verified; raise it when an original has more
            copies than this in the data.
        workers: Processes for decoding and description; ``None`` uses every CPU, 0 or 1 none.

    Returns:
        One group id per path (``"g000017"``: the index of the group's first member), so images
        of one original share an id.

    Raises:
        ImageReadError: An image cannot be decoded.

    Example:
        >>> groups = near_duplicate_groups(load_image_set("lc25000-lung").paths)  # doctest: +SKIP
        >>> len(set(groups))  # doctest: +SKIP
        907
    """
    pairs = near_duplicate_pairs(paths, candidates=candidates, workers=workers)
    return groups_from_pairs(len(paths), pairs, max_distance=max_distance)


def groups_from_pairs(n: int, pairs: NearDuplicatePairs, *, max_distance: float = DEFAULT_MAX_DISTANCE) -> list[str]:
    """Union-find over the pairs within `max_distance`; ids name each group's first member."""
    keep = pairs.distance <= max_distance
    graph = coo_matrix(
        (np.ones(int(keep.sum()), dtype=np.int8), (pairs.first[keep], pairs.second[keep])), shape=(n, n)
    )
    _, component = connected_components(graph, directed=False)
    first_member: dict[int, int] = {}
    for index, comp in enumerate(component.tolist()):
        first_member.setdefault(comp, index)
    return [f"g{first_member[c]:06d}" for c in component.tolist()]


def near_duplicate_pairs(
    paths: Sequence[str | os.PathLike[str]], *, candidates: int = 20, workers: int | None = None
) -> NearDuplicatePairs:
    """Describe every image, pick candidates, and score each candidate pair (see module doc)."""
    polar = log_polar_descriptors(paths, workers=workers)
    n = len(polar)
    if n < 2:
        empty = np.zeros(0, dtype=np.int64)
        return NearDuplicatePairs(empty, empty, np.zeros(0, dtype=np.float32))
    neighbours = candidate_neighbours(polar, k=min(candidates, n - 1))
    first = np.repeat(np.arange(n), neighbours.shape[1])
    second = neighbours.ravel()
    lo, hi = np.minimum(first, second), np.maximum(first, second)
    unique = np.unique(lo * n + hi)
    first, second = unique // n, unique % n
    return NearDuplicatePairs(first, second, 1.0 - aligned_correlation(polar, first, second))


def log_polar_descriptors(paths: Sequence[str | os.PathLike[str]], *, workers: int | None = None) -> np.ndarray:
    """Zero-mean log-polar images, float32 ``[n, N_RINGS, N_ANGLES]``, decoded in parallel."""
    names = [os.fspath(p) for p in paths]
    n_workers = min(os.cpu_count() or 1, 8) if workers is None else workers
    if n_workers <= 1 or len(names) < 64:
        arrays = [describe_image(p) for p in names]
    else:
        with ProcessPoolExecutor(max_workers=n_workers) as pool:
            arrays = list(pool.map(describe_image, names, chunksize=max(1, len(names) // (8 * n_workers))))
    if not arrays:
        return np.zeros((0, N_RINGS, N_ANGLES), dtype=np.float32)
    return np.stack(arrays)


def describe_image(path: str) -> np.ndarray:
    """Log-polar form of one image about its centre (after a centre square crop and a blur)."""
    img = read_rgb(path).convert("L")
    w, h = img.size
    side = min(w, h)
    box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
    small = np.asarray(img.resize((SIDE, SIDE), Image.Resampling.BILINEAR, box=box), dtype=np.float32)
    blurred = ndimage.gaussian_filter(small, BLUR_SIGMA)
    rows, cols = _sampling_grid()
    polar = ndimage.map_coordinates(blurred, [rows, cols], order=1).reshape(N_RINGS, N_ANGLES)
    return (polar - polar.mean()).astype(np.float32)


@lru_cache(maxsize=1)
def _sampling_grid() -> tuple[np.ndarray, np.ndarray]:
    radii = np.exp(np.linspace(np.log(R_MIN), np.log(R_MAX), N_RINGS))
    angles = np.linspace(0.0, 2 * np.pi, N_ANGLES, endpoint=False)
    centre = (SIDE - 1) / 2
    rows = centre + radii[:, None] * np.sin(angles)[None, :]
    cols = centre + radii[:, None] * np.cos(angles)[None, :]
    return rows.ravel(), cols.ravel()


def _shift_slices(shift: int) -> tuple[slice, slice]:
    """Ring ranges that overlap when the first image's rings are `shift` steps further out."""
    if shift >= 0:
        return slice(shift, N_RINGS), slice(0, N_RINGS - shift)
    return slice(0, N_RINGS + shift), slice(-shift, N_RINGS)


def candidate_neighbours(polar: np.ndarray, *, k: int, block: int = 512) -> np.ndarray:
    """For each image, the `k` others whose rotation/flip-invariant ring profiles match best."""
    n = len(polar)
    profile = np.log1p(np.abs(np.fft.rfft(polar, axis=2))[:, :, 1 : N_FREQS + 1]).astype(np.float32)
    out = np.empty((n, k), dtype=np.int64)
    shifted = []
    for shift in range(-MAX_RADIAL_SHIFT, MAX_RADIAL_SHIFT + 1):
        near, far = _shift_slices(shift)
        shifted.append((_unit_rows(profile[:, near]), _unit_rows(profile[:, far])))
    for start in range(0, n, block):
        stop = min(start + block, n)
        best = np.full((stop - start, n), -np.inf, dtype=np.float32)
        for queries, keys in shifted:
            np.maximum(best, queries[start:stop] @ keys.T, out=best)
        best[np.arange(stop - start), np.arange(start, stop)] = -np.inf  # not its own neighbour
        top = np.argpartition(-best, k - 1, axis=1)[:, :k]
        out[start:stop] = top
    return out


def _unit_rows(x: np.ndarray) -> np.ndarray:
    flat = x.reshape(len(x), -1)
    flat = flat - flat.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(flat, axis=1, keepdims=True)
    return (flat / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def aligned_correlation(
    polar: np.ndarray, first: np.ndarray, second: np.ndarray, *, chunk: int = 4096
) -> np.ndarray:
    """Max normalised cross-correlation of pairs over angle shift, flip and log-radius shift.

    A flip reverses the angle axis, which for a real signal conjugates its Fourier transform, so
    both flip states cost one extra product, not another transform of the image.
    """
    spectra = np.fft.rfft(polar, axis=2)
    energy = (polar.astype(np.float64) ** 2).sum(axis=2)
    scores = np.full(len(first), -1.0, dtype=np.float64)
    for start in range(0, len(first), chunk):
        a_idx, b_idx = first[start : start + chunk], second[start : start + chunk]
        fa, fb, ea, eb = spectra[a_idx], spectra[b_idx], energy[a_idx], energy[b_idx]
        best = scores[start : start + chunk]
        for shift in range(-MAX_RADIAL_SHIFT, MAX_RADIAL_SHIFT + 1):
            near, far = _shift_slices(shift)
            denom = np.sqrt(ea[:, near].sum(axis=1) * eb[:, far].sum(axis=1))
            denom = np.where(denom > 0, denom, np.inf)
            for other in (np.conj(fb[:, far]), fb[:, far]):  # as is, then flipped
                cross = np.fft.irfft((fa[:, near] * other).sum(axis=1), n=N_ANGLES, axis=1)
                np.maximum(best, cross.max(axis=1) / denom, out=best)
    return np.clip(scores, -1.0, 1.0).astype(np.float32)
