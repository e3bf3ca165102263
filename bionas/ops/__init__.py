"""Operations: what an edge computes (the DARTS primitives and more), independent of how it learns.

``create_op(name, C, stride, affine)`` builds ordinary torch layers; pair it with a learning rule
through :class:`bionas.candidate.Candidate`.

Adding an op: one file ``bionas/ops/<name>.py`` with a factory ``(C, stride, affine) -> nn.Module``
decorated ``@OPS.register("<name>")`` (mapping ``(B, C, H, W)`` to ``(B, C, ceil(H/stride),
ceil(W/stride))`` out of ordinary ``nn.Conv2d``/``nn.Linear``/``nn.BatchNorm2d`` layers, its
docstring's first line saying what it computes), plus its name in the import line below. Whether
it has weights -- and so whether it takes a learning rule -- is read off the layers it builds
(:func:`weighted_layer_types`). Search spaces may then list it, and the registry-parametrised tests
(``tests/test_ops.py``) build it with every rule at both strides.
"""
from functools import lru_cache

from torch import nn

from bionas.ops.registry import OPS  # noqa: I001  (registry first: op files use it)
from bionas.ops import zero, pooling, skip, conv, conv_3x3, conv_1x1  # noqa: F401  (registration, DARTS order first)
from bionas.ops.conv import DilConv, ReLUConvBN, SepConv
from bionas.ops.skip import FactorizedReduce
from bionas.ops.zero import Zero


def create_op(name: str, C: int, stride: int, affine: bool = True) -> nn.Module:
    """Build op ``name`` mapping ``(B, C, H, W)`` to ``(B, C, ceil(H/stride), ceil(W/stride))``."""
    if stride not in (1, 2):
        raise ValueError(f"ops take stride 1 or 2, got {stride}")
    return OPS.get(name)(C, stride, affine)


@lru_cache(maxsize=None)
def weighted_layer_types(name: str, stride: int | None = None) -> frozenset[type]:
    """The torch layer types with weights (``nn.Conv2d``, ``nn.Linear``) in op ``name`` at
    ``stride`` (``None``: at stride 1 or 2): what a learning rule would convert. Empty for
    weightless ops (pooling, none; the identity skip at stride 1), which therefore take no rule."""
    found = set()
    for s in (1, 2) if stride is None else (stride,):
        for m in create_op(name, 4, s).modules():
            if type(m) in (nn.Conv2d, nn.Linear):
                found.add(type(m))
    return frozenset(found)


def has_weights(name: str, stride: int | None = None) -> bool:
    """Whether op ``name`` (at ``stride``; ``None``: at either) has layers a learning rule can learn."""
    return bool(weighted_layer_types(name, stride))


__all__ = ["OPS", "create_op", "weighted_layer_types", "has_weights", "Zero", "FactorizedReduce", "ReLUConvBN",
           "DilConv", "SepConv"]
