"""The ``none`` op of DARTS: a zero output that lets the search switch an edge off."""
from torch import Tensor, nn

from bionas.ops.registry import OPS


class Zero(nn.Module):
    """Zeros of the output shape: ``x[:, :, ::stride, ::stride] * 0``."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)  # (B, C, ceil(H/s), ceil(W/s))


@OPS.register("none")
def none(C: int, stride: int, affine: bool) -> nn.Module:
    """No connection (zero output)."""
    return Zero(stride)
