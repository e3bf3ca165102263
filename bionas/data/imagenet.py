"""ImageNet (ILSVRC-2012) from ``ImageFolder`` directories, decoded on the fly.

Layout: ``<root>/train/<wnid>/*.JPEG`` and ``<root>/val/<wnid>/*.JPEG`` (the usual torchvision
layout; the validation set is the test split). 1.28 M images do not fit in memory, so unlike
the CIFAR loaders this one decodes in ``DataLoader`` worker processes. Augmentation is the DARTS
/ PC-DARTS ImageNet recipe: random-resized crop to ``image_size``, horizontal flip, colour jitter
(0.4, 0.4, 0.4, 0.2); test images are resized to ``image_size * 8/7`` (256 for 224) and
centre-cropped.

Order and augmentation depend only on (seed, epoch): each epoch's permutation and the workers'
base seed come from a generator seeded by both, so a run resumed at an epoch boundary sees the
same images as an uninterrupted one. ``shard=(rank, world)`` splits each global batch like
``DistributedSampler`` (images ``rank::world`` of it).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import torch
from PIL import UnidentifiedImageError
from torch import Tensor

from bionas.data.arrays import balanced_subset, check_same_classes
from bionas.errors import DataError

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
SPLIT_FOLDERS = {"train": "train", "test": "val"}


def image_folder(root: str | Path, split: str):
    """The torchvision ``ImageFolder`` of ``split`` (``train`` or ``test`` = ``val/``), without transforms."""
    from torchvision.datasets import ImageFolder

    root = Path(root).expanduser()
    folder = root / SPLIT_FOLDERS[split]
    if not folder.is_dir():
        raise DataError(f"no ImageNet {split} split at {folder}: expected {root}/train/<class>/ and "
                        f"{root}/val/<class>/ image folders; pass --data-dir or set BIONAS_DATA")
    if split == "test" and (root / SPLIT_FOLDERS["train"]).is_dir():
        check_same_classes(root / SPLIT_FOLDERS["train"], folder)
    try:
        return ImageFolder(str(folder))
    except (FileNotFoundError, RuntimeError) as err:
        raise DataError(f"{folder} is not an image folder ({err})") from None


def transform(train: bool, image_size: int):
    from torchvision import transforms as T

    if train:
        return T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(),
                          T.ColorJitter(0.4, 0.4, 0.4, 0.2), T.ToTensor(), T.Normalize(MEAN, STD)])
    return T.Compose([T.Resize(round(image_size * 8 / 7)), T.CenterCrop(image_size), T.ToTensor(),
                      T.Normalize(MEAN, STD)])


class _Transformed(torch.utils.data.Dataset):
    def __init__(self, folder, indices: list[int], tf):
        self.folder, self.indices, self.tf = folder, indices, tf

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        try:
            image, label = self.folder[self.indices[i]]
        except (UnidentifiedImageError, OSError) as err:  # streamed: found when the batch is read
            path = self.folder.samples[self.indices[i]][0]
            raise DataError(f"{path} is not a readable image ({str(err).splitlines()[0][:80]}); remove or "
                            f"replace it, then continue with --resume") from None
        return self.tf(image), label


class ImageFolderLoader:
    """Batches ``(images (B, 3, S, S) normalised, labels (B,))`` from an ImageNet split.

    The interface is :class:`~bionas.data.BatchLoader`'s (``len``, iteration, ``epoch``,
    ``state_dict``); ``batch_size`` is the global batch when sharded.
    """

    def __init__(self, root: str | Path, split: str, batch_size: int, train: bool, seed: int = 0,
                 per_class: int | None = None, image_size: int = 224, workers: int = 4, drop_last: bool = False,
                 device: torch.device | str = "cpu", memory_format: torch.memory_format = torch.contiguous_format,
                 shard: tuple[int, int] = (0, 1)):
        rank, world = shard
        if batch_size % world:
            raise ValueError(f"the global batch ({batch_size}) must be divisible by the world size ({world})")
        self.folder = image_folder(root, split)
        self.classes = list(self.folder.classes)
        labels = torch.tensor(self.folder.targets, dtype=torch.int64)
        indices = (balanced_subset(labels, per_class * len(self.classes), seed) if per_class
                   else torch.arange(len(labels)))
        self.dataset = _Transformed(self.folder, indices.tolist(), transform(train, image_size))
        self.batch_size, self.train, self.seed, self.shard = batch_size, train, seed, shard
        self.drop_last, self.workers, self.device = drop_last, workers, torch.device(device)
        self.memory_format = memory_format
        self.epoch = 0

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _local_batches(self, generator: torch.Generator) -> list[list[int]]:
        n, (rank, world) = len(self.dataset), self.shard
        order = torch.randperm(n, generator=generator) if self.train else torch.arange(n)
        batches = [order[b * self.batch_size:(b + 1) * self.batch_size] for b in range(len(self))]
        return [b[rank::world].tolist() for b in batches if len(b[rank::world])]

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        self.epoch += 1
        loader = torch.utils.data.DataLoader(self.dataset, batch_sampler=self._local_batches(generator),
                                             num_workers=self.workers, generator=generator,
                                             pin_memory=self.device.type == "cuda",
                                             persistent_workers=False)
        batches = iter(loader)
        while True:
            try:
                x, y = next(batches)
            except StopIteration:
                return
            except DataError as err:  # from a worker: its message comes wrapped in the worker's traceback
                raise DataError(str(err).strip().splitlines()[-1].split("DataError: ", 1)[-1]) from None
            yield (x.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format),
                   y.to(self.device, non_blocking=True))

    def state_dict(self) -> dict:
        return {"epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
