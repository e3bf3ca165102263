"""CIFAR-10 and CIFAR-100 from either of their usual layouts.

* torchvision's pickles: ``<root>/cifar-10-batches-py/{data_batch_1..5,test_batch}`` and
  ``<root>/cifar-100-python/{train,test}`` (``<root>`` may also be that folder itself). Read
  directly, so no checksum is demanded.
* ``ImageFolder``: ``<root>/train/<class>/*`` and ``<root>/test/<class>/*`` (PNG or JPEG), classes
  in alphabetical order, which for CIFAR-10 is also the official label order.

Krizhevsky (2009), "Learning multiple layers of features from tiny images".
"""
from __future__ import annotations

import os
import pickle
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from bionas.data.arrays import ImageArrays, balanced_subset, check_same_classes
from bionas.errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}

SPECS = {
    # name: (pickle folder, train files, test files, label key, classes, mean, std)
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels", 10,
                (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels", 100,
                 (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


def _expected(name: str, root: Path) -> str:
    folder = SPECS[name][0]
    return (f"expected {name} at {root} as {folder}/ (torchvision pickles) or as train/<class>/ and "
            f"test/<class>/ image folders; pass --data-dir or set BIONAS_DATA")


def find_layout(name: str, root: Path) -> tuple[str, Path]:
    """``("pickle", folder)`` or ``("imagefolder", root)``; DataError naming what was expected."""
    folder, train_files = SPECS[name][0], SPECS[name][1]
    if not root.is_dir():
        raise DataError(f"dataset directory {root} does not exist; {_expected(name, root)}")
    for candidate in (root / folder, root):
        if all((candidate / f).is_file() for f in train_files):
            return "pickle", candidate
    if (root / "train").is_dir() and (root / "test").is_dir():
        return "imagefolder", root
    raise DataError(f"no {name} found in {root}; {_expected(name, root)}")


def _read_pickles(name: str, folder: Path, files: list[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    label_key = SPECS[name][3]
    images, labels = [], []
    for f in files:
        path = folder / f
        if not path.is_file():
            raise DataError(f"missing {path}; {_expected(name, folder.parent)}")
        with open(path, "rb") as fh:
            try:
                batch = pickle.load(fh, encoding="latin1")
            except (pickle.UnpicklingError, EOFError, ValueError) as err:
                raise DataError(f"{path} is not a readable CIFAR pickle ({err})") from None
        if "data" not in batch or label_key not in batch:
            raise DataError(f"{path} lacks 'data' or '{label_key}'; is it a {name} batch?")
        data = np.asarray(batch["data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise DataError(f"{path}: 'data' is {data.shape}, {name} rows hold 3072 bytes (3 x 32 x 32)")
        batch_labels = np.asarray(batch[label_key], dtype=np.int64)
        if len(batch_labels) != len(data):
            raise DataError(f"{path}: {len(batch_labels)} labels for {len(data)} images")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(batch_labels)
    meta_file = folder / ("batches.meta" if name == "cifar10" else "meta")
    classes = [str(i) for i in range(SPECS[name][4])]
    if meta_file.is_file():
        with open(meta_file, "rb") as fh:
            meta = pickle.load(fh, encoding="latin1")
        classes = list(meta.get("label_names") or meta.get("fine_label_names") or classes)
    return np.concatenate(images), np.concatenate(labels), classes


# listings of split folders already read by this process, keyed by the folders' modification
# times (a file added or removed changes its folder's): a sweep of runs lists each split once.
# A folder changed in the last seconds is not cached: a second change within the same tick of
# the file system's clock would leave its time as it was ("racy" timestamps, as git calls them)
_LISTINGS: dict[tuple, tuple[list[str], list[list[str]]]] = {}


def _folder_files(split_dir: Path) -> tuple[list[str], list[list[str]]]:
    """The class folders of ``split_dir`` and each one's image paths, sorted by name. Names are
    listed as strings: building and sorting 60,000 ``Path`` objects cost most of a small load."""
    with os.scandir(split_dir) as entries:
        classes = sorted(e.name for e in entries if e.is_dir())
    if not classes:
        raise DataError(f"{split_dir} has no class folders; expected {split_dir}/<class>/<image>")
    folders = [os.path.join(split_dir, c) for c in classes]
    times = tuple(os.stat(f).st_mtime_ns for f in folders)
    key = (os.path.abspath(split_dir), tuple(classes), times)
    if key in _LISTINGS:
        return _LISTINGS[key]
    files = []
    for folder in folders:
        names = sorted(n for n in os.listdir(folder) if os.path.splitext(n)[1].lower() in IMAGE_SUFFIXES)
        files.append([os.path.join(folder, n) for n in names])
    empty = [c for c, fs in zip(classes, files) if not fs]
    if empty:
        raise DataError(f"class folders without images in {split_dir}: {', '.join(empty[:5])}")
    if max(times) < time.time_ns() - 2_000_000_000:
        _LISTINGS[key] = classes, files
    return classes, files


def _decode(path: str | Path) -> np.ndarray:
    """One image as (32, 32, 3) uint8. A file that is not an image, or is truncated, stops the
    load at once naming it (the policy of every loader: a dataset is read whole or not at all)."""
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(f"{path} is not a readable image ({str(err).splitlines()[0][:80]}); remove or replace "
                        f"it") from None
    if arr.shape != (32, 32, 3):
        raise DataError(f"{path} is {arr.shape[1]}x{arr.shape[0]}, CIFAR images are 32x32")
    return arr


def load_cifar(name: str, root: str | Path, split: str, per_class: int | None = None, seed: int = 0) -> ImageArrays:
    """Load split ``"train"`` or ``"test"`` of ``cifar10``/``cifar100`` into memory.

    ``per_class`` keeps a seeded, class-balanced subset of that many images per class
    (:func:`~bionas.data.arrays.balanced_subset`, the same choice for either layout).
    """
    if name not in SPECS:
        raise DataError(f"unknown CIFAR variant {name!r}; choose cifar10 or cifar100")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root).expanduser()
    layout, where = find_layout(name, root)
    mean, std = SPECS[name][5], SPECS[name][6]
    if layout == "pickle":
        files = SPECS[name][1] if split == "train" else SPECS[name][2]
        images, labels, classes = _read_pickles(name, where, files)
        images_t, labels_t = torch.from_numpy(images), torch.from_numpy(labels)
        if per_class is not None:
            keep = balanced_subset(labels_t, per_class * len(classes), seed)
            images_t, labels_t = images_t[keep], labels_t[keep]
    else:
        classes, files = _folder_files(where / split)
        if split == "test":
            check_same_classes(where / "train", where / "test")
        if len(classes) != SPECS[name][4]:
            raise DataError(f"{where / split} has {len(classes)} class folders, {name} has {SPECS[name][4]}")
        paths = [p for class_files in files for p in class_files]
        labels_t = torch.tensor([label for label, fs in enumerate(files) for _ in fs], dtype=torch.int64)
        if per_class is not None:  # pick before decoding: a small subset loads in a fraction of a second
            keep = balanced_subset(labels_t, per_class * len(classes), seed)
            paths, labels_t = [paths[i] for i in keep], labels_t[keep]
        images_t = torch.from_numpy(np.stack([_decode(p) for p in paths])).permute(0, 3, 1, 2).contiguous()
    return ImageArrays(name, images_t, labels_t, classes, mean, std)
