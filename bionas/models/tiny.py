"""A small network made of DARTS ops, used by the quickstart and the rule tests.

Stem conv -> sep_conv_3x3 -> skip (factorized reduction, stride 2) -> dil_conv_3x3 ->
sep_conv_3x3 (stride 2) -> global average pool -> linear classifier. Six blocks, each of which
can learn by its own rule, so one network can hold every rule at once (the BioNAS idea in
miniature).
"""
from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from bionas import ops, rules


class TinyNet(nn.Module):
    BLOCKS = ("stem", "sep1", "reduce1", "dil", "reduce2", "classifier")

    def __init__(self, in_channels: int, num_classes: int, C: int = 16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C, 3, padding=1, bias=False), nn.BatchNorm2d(C))
        self.sep1 = ops.create_op("sep_conv_3x3", C, 1)
        self.reduce1 = ops.create_op("skip_connect", C, 2)
        self.dil = ops.create_op("dil_conv_3x3", C, 1)
        self.reduce2 = ops.create_op("sep_conv_3x3", C, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)  # (B, C, H, W)
        x = x + self.sep1(x)
        x = self.reduce1(x)  # (B, C, H/2, W/2)
        x = x + self.dil(x)
        x = self.reduce2(x)  # (B, C, H/4, W/4)
        return self.classifier(self.pool(x).flatten(1))  # (B, classes)


def tiny_net(in_channels: int, num_classes: int, rule: str | Sequence[str] = "bp", C: int = 16,
             seed: int | None = None) -> TinyNet:
    """A :class:`TinyNet` whose blocks learn by ``rule``; a sequence assigns rules to the six
    blocks in turn (``rule[i % len(rule)]`` for block ``i``)."""
    net = TinyNet(in_channels, num_classes, C)
    per_block = [rule] * len(TinyNet.BLOCKS) if isinstance(rule, str) else [rule[i % len(rule)] for i in range(6)]
    for i, (block, r) in enumerate(zip(TinyNet.BLOCKS, per_block)):
        # convert() returns a new layer when handed a bare Conv2d/Linear: always assign back
        setattr(net, block, rules.convert(getattr(net, block), r, seed=None if seed is None else seed + 1000 * i))
    return net
