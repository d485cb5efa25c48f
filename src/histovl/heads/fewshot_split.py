"""Leak-free support pools and reproducible support draws for the few-shot protocol.

*Units.* Two images belong to one unit when they share a file path, a ``group`` (slide or
patient, from the manifest) or a near-duplicate group (`histovl.data.near_duplicate_groups`:
rotated, flipped or rescaled copies of one original). Units are the connected components of
those links, so a chain of copies is one unit.

*Pool and query.* With one data set, whole units are split into a support pool and a query set
(`histovl.data.group_split`, stratified by class, ``query_fraction`` of the images to the query).
With a separate query set, every query image is a query item and the pool is the support set
minus any image whose unit reaches a query image. Either way no unit has images on both sides.

*Draws.* For each seed and class, the pool's units of that class are shuffled, then the images in
them, and the class's images are ordered round-robin over units (one image of each unit before a
second image of any). The k-shot support is the first k of that order, so k different originals
where the pool has them, and the 1-shot support is inside the 2-shot one (nested draws make the
curves over shots comparable). ``all`` is the whole pool.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from histovl.errors import HistovlError

Shots = int | str


@dataclass(frozen=True)
class PoolSplit:
    """Which items may be drawn as support, which are queried, and why some were set aside.

    Attributes:
        pool: indices of the items support images are drawn from.
        query: indices of the query items.
        units: unit id per item (see the module docstring).
        n_removed: support-set items left out because their unit reaches the query.
    """

    pool: np.ndarray
    query: np.ndarray
    units: np.ndarray
    n_removed: int


def leakage_units(links: Sequence[Sequence[str]]) -> np.ndarray:
    """Unit id per item: items sharing any link key (path, group, near-duplicate id) are joined."""
    parent = list(range(len(links)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_with: dict[str, int] = {}
    for item, keys in enumerate(links):
        for key in keys:
            other = first_with.setdefault(key, item)
            ra, rb = find(item), find(other)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    roots = [find(i) for i in range(len(links))]
    _, units = np.unique(np.asarray(roots), return_inverse=True)
    return units.astype(np.int64)


def split_pool(
    records: Sequence[Any], units: np.ndarray, is_query: np.ndarray | None, *, query_fraction: float, seed: int
) -> PoolSplit:
    """The support pool and query set (module docstring); `is_query` marks a separate query set."""
    if is_query is not None:
        query = np.flatnonzero(is_query)
        query_units = set(units[query].tolist())
        support = np.flatnonzero(~is_query)
        pool = np.array([i for i in support if units[i] not in query_units], dtype=np.int64)
        return PoolSplit(pool, query, units, int(len(support) - len(pool)))
    return PoolSplit(*_split_one_set(records, units, query_fraction, seed), units, 0)


def _split_one_set(records: Sequence[Any], units: np.ndarray, query_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from dataclasses import replace

    from histovl.data import ImageSet, group_split

    tagged = tuple(replace(r, group=f"u{u}") for r, u in zip(records, units.tolist(), strict=True))
    first = records[0]
    full = ImageSet(records=tagged, root=first.path.parent, source=first.path.parent, kind="manifest")
    _, test = group_split(full, test_fraction=query_fraction, seed=seed)
    test_units = {r.group for r in test.records}
    in_query = np.array([f"u{u}" in test_units for u in units.tolist()])
    return np.flatnonzero(~in_query), np.flatnonzero(in_query)


def check_shots(counts: dict[str, int], shots: Sequence[Shots], where: str) -> None:
    """One-line `HistovlError` when a class has fewer images than an integer shot count."""
    wanted = [s for s in shots if isinstance(s, int)]
    if not wanted:
        return
    most = max(wanted)
    for cls, n in counts.items():
        if n < most:
            raise HistovlError(
                f"class {cls!r} has {n} image(s) {where}, fewer than --shots {most}; "
                "lower --shots or use --shots all"
            )


def draw_orders(
    pool: np.ndarray, labels: np.ndarray, units: np.ndarray, classes: Sequence[str], seed: int
) -> dict[str, np.ndarray]:
    """Per class, the pool's items in draw order for `seed` (the k-shot support is the first k)."""
    rng = np.random.default_rng(seed)
    orders = {}
    for cls in classes:
        members = pool[labels[pool] == cls]
        by_unit: dict[int, list[int]] = defaultdict(list)
        for i in members.tolist():
            by_unit[int(units[i])].append(i)
        unit_ids = sorted(by_unit)
        rng.shuffle(unit_ids)
        shuffled = [list(rng.permutation(by_unit[u])) for u in unit_ids]
        rounds = max((len(s) for s in shuffled), default=0)
        orders[cls] = np.array([s[r] for r in range(rounds) for s in shuffled if r < len(s)], dtype=np.int64)
    return orders


def support_indices(orders: dict[str, np.ndarray], shots: Shots, pool: np.ndarray) -> np.ndarray:
    """The support items for one shot count: the first `shots` of each class, or the whole pool."""
    if shots == "all":
        return np.sort(pool)
    return np.concatenate([order[: int(shots)] for order in orders.values()])
