"""NAS-Bench-201's 1x1 convolution (Dong & Yang 2020, "NAS-Bench-201: Extending the Scope of
Reproducible Neural Architecture Search", ICLR, https://arxiv.org/abs/2001.00326, section 2.1):
ReLU -> 1x1 convolution -> BatchNorm, a per-position channel mix (strided for reductions)."""
from torch import nn

from bionas.ops.conv import ReLUConvBN
from bionas.ops.registry import OPS


@OPS.register("conv_1x1")
def conv_1x1(C: int, stride: int, affine: bool) -> nn.Module:
    """ReLU, 1x1 convolution, BatchNorm (NAS-Bench-201)."""
    return ReLUConvBN(C, C, 1, stride, 0, affine=affine)
