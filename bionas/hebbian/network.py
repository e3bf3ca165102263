"""The SoftHebb-style convolutional network of the Hebbian-CNN paper (Figure 3; Journe et al. 2023).

    block 1  BN -> conv 5x5 pad 2, 3 -> 96     -> triangle p=0.7 -> max-pool 4/2/1   (96 x 16 x 16)
    block 2  BN -> conv 3x3 pad 1, 96 -> 384   -> triangle p=1.4 -> max-pool 4/2/1   (384 x 8 x 8)
    block 3  BN -> conv 3x3 pad 1, 384 -> 1536 -> triangle p=1.0 -> avg-pool 2/2     (1536 x 4 x 4)
    head     flatten -> dropout -> linear 24,576 -> classes

With ``surround_forward`` a block whose rule has a DoG ``surround`` also applies that fixed kernel to
its convolution's output (``conv -> DoG -> triangle``), so the features carry the lateral inhibition
too; by default it shapes only the learning signal (see ``bionas/rules/hebbian.py``). The paper
lists it among the steps of "each forward pass" (section 3.1) without saying whether the layer's
output or only its update sees it, so both readings are offered.

Batch norms have no affine parameters (nothing to learn without a loss); convolutions have no
bias. With ``learning="hebbian"`` each convolution learns by :mod:`bionas.rules.hebbian` with its
block's options; the head is trained afterwards on the frozen features (see ``run.py``).

Initialisation: ``kaiming`` is PyTorch's default Conv2d draw (the paper's hard-WTA and backprop
setups); ``softhebb`` is SoftHebb's wide radius, ``W ~ 25 / sqrt(fan_in) * N(0, 1)``. The project
notes write ``|N(0, 1)|``; SoftHebb's public code draws signed normals, which is followed here
(all-positive filters would start identical in sign and the anti-Hebbian term could not separate
them as quickly). Both are drawn from a generator seeded by ``config.seed``.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from bionas import rules
from bionas.hebbian.config import HebbianConfig
from bionas.rules.conv_local import apply_surround

KERNELS = (5, 3, 3)
POWERS = (0.7, 1.4, 1.0)


class Triangle(nn.Module):
    """Triangle activation with a power (Miconi 2021; SoftHebb): ``y = relu(u - mean_c u) ** p``,
    the mean taken over channels at each position (reconstructed as in the project notes)."""

    def __init__(self, power: float):
        super().__init__()
        self.power = power

    def forward(self, u: Tensor) -> Tensor:
        y = torch.relu(u - u.mean(1, keepdim=True))  # (N, C, H, W)
        return y if self.power == 1 else y.pow(self.power)

    def extra_repr(self) -> str:
        return f"power={self.power}"


class Surround(nn.Module):
    """Fixed difference-of-Gaussians lateral inhibition on a feature map: every channel convolved
    with the same ``kernel`` (k x k, "same" padding), nothing learnt."""

    def __init__(self, kernel: Tensor):
        super().__init__()
        self.register_buffer("kernel", kernel.detach().clone().float(), persistent=False)

    def forward(self, u: Tensor) -> Tensor:
        return apply_surround(u, self.kernel)

    def extra_repr(self) -> str:
        return f"size={self.kernel.shape[-1]}"


class HebbianCNN(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, image_size: int, config: HebbianConfig):
        super().__init__()
        gen = torch.Generator().manual_seed(config.seed)
        widths = [in_channels, *config.channels]
        pools = [nn.MaxPool2d(4, 2, 1), nn.MaxPool2d(4, 2, 1), nn.AvgPool2d(2, 2)]
        blocks = []
        for i, k in enumerate(KERNELS):
            conv = nn.Conv2d(widths[i], widths[i + 1], k, padding=k // 2, bias=False)
            with torch.no_grad():
                if config.init == "softhebb":  # SoftHebb's wide initial radius: 25 / sqrt(fan_in) * N(0, 1)
                    conv.weight.normal_(0.0, 25 / math.sqrt(conv.weight[0].numel()), generator=gen)
                else:  # PyTorch's default Conv2d initialisation (Kaiming uniform, a = sqrt(5)), seeded
                    nn.init.kaiming_uniform_(conv.weight, a=math.sqrt(5), generator=gen)
            if config.learning == "hebbian":
                conv = rules.convert(conv, "hebbian", seed=config.seed + i, **config.layers[i])
            layers = [nn.BatchNorm2d(widths[i], affine=False), conv]
            if config.learning == "hebbian" and config.surround_forward and conv.rule.surround:
                layers.append(Surround(conv.rule.surround_kernel))
            blocks.append(nn.Sequential(*layers, Triangle(POWERS[i]), pools[i]))
        self.blocks = nn.Sequential(*blocks)
        self.feature_dim = widths[-1] * (image_size // 8) ** 2
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """(N, feature_dim): the flattened output of block 3."""
        return self.blocks(x).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.dropout(self.features(x)))
