"""The convolution blocks of DARTS (Liu, Simonyan & Yang 2019, https://arxiv.org/abs/1806.09055).

All are ReLU -> convolution(s) -> BatchNorm stacks of ordinary ``nn.Conv2d``; a learning rule,
applied afterwards by :func:`bionas.rules.convert`, decides how those convolutions learn.
"""
from torch import Tensor, nn

from bionas.ops.registry import OPS


class ReLUConvBN(nn.Module):
    """ReLU, one convolution, BatchNorm (the cells' input pre-processing)."""

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int, affine: bool = True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_out, kernel_size, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class DilConv(nn.Module):
    """ReLU, depthwise dilated KxK convolution, pointwise 1x1 convolution, BatchNorm."""

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int,
                 dilation: int, affine: bool = True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, stride=stride, padding=padding, dilation=dilation,
                      groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, 1, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class SepConv(nn.Module):
    """Two stacked depthwise-separable convolutions (the first carries the stride)."""

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int, affine: bool = True):
        super().__init__()
        self.op = nn.Sequential(
            DilConv(C_in, C_in, kernel_size, stride, padding, dilation=1, affine=affine),
            DilConv(C_in, C_out, kernel_size, 1, padding, dilation=1, affine=affine),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


@OPS.register("sep_conv_3x3")
def sep_conv_3x3(C: int, stride: int, affine: bool) -> nn.Module:
    """Separable 3x3 convolution, applied twice."""
    return SepConv(C, C, 3, stride, 1, affine=affine)


@OPS.register("sep_conv_5x5")
def sep_conv_5x5(C: int, stride: int, affine: bool) -> nn.Module:
    """Separable 5x5 convolution, applied twice."""
    return SepConv(C, C, 5, stride, 2, affine=affine)


@OPS.register("dil_conv_3x3")
def dil_conv_3x3(C: int, stride: int, affine: bool) -> nn.Module:
    """Dilated (rate 2) separable 3x3 convolution: 5x5 receptive field."""
    return DilConv(C, C, 3, stride, 2, 2, affine=affine)


@OPS.register("dil_conv_5x5")
def dil_conv_5x5(C: int, stride: int, affine: bool) -> nn.Module:
    """Dilated (rate 2) separable 5x5 convolution: 9x9 receptive field."""
    return DilConv(C, C, 5, stride, 4, 2, affine=affine)
