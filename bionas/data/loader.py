"""Batches from in-memory images: seeded shuffling and batch-wise augmentation.

Augmentation follows the DARTS/CIFAR recipe -- random crop after zero padding, horizontal flip,
normalisation, then Cutout (DeVries & Taylor 2017, https://arxiv.org/abs/1708.04552) -- but is
applied to a whole batch at once with the loader's own ``torch.Generator``. Data order and
augmentation therefore depend only on the seed and the epoch, never on the global RNG, and a
loader's ``state_dict`` resumes them exactly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from bionas.data.arrays import ImageArrays


@dataclass(frozen=True)
class Augmentation:
    """``crop_padding``: pixels of zero padding before a random crop back to size (0: off);
    ``flip``: random horizontal flips; ``cutout``: side of the zeroed square (0: off)."""

    crop_padding: int = 0
    flip: bool = False
    cutout: int = 0


def draw_augmentation(aug: Augmentation, n: int, size: int, gen: torch.Generator) -> dict[str, Tensor]:
    """The random numbers of ``aug`` for ``n`` images of ``size`` x ``size``, drawn in a fixed
    order (crop offsets, flips, cutout centres); each entry has ``n`` rows, one per image."""
    draws = {}
    if aug.crop_padding > 0:
        draws["crop_y"] = torch.randint(0, 2 * aug.crop_padding + 1, (n,), generator=gen)
        draws["crop_x"] = torch.randint(0, 2 * aug.crop_padding + 1, (n,), generator=gen)
    if aug.flip:
        draws["flip"] = torch.rand(n, generator=gen) < 0.5
    if aug.cutout > 0:
        draws["cut_y"] = torch.randint(0, size, (n,), generator=gen)
        draws["cut_x"] = torch.randint(0, size, (n,), generator=gen)
    return draws


def apply_augmentation(x: Tensor, aug: Augmentation, draws: dict[str, Tensor], mean: Tensor, std: Tensor) -> Tensor:
    """Crop, flip, normalise, cutout ``x`` (B, C, H, W) in [0, 1] with the numbers in ``draws``."""
    if aug.crop_padding > 0:
        x = crop(x, aug.crop_padding, draws["crop_y"], draws["crop_x"])
    if aug.flip:
        x = torch.where(draws["flip"].to(x.device)[:, None, None, None], x.flip(3), x)
    x = (x - mean) / std
    if aug.cutout > 0:
        x = cut(x, aug.cutout, draws["cut_y"], draws["cut_x"])
    return x


def crop(x: Tensor, padding: int, oy: Tensor, ox: Tensor) -> Tensor:
    """Window ``[oy, oy + H) x [ox, ox + W)`` of each zero-padded image of ``x`` (B, C, H, W)."""
    B, _, H, W = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))  # (B, C, H+2p, W+2p)
    oy, ox = oy.to(x.device), ox.to(x.device)
    rows = (oy[:, None] + torch.arange(H, device=x.device))[:, :, None]  # (B, H, 1)
    cols = (ox[:, None] + torch.arange(W, device=x.device))[:, None, :]  # (B, 1, W)
    batch = torch.arange(B, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)  # (B, C, H, W)


def cut(x: Tensor, length: int, cy: Tensor, cx: Tensor) -> Tensor:
    """Zero rows ``[cy - length//2, cy + length//2)`` x the same columns of each image, clipped at
    the borders -- DeVries & Taylor's reference code."""
    _, _, H, W = x.shape
    cy, cx = cy.to(x.device)[:, None, None], cx.to(x.device)[:, None, None]  # (B, 1, 1)
    ys = torch.arange(H, device=x.device)[None, :, None]  # (1, H, 1)
    xs = torch.arange(W, device=x.device)[None, None, :]  # (1, 1, W)
    half = length // 2
    inside = (ys >= cy - half) & (ys < cy + half) & (xs >= cx - half) & (xs < cx + half)  # (B, H, W)
    return x.masked_fill(inside[:, None], 0.0)


class BatchLoader:
    """Iterates ``(images, labels)`` batches: float (B, C, H, W) normalised, int64 (B,).

    Args:
        data: the images (kept as uint8 until a batch is drawn).
        batch_size: images per batch; the last, smaller batch is kept unless ``drop_last``.
        shuffle: a fresh seeded permutation each epoch.
        augment: augmentation applied to every batch (``None``: none, e.g. for test data).
        seed: seeds this loader's generator (order and augmentation).
        device: where batches are produced (augmentation runs there too).
        memory_format: layout of the image batches (``torch.channels_last`` makes oneDNN's and
            cuDNN's depthwise convolutions much faster).
        shard: ``(rank, world)`` for data-parallel training: ``batch_size`` is then the *global*
            batch; every rank draws the same order and the same augmentation for the whole global
            batch and keeps its images ``rank::world`` (the split of ``DistributedSampler``), so
            the ranks' batches together are exactly the one-process batch.
    """

    def __init__(self, data: ImageArrays, batch_size: int, shuffle: bool = True,
                 augment: Augmentation | None = None, seed: int = 0, drop_last: bool = False,
                 device: torch.device | str = "cpu", memory_format: torch.memory_format = torch.contiguous_format,
                 shard: tuple[int, int] = (0, 1)):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        rank, world = shard
        if not 0 <= rank < world or batch_size % world:
            raise ValueError(f"shard {shard}: need 0 <= rank < world and a global batch ({batch_size}) "
                             f"divisible by the world size")
        self.shard = (rank, world)
        self.data, self.batch_size, self.shuffle = data, batch_size, shuffle
        self.augment, self.drop_last, self.device = augment, drop_last, torch.device(device)
        self.memory_format = memory_format
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch = 0
        self._mean = torch.tensor(data.mean, device=self.device)[None, :, None, None]
        self._std = torch.tensor(data.std, device=self.device)[None, :, None, None]

    def __len__(self) -> int:
        n = len(self.data)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        order = self.new_order()
        for b in range(len(self)):
            yield self.batch(order[b * self.batch_size:(b + 1) * self.batch_size])

    def new_order(self) -> Tensor:
        """The sample order of the next pass (a seeded permutation when shuffling)."""
        n = len(self.data)
        self.epoch += 1
        return torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)

    def batch(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        """Images ``idx`` as a normalised, augmented batch (augmentation draws from the loader's
        generator); with a shard, this rank's part of it."""
        aug, gen = self.augment, self.generator
        draws = draw_augmentation(aug, len(idx), self.data.image_size, gen) if aug is not None else None
        rank, world = self.shard
        if world > 1:
            idx = idx[rank::world]
            draws = {k: v[rank::world] for k, v in draws.items()} if draws is not None else None
        x = self.data.images[idx].to(self.device, non_blocking=True).float().div_(255.0)  # (B, C, H, W)
        if aug is not None:
            x = apply_augmentation(x, aug, draws, self._mean, self._std)
        else:
            x = (x - self._mean) / self._std
        return x.contiguous(memory_format=self.memory_format), self.data.labels[idx].to(self.device, non_blocking=True)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.epoch = int(state["epoch"])


class BatchStream:
    """An endless, resumable stream of full batches from a :class:`BatchLoader`.

    Passes over the data follow one another (a fresh seeded order each pass, the last partial
    batch of a pass dropped so every batch has ``batch_size`` images). Unlike a Python iterator
    the stream can be saved and resumed *mid-pass*: its ``state_dict`` holds the current order,
    the position in it and the loader's generator. DARTS draws its architecture batches from such
    a persistent iterator over the validation half.
    """

    def __init__(self, loader: BatchLoader):
        self.loader = loader
        self.batches_per_pass = len(loader.data) // loader.batch_size
        if self.batches_per_pass < 1:
            raise ValueError(f"{len(loader.data)} images cannot fill one batch of {loader.batch_size}")
        self.order: Tensor | None = None
        self.position = 0

    def __iter__(self) -> "BatchStream":
        return self

    def __next__(self) -> tuple[Tensor, Tensor]:
        if self.order is None or self.position >= self.batches_per_pass:
            self.order, self.position = self.loader.new_order(), 0
        size = self.loader.batch_size
        idx = self.order[self.position * size:(self.position + 1) * size]
        self.position += 1
        return self.loader.batch(idx)

    def state_dict(self) -> dict:
        return {"loader": self.loader.state_dict(), "order": self.order, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.loader.load_state_dict(state["loader"])
        self.order, self.position = state["order"], int(state["position"])
