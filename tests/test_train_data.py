"""The retraining datasets' formats: ImageNet16-120 pickles, ImageNet image folders, sharded batches.

Format checks read small files written here in the official layouts; accuracy checks elsewhere
use the real CIFAR-10.
"""
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from bionas.data import BatchLoader, TRAIN_AUGMENTATION, load_dataset
from bionas.data.imagenet16 import load_imagenet16
from bionas.errors import DataError


def write_imagenet16(folder, per_file=12, seed=0):
    """ImageNet16 in Chrabaszcz et al.'s format: rows of R, G, B planes; 1-based labels up to 1000."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in [f"train_data_batch_{i}" for i in range(1, 11)] + ["val_data"]:
        data = rng.integers(0, 256, (per_file, 768), dtype=np.uint8)
        labels = [int(v) for v in rng.choice([1, 2, 3, 60, 120, 121, 500, 1000], per_file)]
        with open(folder / name, "wb") as fh:
            pickle.dump({"data": data, "labels": labels, "mean": np.zeros(768)}, fh)
        written[name] = (data, labels)
    return written


def test_imagenet16_120_keeps_labels_1_to_120_shifted_to_0_and_reads_planes(tmp_path):
    written = write_imagenet16(tmp_path / "ImageNet16")
    train = load_imagenet16(tmp_path, "train")
    data = np.concatenate([written[f"train_data_batch_{i}"][0] for i in range(1, 11)])
    labels = np.concatenate([written[f"train_data_batch_{i}"][1] for i in range(1, 11)])
    keep = labels <= 120
    assert train.images.shape == (keep.sum(), 3, 16, 16) and train.num_classes == 120
    assert train.labels.tolist() == (labels[keep] - 1).tolist()
    assert set(train.labels.tolist()) <= {0, 1, 2, 59, 119}
    first = data[keep][0]
    # channel c of pixel (row, col) is byte c * 256 + row * 16 + col
    assert train.images[0, 1, 3, 5] == first[256 + 3 * 16 + 5]
    assert train.images[0, 2, 15, 0] == first[512 + 15 * 16]
    test = load_imagenet16(tmp_path / "ImageNet16", "test")  # the folder itself works too
    assert len(test) == (np.array(written["val_data"][1]) <= 120).sum()
    # through the registry, as the trainer loads it
    assert len(load_dataset("imagenet16-120", tmp_path, "test")) == len(test)
    assert TRAIN_AUGMENTATION["imagenet16-120"].crop_padding == 2


def test_imagenet16_errors_name_the_problem(tmp_path):
    with pytest.raises(DataError, match="no ImageNet16 pickles.*train_data_batch_1..10"):
        load_imagenet16(tmp_path, "train")
    write_imagenet16(tmp_path)
    with open(tmp_path / "val_data", "wb") as fh:
        pickle.dump({"data": np.zeros((2, 100), np.uint8), "labels": [1, 2]}, fh)
    with pytest.raises(DataError, match="768 bytes"):
        load_imagenet16(tmp_path, "test")
    with open(tmp_path / "val_data", "wb") as fh:
        pickle.dump({"data": np.zeros((2, 768), np.uint8), "labels": [0, 2]}, fh)
    with pytest.raises(DataError, match="1-based"):
        load_imagenet16(tmp_path, "test")


def write_image_folder(root, classes=("n01", "n02"), per_class=6):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (40 + i, 48, 3), dtype=np.uint8)).save(root / split / c / f"{i}.JPEG")


def test_imagenet_folder_loader_batches_shards_and_repeats(tmp_path):
    from bionas.data.imagenet import ImageFolderLoader

    write_image_folder(tmp_path)
    loader = ImageFolderLoader(tmp_path, "train", 4, train=True, seed=1, image_size=32, workers=0, drop_last=True)
    assert loader.classes == ["n01", "n02"] and len(loader) == 3
    batches = list(loader)
    assert [tuple(x.shape) for x, _ in batches] == [(4, 3, 32, 32)] * 3
    labels = torch.cat([y for _, y in batches])
    assert sorted(labels.tolist()) == [0] * 6 + [1] * 6
    # two shards of the same epoch hold exactly the one-process batches' labels
    shards = [ImageFolderLoader(tmp_path, "train", 4, True, seed=1, image_size=32, workers=0, drop_last=True,
                                shard=(r, 2)) for r in range(2)]
    per_rank = [[y for _, y in s] for s in shards]
    for b, (_, y) in enumerate(batches):
        assert sorted(torch.cat([per_rank[0][b], per_rank[1][b]]).tolist()) == sorted(y.tolist())
    # test split (val/): centre crops, no randomness
    test = ImageFolderLoader(tmp_path, "test", 5, train=False, image_size=32, workers=0)
    a, b = torch.cat([x for x, _ in test]), torch.cat([x for x, _ in test])
    assert a.shape == (12, 3, 32, 32) and torch.equal(a, b)
    with pytest.raises(DataError, match="no ImageNet train split"):
        ImageFolderLoader(tmp_path / "missing", "train", 4, train=True)


def test_sharded_batches_are_the_one_process_batch_split_rank_by_rank(cifar10_small):
    train = cifar10_small[0]
    aug = TRAIN_AUGMENTATION["cifar10"]
    from dataclasses import replace

    aug = replace(aug, cutout=16)
    one = list(BatchLoader(train, 8, augment=aug, seed=5, drop_last=True))[:3]
    ranks = [list(BatchLoader(train, 8, augment=aug, seed=5, drop_last=True, shard=(r, 2)))[:3] for r in range(2)]
    for b, (x, y) in enumerate(one):
        assert torch.equal(ranks[0][b][0], x[0::2]) and torch.equal(ranks[1][b][0], x[1::2])
        assert torch.equal(ranks[0][b][1], y[0::2]) and torch.equal(ranks[1][b][1], y[1::2])
    with pytest.raises(ValueError, match="divisible"):
        BatchLoader(train, 9, shard=(0, 2))


def test_imagenet_training_runs_end_to_end_on_a_tiny_image_folder(tmp_path):
    """The ImageNet path of ``bionas train``: folder loader, the ImageNet network, its recipe."""
    from bionas.models import NetworkImageNet
    from bionas.train import load_trained, resolve_config, run_train

    write_image_folder(tmp_path / "imagenet")
    config = resolve_config(None, None, {"genotype": "darts_v1", "dataset": "imagenet",
                                         "data_dir": str(tmp_path / "imagenet"), "image_size": 64, "workers": 0,
                                         "channels": 8, "layers": 3, "epochs": 1, "batch_size": 4,
                                         "eval_batch_size": 6, "out": str(tmp_path / "run"), "progress": False})
    assert (config.base_preset, config.warmup_epochs, config.label_smoothing) == ("imagenet", 5, 0.1)
    result = run_train(config)
    assert len(result.history) == 1 and 0.0 <= result.test_acc <= 1.0
    trained = load_trained(tmp_path / "run" / "checkpoint.pt")
    assert isinstance(trained.model, NetworkImageNet) and trained.data.num_classes == 2


@pytest.mark.parametrize("workers", [0, 1])
def test_a_bad_image_in_a_streamed_split_is_one_line_naming_it(tmp_path, workers):
    from bionas.data.imagenet import ImageFolderLoader

    write_image_folder(tmp_path)
    victim = tmp_path / "train" / "n02" / "3.JPEG"
    victim.write_bytes(victim.read_bytes()[:100])  # truncated
    loader = ImageFolderLoader(tmp_path, "train", 4, train=True, seed=1, image_size=32, workers=workers)
    with pytest.raises(DataError, match="is not a readable image") as err:
        list(loader)
    assert str(victim) in str(err.value) and "\n" not in str(err.value)
