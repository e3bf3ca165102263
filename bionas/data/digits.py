"""The fallback dataset: scikit-learn's handwritten digits (real, small, ships with sklearn).

1,797 grey 8x8 images of the digits 0-9 (Alpaydin & Kaynak, UCI "Optical Recognition of
Handwritten Digits"), pixel values 0..16 rescaled to 0..255. A fixed stratified split keeps
20% of each class (359 images) as the test set. Used when no dataset directory is given, so the main job runs
on a fresh machine with nothing downloaded.
"""
from __future__ import annotations

import numpy as np
import torch

from bionas.data.arrays import ImageArrays, balanced_subset

TEST_FRACTION = 0.2


def load_digits(split: str, per_class: int | None = None, seed: int = 0) -> ImageArrays:
    from sklearn.datasets import load_digits as sk_load_digits

    data = sk_load_digits()
    images = np.rint(data.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # (1797, 1, 8, 8)
    labels = data.target.astype(np.int64)
    # Fixed split, independent of ``seed``: the first 20% of each class (in file order) is test.
    test_mask = np.zeros(len(labels), dtype=bool)
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        test_mask[idx[: int(round(len(idx) * TEST_FRACTION))]] = True
    keep = test_mask if split == "test" else ~test_mask
    images_t, labels_t = torch.from_numpy(images[keep]), torch.from_numpy(labels[keep])
    if per_class is not None:
        sel = balanced_subset(labels_t, per_class * 10, seed)
        images_t, labels_t = images_t[sel], labels_t[sel]
    # statistics of the whole set, so that they do not depend on the split or subset
    scaled = images.astype(np.float64) / 255.0
    return ImageArrays("digits", images_t, labels_t, [str(i) for i in range(10)],
                       (float(scaled.mean()),), (float(scaled.std()),))
