"""Operations: what an edge computes (the DARTS primitives), independent of how it learns.

``create_op(name, C, stride, affine)`` builds ordinary torch layers; pair it with a learning rule
through :class:`bionas.candidate.Candidate`. Adding an op is one file plus one import below.
"""
from functools import lru_cache

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


@lru_cache(maxsize=None)
def weighted_layer_types(name: str) -> frozenset[type]:
    """The torch layer types with weights (``nn.Conv2d``, ``nn.Linear``) in op ``name`` at stride 1
    or 2: what a learning rule would convert. Empty for weightless ops (pooling, skip, none),
    which therefore take no rule."""
    found = set()
    for stride in (1, 2):
        for m in create_op(name, 4, stride).modules():
            if type(m) in (nn.Conv2d, nn.Linear):
                found.add(type(m))
    return frozenset(found)


def has_weights(name: str) -> bool:
    """Whether op ``name`` has layers a learning rule can learn."""
    return bool(weighted_layer_types(name))


__all__ = ["OPS", "create_op", "weighted_layer_types", "has_weights", "Zero", "FactorizedReduce", "ReLUConvBN", "DilConv", "SepConv"]
