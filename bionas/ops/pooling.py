"""3x3 max and average pooling (parameter-free DARTS candidates)."""
from torch import nn

from bionas.ops.registry import OPS


@OPS.register("max_pool_3x3")
def max_pool_3x3(C: int, stride: int, affine: bool) -> nn.Module:
    """3x3 max pooling, padding 1."""
    return nn.MaxPool2d(3, stride=stride, padding=1)


@OPS.register("avg_pool_3x3")
def avg_pool_3x3(C: int, stride: int, affine: bool) -> nn.Module:
    """3x3 average pooling, padding 1, padded zeros not counted."""
    return nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)


# Pooling candidates: a search supernet follows them with a non-affine BatchNorm (DARTS), since
# unlike the convolution ops they do not end in one. A new pooling op adds its name here.
POOLING_OPS = frozenset({"max_pool_3x3", "avg_pool_3x3"})
