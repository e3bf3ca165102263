"""NAS-Bench-201's plain 3x3 convolution (Dong & Yang 2020, "NAS-Bench-201: Extending the Scope of
Reproducible Neural Architecture Search", ICLR, https://arxiv.org/abs/2001.00326, section 2.1):
ReLU -> 3x3 convolution -> BatchNorm, one dense convolution where DARTS' ``sep_conv_3x3`` has
two separable ones."""
from torch import nn

from bionas.ops.conv import ReLUConvBN
from bionas.ops.registry import OPS


@OPS.register("conv_3x3")
def conv_3x3(C: int, stride: int, affine: bool) -> nn.Module:
    """ReLU, dense 3x3 convolution, BatchNorm (NAS-Bench-201)."""
    return ReLUConvBN(C, C, 3, stride, 1, affine=affine)
