"""Dataset layouts, subsets, splits, augmentation and the errors for bad directories."""
import pickle

import numpy as np
import pytest
import torch

from bionas.data import (Augmentation, BatchLoader, balanced_subset, load_dataset, resolve_dataset_name,
                         search_split)
from bionas.data.loader import crop, cut, draw_augmentation
from bionas.errors import DataError


def test_imagefolder_cifar10_subset(cifar10_root):
    d = load_dataset("cifar10", cifar10_root, "train", per_class=20, seed=3)
    assert d.images.shape == (200, 3, 32, 32) and d.images.dtype == torch.uint8
    assert d.classes[:3] == ["airplane", "automobile", "bird"] and d.num_classes == 10
    assert torch.bincount(d.labels).tolist() == [20] * 10
    again = load_dataset("cifar10", cifar10_root, "train", per_class=20, seed=3)
    assert torch.equal(d.images, again.images)
    other = load_dataset("cifar10", cifar10_root, "train", per_class=20, seed=4)
    assert not torch.equal(d.images, other.images)
    # real photographs: per-channel means near the published CIFAR-10 statistics
    mean = d.images.float().mean((0, 2, 3)) / 255
    assert torch.allclose(mean, torch.tensor([0.49, 0.48, 0.45]), atol=0.05)


def write_cifar10_pickles(root, per_batch=4):
    """Small files in the official torchvision layout (format check only)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 "labels": list(rng.integers(0, 10, per_batch)), "batch_label": name}
        with open(folder / name, "wb") as fh:
            pickle.dump(batch, fh)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, fh)
    return folder


def test_pickle_layout_reads_official_format(tmp_path):
    folder = write_cifar10_pickles(tmp_path)
    train = load_dataset("cifar10", tmp_path, "train")
    test = load_dataset("cifar10", folder, "test")  # the batches folder itself also works
    assert train.images.shape == (20, 3, 32, 32) and test.images.shape == (4, 3, 32, 32)
    with open(folder / "data_batch_1", "rb") as fh:
        raw = pickle.load(fh)
    # row-major 3072 = 3 x 32 x 32, red plane first
    assert torch.equal(train.images[0], torch.from_numpy(raw["data"][0].reshape(3, 32, 32)))
    assert train.labels[:4].tolist() == [int(v) for v in raw["labels"]]
    assert train.classes[0] == "c0"


def test_missing_and_malformed_directories_fail_with_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.delenv("BIONAS_DATA", raising=False)
    with pytest.raises(DataError, match=r"does not exist; expected cifar10 at .*cifar-10-batches-py/.*train/<class>/") as err:
        load_dataset("cifar10", tmp_path / "nowhere")
    assert "\n" not in str(err.value)
    (tmp_path / "train").mkdir()
    with pytest.raises(DataError, match="no cifar10 found in"):
        load_dataset("cifar10", tmp_path)
    (tmp_path / "test").mkdir()
    (tmp_path / "train" / "cat").mkdir()
    with pytest.raises(DataError, match="without images"):
        load_dataset("cifar10", tmp_path)
    with pytest.raises(DataError, match="needs a data directory: pass --data-dir"):
        load_dataset("cifar10", None)
    folder = write_cifar10_pickles(tmp_path / "train" / "cat")
    (folder / "data_batch_2").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="not a readable CIFAR pickle"):
        load_dataset("cifar10", folder)


def test_auto_falls_back_to_digits_and_announces_it(monkeypatch, caplog):
    monkeypatch.delenv("BIONAS_DATA", raising=False)
    with caplog.at_level("WARNING"):
        assert resolve_dataset_name("auto") == "digits"
    assert "digits" in caplog.text and "BIONAS_DATA" in caplog.text
    train, test = load_dataset("auto", split="train"), load_dataset("auto", split="test")
    assert train.images.shape[1:] == (1, 8, 8) and len(train) + len(test) == 1797
    assert train.num_classes == 10 and train.images.max() == 255
    monkeypatch.setenv("BIONAS_DATA", "/some/dir")
    assert resolve_dataset_name("auto") == "cifar10"


def test_balanced_subset_and_search_split():
    labels = torch.arange(100) % 4
    idx = balanced_subset(labels, 10, seed=0)
    assert torch.bincount(labels[idx]).tolist() == [3, 3, 2, 2]
    w, a = search_split(1001, seed=0)
    assert len(w) == 500 or len(w) == 501
    assert len(set(w.tolist()) & set(a.tolist())) == 0 and len(w) + len(a) == 1001
    w2, _ = search_split(1001, seed=0)
    assert torch.equal(w, w2)


def test_random_crop_is_a_shifted_window_of_the_zero_padded_image():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).reshape(2, 1, 6, 6) + 1
    d = draw_augmentation(Augmentation(crop_padding=2), 2, 6, torch.Generator().manual_seed(0))
    out = crop(x, 2, d["crop_y"], d["crop_x"])  # what the loader applies
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for b in range(2):
        matches = [(i, j) for i in range(5) for j in range(5) if torch.equal(padded[b, :, i:i + 6, j:j + 6], out[b])]
        assert len(matches) == 1


def test_cutout_zeroes_one_clipped_square():
    x = torch.ones(64, 3, 32, 32)
    d = draw_augmentation(Augmentation(cutout=16), 64, 32, torch.Generator().manual_seed(0))
    out = cut(x, 16, d["cut_y"], d["cut_x"])  # what the loader applies
    zeros = (out == 0).all(1)  # (B, H, W): all channels zeroed together
    assert ((out == 0) == zeros[:, None]).all()
    for b in range(64):
        rows, cols = zeros[b].any(1).nonzero().flatten(), zeros[b].any(0).nonzero().flatten()
        assert zeros[b].sum() == len(rows) * len(cols)  # a rectangle
        assert len(rows) <= 16 and len(cols) <= 16 and len(rows) >= 8 and len(cols) >= 8
    assert (zeros.sum((1, 2)) == 256).any()  # unclipped squares are 16 x 16


def test_loader_normalises_shuffles_reproducibly_and_resumes(cifar10_small):
    train, _ = cifar10_small
    loader = BatchLoader(train, 250, augment=Augmentation(4, True, 16), seed=1)
    first = [y for _, y in loader]
    assert len(first) == 8 and sum(len(y) for y in first) == 2000
    plain = BatchLoader(train, 2000, shuffle=False)
    x, _ = next(iter(plain))
    assert abs(float(x.mean())) < 0.1 and abs(float(x.std()) - 1) < 0.1
    state = loader.state_dict()
    second = [x for x, _ in loader]
    resumed = BatchLoader(train, 250, augment=Augmentation(4, True, 16), seed=1)
    resumed.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(second, (x for x, _ in resumed)))


def test_cifar100_pickle_layout_reads_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for name, n in (("train", 6), ("test", 3)):
        with open(folder / name, "wb") as fh:
            pickle.dump({"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         "fine_labels": [0, 99, 5, 7, 42, 1][:n], "coarse_labels": [0] * n}, fh)
    with open(folder / "meta", "wb") as fh:
        pickle.dump({"fine_label_names": [f"f{i}" for i in range(100)]}, fh)
    train = load_dataset("cifar100", tmp_path, "train")
    assert train.labels.tolist() == [0, 99, 5, 7, 42, 1] and train.num_classes == 100
    assert train.classes[99] == "f99" and len(load_dataset("cifar100", tmp_path, "test")) == 3


def test_loader_memory_format_changes_the_layout_not_the_values(cifar10_small):
    import torch

    from bionas.data import Augmentation, BatchLoader

    train, _ = cifar10_small
    aug = Augmentation(crop_padding=4, flip=True, cutout=8)
    plain = next(iter(BatchLoader(train, 16, augment=aug, seed=3)))
    cl = next(iter(BatchLoader(train, 16, augment=aug, seed=3, memory_format=torch.channels_last)))
    assert cl[0].is_contiguous(memory_format=torch.channels_last) and not plain[0].is_contiguous(
        memory_format=torch.channels_last)
    assert torch.equal(plain[0], cl[0]) and torch.equal(plain[1], cl[1])


def test_a_test_split_whose_class_folders_differ_from_training_is_refused(cifar10_root, tmp_path):
    """Labels are folder indices: test/airplane renamed test/zebra would shift every test label."""
    classes = sorted(d.name for d in (cifar10_root / "train").iterdir() if d.is_dir())
    for split in ("train", "test"):
        for c in classes:
            target = tmp_path / split / ("zebra" if (split, c) == ("test", "airplane") else c)
            target.mkdir(parents=True)
            for image in sorted((cifar10_root / split / c).iterdir())[:2]:  # real images, linked
                (target / image.name).symlink_to(image)
    assert len(load_dataset("cifar10", tmp_path, "train")) == 20  # the training split alone is fine
    with pytest.raises(DataError, match=r"only in train: airplane; only in test: zebra\); name the test split"):
        load_dataset("cifar10", tmp_path, "test")


def _copy_cifar_subset(src, dst, per_class: int = 2):
    """A real CIFAR-10 ImageFolder of ``per_class`` JPEGs per class and split."""
    import shutil

    for split in ("train", "test"):
        for cls in sorted(p.name for p in (src / split).iterdir() if p.is_dir()):
            (dst / split / cls).mkdir(parents=True)
            for f in sorted((src / split / cls).iterdir())[:per_class]:
                shutil.copy(f, dst / split / cls / f.name)
    return dst


def test_a_folder_listing_is_read_once_and_read_again_when_a_folder_changes(cifar10_root, tmp_path):
    """The listing, sorted by file name, is cached per process while the class folders keep their
    modification times; an image added to a folder (or one changed moments ago) is seen."""
    import os
    import shutil
    import time

    from bionas.data import cifar

    root = _copy_cifar_subset(cifar10_root, tmp_path / "data", per_class=3)
    past = time.time() - 60
    for folder in (root / "train").iterdir():
        os.utime(folder, (past, past))
    classes, files = cifar._folder_files(root / "train")
    assert classes == sorted(p.name for p in (cifar10_root / "train").iterdir())
    assert files == [sorted(str(f) for f in (root / "train" / c).iterdir()) for c in classes]
    assert cifar._folder_files(root / "train")[1] is files  # the cached listing
    first = load_dataset("cifar10", root, "train")
    new = root / "train" / "cat" / "0000_added.jpg"
    shutil.copy(next((cifar10_root / "train" / "dog").iterdir()), new)  # the cat folder's time moves
    again = cifar._folder_files(root / "train")[1]
    assert again is not files and str(new) in again[classes.index("cat")]
    assert cifar._folder_files(root / "train")[1] is not again  # changed just now: not cached yet
    assert len(load_dataset("cifar10", root, "train")) == len(first) + 1


@pytest.mark.parametrize("damage,message", [
    (lambda f: f.write_bytes(b"this is not an image"), "is not a readable image"),
    (lambda f: f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2]), "is not a readable image"),
])
def test_a_bad_or_truncated_image_stops_the_load_naming_the_file(cifar10_root, tmp_path, damage, message):
    root = _copy_cifar_subset(cifar10_root, tmp_path / "data")
    victim = sorted((root / "train" / "cat").iterdir())[0]
    damage(victim)
    with pytest.raises(DataError, match=message) as err:
        load_dataset("cifar10", root, "train")
    assert str(victim) in str(err.value) and "\n" not in str(err.value)


def test_cifar_pickle_rows_of_the_wrong_length_are_named(tmp_path):
    folder = write_cifar10_pickles(tmp_path)
    with open(folder / "data_batch_3", "wb") as fh:
        pickle.dump({"data": np.zeros((4, 3000), dtype=np.uint8), "labels": [0, 1, 2, 3]}, fh)
    with pytest.raises(DataError, match=r"data_batch_3: 'data' is \(4, 3000\), cifar10 rows hold 3072 bytes"):
        load_dataset("cifar10", tmp_path, "train")
    with open(folder / "data_batch_3", "wb") as fh:
        pickle.dump({"data": np.zeros((4, 3072), dtype=np.uint8), "labels": [0, 1]}, fh)
    with pytest.raises(DataError, match="data_batch_3: 2 labels for 4 images"):
        load_dataset("cifar10", tmp_path, "train")
