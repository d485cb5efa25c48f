"""The decoding half of the engine (torch): a DataLoader dataset that reads, converts to RGB,
preprocesses and transforms one image per item in a worker process. Imported by
`histovl.embed.engine` only when some image has to be decoded, so cached runs never load torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from histovl.data import read_rgb
from histovl.embed.transform import ImageTransform
from histovl.errors import ImageReadError
from histovl.models.preprocess import Preprocess


class DecodeDataset(Dataset[tuple[int, torch.Tensor | None, str]]):
    """Reads, converts to RGB, preprocesses (and transforms) one image; errors are returned."""

    def __init__(
        self,
        paths: Sequence[str],
        indices: Sequence[int],
        preprocess: Preprocess,
        transform: ImageTransform | None,
        seeds: Sequence[int],
    ) -> None:
        self.paths, self.indices, self.preprocess = paths, indices, preprocess
        self.transform, self.seeds = transform, seeds

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int) -> tuple[int, torch.Tensor | None, str]:
        i = self.indices[j]
        try:
            img = read_rgb(self.paths[i])
            x = self.preprocess.to_unnormalised(img)
            if self.transform is not None:
                x = self.transform(x, self.seeds[j]).clamp_(0.0, 1.0)
            return i, self.preprocess.normalise(x), ""
        except ImageReadError as err:
            return i, None, err.reason
        except (OSError, ValueError, SyntaxError) as err:  # decoder faults Pillow lets through
            return i, None, f"{type(err).__name__}: {err}"


def collate(batch: list[tuple[int, torch.Tensor | None, str]]) -> tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]:
    good = [(i, x) for i, x, _ in batch if x is not None]
    bad = [(i, r) for i, x, r in batch if x is None]
    idx = [i for i, _ in good]
    pixels = torch.stack([x for _, x in good]) if good else None
    return idx, pixels, bad


def worker_init(_: int) -> None:
    # One thread per decode worker: the model in the main process owns the cores' BLAS threads.
    torch.set_num_threads(1)
