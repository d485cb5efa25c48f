"""Class colours shared by every picture of per-class results (the slide heatmap of `histovl
predict`, its QuPath GeoJSON, the overlays of `histovl serve`), so class k has one colour
everywhere. Imports nothing heavy: `histovl serve` starts without torch.
"""

from __future__ import annotations

#: Okabe-Ito's colour-blind-safe colours without black, then five more distinct ones (those that
#: stand out on H&E pink and purple first), then black:
#: 13 classes get distinct colours (more cycle). Class k has colour k in the PNG and the GeoJSON.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 114, 178), (230, 159, 0), (0, 158, 115), (204, 121, 167), (86, 180, 233), (213, 94, 0),
    (240, 228, 66), (23, 190, 207), (188, 189, 34), (148, 103, 189), (127, 127, 127), (140, 86, 75),
    (0, 0, 0),
)


def class_colours(n: int) -> list[tuple[int, int, int]]:
    """The colour of each of `n` classes (`PALETTE`, cycled past 13)."""
    return [PALETTE[k % len(PALETTE)] for k in range(n)]
