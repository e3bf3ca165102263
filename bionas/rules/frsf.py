"""Fixed random-magnitude sign-concordant feedback (frSF).

Liao, Leibo & Poggio (2016), "How important is weight symmetry in backpropagation?", AAAI;
naming as in Sanfiz & Akrout (2021), "Benchmarking the accuracy and robustness of feedback
alignment algorithms", https://arxiv.org/abs/2108.13446

``B = |M| * sign(W)``: the magnitudes ``M`` are drawn once (Xavier-uniform) and kept; the signs
follow the current forward weights.
"""
import torch
from torch import Tensor

from bionas.rules.base import FeedbackRule, xavier_like
from bionas.rules.registry import RULES


@RULES.register("frsf")
class FixedRandomSignFeedback(FeedbackRule):
    """``B = |M| * sign(W)`` with fixed ``M ~ U(-a, a)``, ``a = sqrt(6 / (fan_in + fan_out))``."""

    color = "#9467bd"  # in plots: edges and curves of this rule
    line_style = (0, (5, 1, 1, 1, 1, 1))

    def __init__(self, weight: Tensor, generator: torch.Generator):
        super().__init__(weight, generator)
        self.register_buffer("magnitude", xavier_like(weight, generator).abs())

    def feedback(self, weight: Tensor) -> Tensor:
        return torch.sign(weight).mul_(self.magnitude)  # one allocation: B is weight-sized
