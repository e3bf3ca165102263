"""Batchwise random-magnitude sign-concordant feedback (brSF).

Liao, Leibo & Poggio (2016), "How important is weight symmetry in backpropagation?", AAAI;
naming as in Sanfiz & Akrout (2021), https://arxiv.org/abs/2108.13446

``B = |R| * sign(W)`` where ``R`` (Xavier-uniform) is redrawn at every forward pass in training
mode and left as it is in eval mode. Draw ``k`` of a layer comes from a generator seeded with
``layer_seed(seed, k)``: draws are reproducible, survive a resume (``draws`` is in the
``state_dict``), stay in step across data-parallel ranks that share the seed, and never touch
the global RNG.
"""
import math

import torch
from torch import Tensor

from bionas.rules.base import FeedbackRule, layer_seed, make_generator, xavier_std
from bionas.rules.registry import RULES


@RULES.register("brsf")
class BatchwiseRandomSignFeedback(FeedbackRule):
    """``B = |R| * sign(W)``, ``R ~ U(-a, a)`` redrawn each training forward."""

    name = "brsf"

    def __init__(self, weight: Tensor, generator: torch.Generator):
        super().__init__(weight, generator)
        # Plain ints (saved through get_extra_state) so that a forward never syncs with a GPU.
        self.seed = int(torch.randint(0, 2**62, (), generator=generator, device=generator.device))
        self.draws = 0
        self.bound = math.sqrt(3.0) * xavier_std(weight)
        self.register_buffer("magnitude", torch.empty_like(weight))
        self.redraw()

    @torch.no_grad()
    def redraw(self) -> None:
        """Replace ``|R|`` by draw number ``draws + 1``."""
        self.draws += 1
        gen = make_generator(layer_seed(self.seed, self.draws), self.magnitude.device)
        # |R| for R ~ U(-a, a) is distributed as U(0, a): draw it in place, in one pass
        self.magnitude.uniform_(0.0, self.bound, generator=gen)

    def get_extra_state(self) -> dict:
        return {"seed": self.seed, "draws": self.draws}

    def set_extra_state(self, state: dict) -> None:
        self.seed, self.draws = int(state["seed"]), int(state["draws"])

    def feedback(self, weight: Tensor) -> Tensor:
        return torch.sign(weight).mul_(self.magnitude)  # one allocation: B is weight-sized

    def forward(self, layer, x: Tensor) -> Tensor:
        if self.training:
            self.redraw()
        return super().forward(layer, x)
