"""ImageNet16-120: downsampled ImageNet at 16x16, its first 120 classes (NAS-Bench-201).

Chrabaszcz, Loshchilov & Hutter (2017), "A Downsampled Variant of ImageNet as an Alternative to
the CIFAR datasets" (https://arxiv.org/abs/1707.08819) publish ImageNet16 as pickles
``train_data_batch_1`` .. ``train_data_batch_10`` and ``val_data``: dicts with ``data`` (N, 768)
uint8, each row the R, G and B planes of a 16x16 image one after another (CIFAR's order), and
``labels``, 1-based class numbers 1..1000. Dong & Yang (2020), "NAS-Bench-201"
(https://arxiv.org/abs/2001.00326) keep the images whose label is 1..120 and shift the labels
to 0..119 -- ImageNet16-120. ``val_data`` is the test split (NAS-Bench-201 reports accuracy on
it). The folder is ``<root>`` itself or ``<root>/ImageNet16``.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from bionas.data.arrays import ImageArrays, balanced_subset
from bionas.errors import DataError

TRAIN_FILES = [f"train_data_batch_{i}" for i in range(1, 11)]
TEST_FILES = ["val_data"]
CLASSES = 120
# NAS-Bench-201's normalisation for ImageNet16 (its datasets/get_dataset_with_transform.py)
MEAN = (122.68 / 255, 116.66 / 255, 104.01 / 255)
STD = (63.22 / 255, 61.26 / 255, 65.09 / 255)


def find_folder(root: Path) -> Path:
    for candidate in (root / "ImageNet16", root):
        if all((candidate / f).is_file() for f in TRAIN_FILES + TEST_FILES):
            return candidate
    raise DataError(f"no ImageNet16 pickles in {root}: expected train_data_batch_1..10 and val_data there or in "
                    f"{root}/ImageNet16 (the NAS-Bench-201 download); pass --data-dir or set BIONAS_DATA")


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(images (N, 3, 16, 16) uint8, 1-based labels (N,))`` of one pickle file."""
    with open(path, "rb") as fh:
        try:
            batch = pickle.load(fh, encoding="latin1")
        except (pickle.UnpicklingError, EOFError, ValueError) as err:
            raise DataError(f"{path} is not a readable ImageNet16 pickle ({err})") from None
    if not isinstance(batch, dict) or "data" not in batch or "labels" not in batch:
        raise DataError(f"{path} lacks 'data' or 'labels'; is it an ImageNet16 batch?")
    data = np.asarray(batch["data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 16 * 16:
        raise DataError(f"{path}: 'data' is {data.shape}, ImageNet16 rows hold 768 bytes (3 x 16 x 16)")
    labels = np.asarray(batch["labels"], dtype=np.int64)
    if len(labels) != len(data):
        raise DataError(f"{path}: {len(labels)} labels for {len(data)} images")
    if len(labels) and labels.min() < 1:
        raise DataError(f"{path}: labels must be 1-based (1..1000), found {labels.min()}")
    return data.reshape(-1, 3, 16, 16), labels


def load_imagenet16(root: str | Path, split: str, per_class: int | None = None, seed: int = 0,
                    classes: int = CLASSES) -> ImageArrays:
    """Split ``"train"`` or ``"test"`` (``val_data``) of ImageNet16 restricted to labels 1..``classes``."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"dataset directory {root} does not exist; pass --data-dir or set BIONAS_DATA")
    folder = find_folder(root)
    images, labels = [], []
    for name in TRAIN_FILES if split == "train" else TEST_FILES:
        x, y = read_batch(folder / name)
        keep = y <= classes
        images.append(x[keep])
        labels.append(y[keep] - 1)  # 1-based -> 0-based
    images_t = torch.from_numpy(np.concatenate(images))
    labels_t = torch.from_numpy(np.concatenate(labels))
    if len(labels_t) == 0:
        raise DataError(f"no images with labels 1..{classes} in {folder} ({split})")
    if per_class is not None:
        keep_t = balanced_subset(labels_t, per_class * classes, seed)
        images_t, labels_t = images_t[keep_t], labels_t[keep_t]
    return ImageArrays(f"imagenet16-{classes}", images_t, labels_t, [str(i) for i in range(classes)], MEAN, STD)
