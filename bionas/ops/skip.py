"""Skip connections: identity at stride 1, :class:`FactorizedReduce` at stride 2.

Only the stride-2 form has weights (two 1x1 convolutions), so a learning rule on a stride-1 skip
has nothing to act on: ``(skip_connect, usf)`` and ``(skip_connect, bp)`` are the same function
in a normal cell.
"""
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bionas.ops.registry import OPS


class FactorizedReduce(nn.Module):
    """Halve the resolution without losing half of the pixels (Liu et al. 2019, DARTS).

    ReLU, then two 1x1 stride-2 convolutions, one on ``x`` and one on ``x`` shifted by one pixel,
    each giving half of ``C_out`` channels, concatenated and batch-normalised. Odd sizes are
    padded so both halves agree (the DARTS original fails on them).
    """

    def __init__(self, C_in: int, C_out: int, affine: bool = True):
        super().__init__()
        if C_out % 2:
            raise ValueError(f"FactorizedReduce needs an even C_out, got {C_out}")
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=False)
        self.conv_2 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=False)
        self.bn = nn.BatchNorm2d(C_out, affine=affine)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(x)
        shifted = F.pad(x, (0, 1, 0, 1))[:, :, 1:, 1:]  # (B, C, H, W), one pixel down-right
        out = torch.cat([self.conv_1(x), self.conv_2(shifted)], dim=1)  # (B, C_out, ceil(H/2), ceil(W/2))
        return self.bn(out)


@OPS.register("skip_connect")
def skip_connect(C: int, stride: int, affine: bool) -> nn.Module:
    """Identity (stride 1) or factorized reduction (stride 2)."""
    return nn.Identity() if stride == 1 else FactorizedReduce(C, C, affine=affine)
