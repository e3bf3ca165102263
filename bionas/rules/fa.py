"""Feedback alignment (FA).

Lillicrap, Cownden, Tweed & Akerman (2016), "Random synaptic feedback weights support error
backpropagation for deep learning", Nature Communications 7:13276.
https://doi.org/10.1038/ncomms13276

``delta_in = B^T delta`` with ``B`` a fixed random tensor of the weight's shape, drawn once
Xavier-uniform like the weights and never trained.
"""
import torch
from torch import Tensor

from bionas.rules.base import FeedbackRule, xavier_like
from bionas.rules.registry import RULES


@RULES.register("fa")
class FeedbackAlignment(FeedbackRule):
    """Fixed random feedback ``B ~ U(-a, a)``, ``a = sqrt(6 / (fan_in + fan_out))``."""

    color = "#1f77b4"  # in plots: edges and curves of this rule
    line_style = ":"

    def __init__(self, weight: Tensor, generator: torch.Generator):
        super().__init__(weight, generator)
        self.register_buffer("B", xavier_like(weight, generator))

    def feedback(self, weight: Tensor) -> Tensor:
        return self.B
