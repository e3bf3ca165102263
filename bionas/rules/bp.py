"""Backpropagation: the true gradient, ``B = W``.

Rumelhart, Hinton & Williams (1986), "Learning representations by back-propagating errors".
``delta_in = W^T delta``; the layer runs its plain torch forward, so autograd does the rest.
"""
from torch import Tensor

from bionas.rules.base import FeedbackRule
from bionas.rules.registry import RULES


@RULES.register("bp")
class Backprop(FeedbackRule):
    """Ordinary backprop: the feedback tensor is the forward weight itself."""

    color = "#444444"  # in plots: edges and curves of this rule
    line_style = "-"

    def feedback(self, weight: Tensor) -> Tensor:
        return weight.detach()

    def forward(self, layer, x: Tensor) -> Tensor:
        return layer.plain_forward(x)
