"""CIFAR ResNets (ResNet-20, ResNet-56) trained end to end by one learning rule.

He, Zhang, Ren & Sun (2016), "Deep Residual Learning for Image Recognition", CVPR, section 4.2:
a 3x3 convolution to 16 channels, three stages of ``n`` basic blocks at 16, 32 and 64 channels
(the first block of stages 2 and 3 halves the resolution), global average pooling and a linear
classifier; depth ``6n + 2`` (n=3: ResNet-20, 0.27 M weights; n=9: ResNet-56, 0.85 M). Shortcuts
are identities; where the shape changes, the paper's option A: subsample by 2 and zero-pad the
new channels (parameter-free, so every weight of the network is a convolution or the
classifier, and all of them learn by the chosen rule -- the setting of the biotorch baselines
BioNAS compares against, Sanfiz & Akrout 2021).
"""
from __future__ import annotations

from typing import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from bionas.registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


class BasicBlock(nn.Module):
    """conv3x3 -> BN -> ReLU -> conv3x3 -> BN, plus the shortcut, then ReLU."""

    def __init__(self, C_in: int, C_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(C_in, C_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(C_out)
        self.conv2 = nn.Conv2d(C_out, C_out, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(C_out)
        self.stride, self.pad = stride, C_out - C_in

    def shortcut(self, x: Tensor) -> Tensor:
        """Option A: identity, or every second pixel with zero channels appended."""
        if self.stride == 1 and self.pad == 0:
            return x
        x = x[:, :, ::self.stride, ::self.stride]  # (B, C_in, H/2, W/2)
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))  # (B, C_out, H/2, W/2)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """(B, C_in, H, W) -> (B, classes); ``blocks`` basic blocks per stage."""

    def __init__(self, blocks: int, num_classes: int, in_channels: int = 3, width: int = 16):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        layers, C = [], width
        for stage in range(3):
            C_out = width * 2 ** stage
            for b in range(blocks):
                layers.append(BasicBlock(C, C_out, 2 if stage > 0 and b == 0 else 1))
                C = C_out
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))  # (B, 16, H, W)
        x = self.layers(x)  # (B, 64, H/4, W/4)
        return self.classifier(self.pool(x).flatten(1))  # (B, classes)


@MODELS.register("resnet20")
def resnet20(num_classes: int, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(3, num_classes, in_channels)


@MODELS.register("resnet56")
def resnet56(num_classes: int, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(9, num_classes, in_channels)
