"""Datasets: where images come from and how batches are made.

``load_dataset(name, data_dir, split)`` returns in-memory :class:`ImageArrays`; a
:class:`BatchLoader` turns them into normalised, augmented batches. The data directory is
``--data-dir`` or else the ``BIONAS_DATA`` environment variable. With neither, dataset ``auto``
falls back to scikit-learn's digits -- small, real, and installed with bionas -- and says so once.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable

from bionas.data.arrays import ImageArrays, balanced_subset, search_split
from bionas.data.cifar import load_cifar
from bionas.data.digits import load_digits
from bionas.data.imagenet16 import load_imagenet16
from bionas.data.loader import Augmentation, BatchLoader, BatchStream
from bionas.errors import DataError
from bionas.registry import Registry

log = logging.getLogger(__name__)

ENV_VAR = "BIONAS_DATA"

# name -> loader(root, split, per_class, seed); root is None for datasets that ship with a package
DATASETS: Registry[Callable[..., ImageArrays]] = Registry("dataset")
DATASETS.register("cifar10")(lambda root, split, per_class, seed: load_cifar("cifar10", root, split, per_class, seed))
DATASETS.register("cifar100")(lambda root, split, per_class, seed: load_cifar("cifar100", root, split, per_class, seed))
DATASETS.register("digits")(lambda root, split, per_class, seed: load_digits(split, per_class, seed))
DATASETS.register("imagenet16-120")(lambda root, split, per_class, seed: load_imagenet16(root, split, per_class, seed))

# too large for memory: read by bionas.data.imagenet.ImageFolderLoader in worker processes
STREAMED_DATASETS = ("imagenet",)

NEEDS_DIRECTORY = {"cifar10", "cifar100", "imagenet16-120", "imagenet"}

# the standard training augmentation of each dataset (a config may override it)
TRAIN_AUGMENTATION = {
    "cifar10": Augmentation(crop_padding=4, flip=True),
    "cifar100": Augmentation(crop_padding=4, flip=True),
    "digits": Augmentation(crop_padding=1, flip=False),  # a flipped digit is another symbol
    "imagenet16-120": Augmentation(crop_padding=2, flip=True),  # NAS-Bench-201's recipe
}

FALLBACK_NOTICE = ("no dataset directory given (--data-dir or BIONAS_DATA): using scikit-learn's "
                   "handwritten digits (1,797 real 8x8 images) as the small default dataset")


def resolve_data_dir(data_dir: str | Path | None = None) -> Path | None:
    """``data_dir`` if given, else ``$BIONAS_DATA`` if set and non-empty, else ``None``."""
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser()
    env = os.environ.get(ENV_VAR, "")
    return Path(env).expanduser() if env else None


def resolve_dataset_name(name: str, data_dir: str | Path | None = None) -> str:
    """Turn ``"auto"`` into a concrete name: cifar10 when a data directory is known, else digits."""
    if name != "auto":
        if name not in STREAMED_DATASETS:
            DATASETS.get(name)
        return name
    if resolve_data_dir(data_dir) is None:
        log.warning(FALLBACK_NOTICE)
        return "digits"
    return "cifar10"


def load_dataset(name: str, data_dir: str | Path | None = None, split: str = "train",
                 per_class: int | None = None, seed: int = 0) -> ImageArrays:
    """Load ``split`` (``"train"``/``"test"``) of dataset ``name`` into memory.

    ``per_class`` keeps a seeded class-balanced subset of that many images per class.
    """
    name = resolve_dataset_name(name, data_dir)
    if name in STREAMED_DATASETS:
        raise DataError(f"{name} does not fit in memory; read it with bionas.data.imagenet.ImageFolderLoader")
    root = resolve_data_dir(data_dir)
    if name in NEEDS_DIRECTORY and root is None:
        raise DataError(f"{name} needs a data directory: pass --data-dir DIR or set {ENV_VAR}=DIR "
                        f"(or use --dataset digits, which ships with scikit-learn)")
    return DATASETS.get(name)(root, split, per_class, seed)


__all__ = [
    "ImageArrays", "BatchLoader", "BatchStream", "Augmentation", "DATASETS", "TRAIN_AUGMENTATION", "ENV_VAR",
    "load_dataset", "resolve_data_dir", "resolve_dataset_name", "balanced_subset", "search_split",
    "load_cifar", "load_digits", "load_imagenet16", "STREAMED_DATASETS", "NEEDS_DIRECTORY",
]
