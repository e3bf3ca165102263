"""Several feedback rules side by side in one layer: the rule of a fused (widened) layer.

When ``R`` copies of an op that differ only in their learning rule run on the same input (the
candidates ``sep_conv_3x3|fa``, ``sep_conv_3x3|usf``, ... of one supernet edge), their layers
can be stacked into one grouped layer with ``R`` times the output channels: block ``r`` of the
weight (rows ``r*out .. (r+1)*out``) is copy ``r``'s weight, and the grouped convolution keeps
the blocks independent. The rule of such a layer is :class:`PartitionedFeedback`: its feedback
tensor is the blocks' own feedback tensors stacked the same way, ``B = [B_1; ...; B_R]``, so the
error each block sends back is exactly what its own rule would send, and weight gradients stay
exact per block. Not registered: a search space never names it; the supernet builds it.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from bionas.rules.base import FeedbackRule


class PartitionedFeedback(FeedbackRule):
    """``B = cat([rule_r.feedback(W_r) for r])`` over equal blocks ``W_r`` of the weight's rows."""

    name = "partitioned"

    def __init__(self, parts: Sequence[FeedbackRule], rows: int):
        nn.Module.__init__(self)
        if not parts or not all(isinstance(p, FeedbackRule) for p in parts):
            raise TypeError("PartitionedFeedback stacks feedback rules only")
        self.parts = nn.ModuleList(parts)
        self.rows = rows  # output channels per block
        self.name = "+".join(p.name for p in parts)

    def advance(self) -> None:
        for part in self.parts:
            part.advance()

    def feedback(self, weight: Tensor) -> Tensor:
        blocks = weight.split(self.rows, dim=0)
        return torch.cat([part.feedback(w) for part, w in zip(self.parts, blocks)], dim=0)

    def extra_repr(self) -> str:
        return f"rows={self.rows}"
