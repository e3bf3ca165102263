"""Uniform sign-concordant feedback (uSF).

Liao, Leibo & Poggio (2016), "How important is weight symmetry in backpropagation?", AAAI.
https://arxiv.org/abs/1510.05067

``B = s * sign(W)``, recomputed from the current ``W`` at every forward. The paper's "unit
magnitude" is ``s = 1``; the default ``s`` is the layer's Xavier standard deviation
``sqrt(2 / (fan_in + fan_out))``, which keeps the feedback on the scale of the weights.
"""
import torch
from torch import Tensor

from bionas.errors import ConfigError
from bionas.rules.base import FeedbackRule, xavier_std
from bionas.rules.registry import RULES


@RULES.register("usf")
class UniformSignFeedback(FeedbackRule):
    """``B = s * sign(W)``; option ``scale``: ``"xavier"`` (default) or a positive number."""

    color = "#d62728"  # in plots: edges and curves of this rule
    line_style = "--"

    def __init__(self, weight: Tensor, generator: torch.Generator, scale: float | str = "xavier"):
        super().__init__(weight, generator)
        if scale == "xavier":
            scale = xavier_std(weight)
        elif isinstance(scale, str) or not float(scale) > 0:
            raise ConfigError(f"usf scale must be 'xavier' or a positive number, got {scale!r}")
        self.scale = float(scale)

    def feedback(self, weight: Tensor) -> Tensor:
        return torch.sign(weight).mul_(self.scale)  # one allocation: B is weight-sized

    def extra_repr(self) -> str:
        return f"scale={self.scale:.4g}"
