"""Operations: what an edge computes (the DARTS primitives), independent of how it learns.

``create_op(name, C, stride, affine)`` builds ordinary torch layers; pair it with a learning rule
through :class:`bionas.candidate.Candidate`. Adding an op is one file plus one import below.
"""
from torch import nn

from bionas.ops.registry import OPS  # noqa: I001  (registry first: op files use it)
from bionas.ops import zero, pooling, skip, conv  # noqa: F401  (registration, in DARTS order)
from bionas.ops.conv import DilConv, ReLUConvBN, SepConv
from bionas.ops.skip import FactorizedReduce
from bionas.ops.zero import Zero


def create_op(name: str, C: int, stride: int, affine: bool = True) -> nn.Module:
    """Build op ``name`` mapping ``(B, C, H, W)`` to ``(B, C, ceil(H/stride), ceil(W/stride))``."""
    if stride not in (1, 2):
        raise ValueError(f"ops take stride 1 or 2, got {stride}")
    return OPS.get(name)(C, stride, affine)


__all__ = ["OPS", "create_op", "Zero", "FactorizedReduce", "ReLUConvBN", "DilConv", "SepConv"]
