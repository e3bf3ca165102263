"""In-memory image datasets: one uint8 tensor of images and one of labels.

CIFAR-sized data fits in memory many times over (50,000 x 3 x 32 x 32 bytes = 150 MB), and
keeping it as tensors lets augmentation run batch-wise with its own generator, which makes data
order and augmentation exactly resumable.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from bionas.errors import DataError


@dataclass
class ImageArrays:
    """``images``: (N, C, H, W) uint8; ``labels``: (N,) int64; ``classes``: names by label."""

    name: str
    images: Tensor
    labels: Tensor
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be (N, C, H, W) uint8, got {tuple(self.images.shape)} {self.images.dtype}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"{len(self.labels)} labels for {self.images.shape[0]} images")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"mean/std need {self.channels} entries")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> int:
        return self.images.shape[2]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, indices: Tensor) -> "ImageArrays":
        return ImageArrays(self.name, self.images[indices], self.labels[indices], self.classes, self.mean, self.std)


def check_same_classes(train_dir: Path, test_dir: Path) -> None:
    """Refuse a test split whose class folders are not the training split's, by name: labels are
    folder indices in sorted order, so one renamed folder would shift every label silently."""
    train = sorted(d.name for d in Path(train_dir).iterdir() if d.is_dir())
    test = sorted(d.name for d in Path(test_dir).iterdir() if d.is_dir())
    if train != test:
        only_train, only_test = sorted(set(train) - set(test)), sorted(set(test) - set(train))
        raise DataError(f"the class folders of {test_dir} are not those of {train_dir} (only in train: "
                        f"{', '.join(only_train) or '-'}; only in test: {', '.join(only_test) or '-'}); "
                        f"name the test split's class folders as the training split's")


def balanced_subset(labels: Tensor, n: int, seed: int) -> Tensor:
    """Indices of ``n`` samples with (as near as possible) equal counts per class, seeded.

    The result is sorted, and a smaller ``n`` with the same seed gives a subset of a larger one's
    per-class picks, so subsets nest.
    """
    if n >= len(labels):
        return torch.arange(len(labels))
    gen = torch.Generator().manual_seed(seed)
    classes = labels.unique()
    per_class = [torch.nonzero(labels == c).flatten() for c in classes]
    per_class = [idx[torch.randperm(len(idx), generator=gen)] for idx in per_class]
    quota = [n // len(classes) + (1 if i < n % len(classes) else 0) for i in range(len(classes))]
    picks = [idx[:q] for idx, q in zip(per_class, quota)]
    return torch.cat(picks).sort().values


def search_split(n: int, seed: int, fraction: float = 0.5) -> tuple[Tensor, Tensor]:
    """Split ``range(n)`` into disjoint (weights, architecture) index sets, as DARTS does.

    ``fraction`` of a seeded permutation trains the weights, the rest the architecture.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"search split fraction must be in (0, 1), got {fraction}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    cut = int(round(n * fraction))
    return perm[:cut].sort().values, perm[cut:].sort().values
