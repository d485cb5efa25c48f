"""The torch half of `histovl.embed.in_memory`: the data set that decodes one image into its
model-sized, unnormalised tensor. Imported on the first decode, so that a sweep whose embeddings
are all cached never imports torch."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from histovl.errors import ImageReadError
from histovl.models.preprocess import Preprocess


class UnnormalisedDataset(Dataset[tuple[int, torch.Tensor | None, str]]):
    """Reads one image and returns its model-sized tensor (uint8 when lossless), or the error."""

    def __init__(self, paths: Sequence[str], indices: Sequence[int], preprocess: Preprocess) -> None:
        self.paths, self.indices, self.preprocess = paths, indices, preprocess

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int) -> tuple[int, torch.Tensor | None, str]:
        from histovl.data import read_rgb

        i = self.indices[j]
        try:
            x = self.preprocess.to_unnormalised(read_rgb(self.paths[i]))
        except ImageReadError as err:
            return i, None, err.reason
        except (OSError, ValueError, SyntaxError) as err:  # decoder faults Pillow lets through
            return i, None, f"{type(err).__name__}: {err}"
        as_bytes = (x * 255.0).round_().clamp_(0, 255).to(torch.uint8)
        exact = torch.equal(as_bytes.to(torch.float32).div(255), x)
        return i, (as_bytes if exact else x), ""


def keep_batch(batch: list[tuple[int, torch.Tensor | None, str]]) -> list[tuple[int, torch.Tensor | None, str]]:
    return batch


def one_thread(_: int) -> None:
    torch.set_num_threads(1)
