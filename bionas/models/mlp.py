"""A multilayer perceptron for the learning rules of "Sparse, excitatory networks from
neurobiological principles" (section 3.1: one dense hidden layer of 2,000 units, no hidden bias,
a 10-unit classifier with bias).

``activation``: ``relu`` (the paper's networks without the non-negativity constraint) or
``zscore`` -- its magnitude-preserving z-score (eq. 6) then ReLU and a rescale to [0, 1]
(:func:`bionas.rules.oja.magnitude_zscore`), used with non-negative weights. The layers are
``hidden`` and ``classifier``, so a run can give each its own rule (``layer_rules``), e.g. the
paper's ``{hidden: oja, classifier: wp}`` with ``rule_options`` for eqs. 1, 4 and 5.
"""
from __future__ import annotations

from torch import Tensor, nn

from bionas.errors import ConfigError
from bionas.models.resnet import MODELS
from bionas.ops.activation import MagnitudeZScore

ACTIVATIONS = ("relu", "zscore")


class MLP(nn.Module):
    def __init__(self, num_classes: int, in_features: int, hidden: int = 2000, activation: str = "relu"):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ConfigError(f"mlp activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
        self.hidden = nn.Linear(in_features, hidden, bias=False)
        self.activation = nn.ReLU() if activation == "relu" else MagnitudeZScore()
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.activation(self.hidden(x.flatten(1))))  # (B, classes)


@MODELS.register("mlp")
def mlp(num_classes: int, in_channels: int = 3, image_size: int = 32) -> MLP:
    """2,000 ReLU units on 32 x 32 images (CIFAR); ``mlp_zscore`` for eq. 6's activation."""
    return MLP(num_classes, in_channels * image_size * image_size)


@MODELS.register("mlp_zscore")
def mlp_zscore(num_classes: int, in_channels: int = 3, image_size: int = 32) -> MLP:
    return MLP(num_classes, in_channels * image_size * image_size, activation="zscore")
