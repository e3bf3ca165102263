"""Activation variants of the ops: ``OP+zscore`` is op ``OP`` with every ReLU replaced by the
magnitude-preserving z-score of "Sparse, excitatory networks from neurobiological principles"
(eq. 6, then ReLU and a rescale of each sample to [0, 1]), the activation its non-negative
(``+dale``) networks use. Any name that takes an op takes such a variant -- search spaces
(``sep_conv_3x3+zscore: [oja+dale]``), genotypes, ``bionas ops``' registry lookups."""
from __future__ import annotations

from typing import Callable

from torch import Tensor, nn

from bionas.errors import ConfigError


class MagnitudeZScore(nn.Module):
    """Eq. 6 as a module: ``beta (|y| - mean) / std`` over each sample's units, ReLU, rescaled to [0, 1]."""

    def __init__(self, beta: float = 1.0):
        super().__init__()
        self.beta = float(beta)

    def forward(self, y: Tensor) -> Tensor:
        from bionas.rules.oja import magnitude_zscore

        return magnitude_zscore(y, self.beta)

    def extra_repr(self) -> str:
        return f"beta={self.beta}"


ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"zscore": MagnitudeZScore}


def with_activation(factory: Callable[..., nn.Module], base: str, activation: str) -> Callable[..., nn.Module]:
    """The factory of op ``base`` whose ReLUs become ``activation``."""
    if activation not in ACTIVATIONS:
        raise ConfigError(f"unknown op activation {activation!r} in {base}+{activation}; choose from "
                          f"{', '.join(ACTIVATIONS)}")

    if not any(isinstance(m, nn.ReLU) for s in (1, 2) for m in factory(4, s, True).modules()):
        raise ConfigError(f"op {base} has no ReLU for +{activation} to replace; use {base} without it")

    def build(C: int, stride: int, affine: bool) -> nn.Module:
        op = factory(C, stride, affine)
        for parent in list(op.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.ReLU):
                    setattr(parent, name, ACTIVATIONS[activation]())
        return op

    return build
