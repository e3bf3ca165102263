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

from bionas.rules.base import FeedbackRule, layer_seed, xavier_std
from bionas.rules.registry import RULES


@RULES.register("brsf")
class BatchwiseRandomSignFeedback(FeedbackRule):
    """``B = |R| * sign(W)``, ``R ~ U(-a, a)`` redrawn each training forward."""

    color = "#2ca02c"  # in plots: edges and curves of this rule
    line_style = "-."

    GRID_MIN_NUMEL = 65536  # from this many weights on, draw on the 16-bit grid (see redraw)

    def __init__(self, weight: Tensor, generator: torch.Generator):
        super().__init__(weight, generator)
        # Plain ints (saved through get_extra_state) so that a forward never syncs with a GPU.
        self.seed = int(torch.randint(0, 2**62, (), generator=generator, device=generator.device))
        self.draws = 0
        self.bound = math.sqrt(3.0) * xavier_std(weight)
        self.register_buffer("magnitude", torch.empty_like(weight))
        # scratch space for the random bits of large layers (not saved: seed and draws define it)
        n_words = -(-weight.numel() // 4) if weight.numel() >= self.GRID_MIN_NUMEL else 0
        self.register_buffer("_bits", torch.empty(n_words, dtype=torch.int64, device=weight.device), persistent=False)
        self._gen: torch.Generator | None = None
        self.redraw()

    @torch.no_grad()
    def redraw(self) -> None:
        """Replace ``|R|`` by draw number ``draws + 1``: ``|R| ~ U(0, a)`` for ``R ~ U(-a, a)``.

        Large layers draw on a grid of 2^16 levels, ``|R| = (k + 1/2) a / 2^16`` with ``k``
        uniform on ``0..65535``, so that one 64-bit draw of the generator yields four magnitudes.
        The grid is far finer than anything the rule can resolve (mean a/2 and variance a^2/12
        match to 1e-9), and on a CPU -- whose generator costs the same per call, whatever the
        width -- it is about 3x faster than one float draw per weight, which keeps brSF close to
        backprop's cost on large linear layers. Small layers, where the four extra kernel launches
        cost more than the draw, use one float draw per weight.
        """
        self.draws += 1
        gen = self._generator()
        gen.manual_seed(layer_seed(self.seed, self.draws))
        if self._bits.numel() == 0:
            self.magnitude.uniform_(0.0, self.bound, generator=gen)
            return
        self._bits.random_(-(2**63), None, generator=gen)  # (ceil(n/4),) full-range int64
        k = self._bits.view(torch.int16)[: self.magnitude.numel()].view(self.magnitude.shape)  # -32768..32767
        torch.mul(k, self.bound / 65536, out=self.magnitude)
        self.magnitude.add_(self.bound * 32768.5 / 65536)  # (k + 32768 + 1/2) a / 2^16

    def _generator(self) -> torch.Generator:
        device = self.magnitude.device
        if self._gen is None or self._gen.device != device:  # first draw, or moved to a device
            self._gen = torch.Generator(device=device)
        return self._gen

    def get_extra_state(self) -> dict:
        return {"seed": self.seed, "draws": self.draws}

    def set_extra_state(self, state: dict) -> None:
        self.seed, self.draws = int(state["seed"]), int(state["draws"])

    def feedback(self, weight: Tensor) -> Tensor:
        return torch.sign(weight).mul_(self.magnitude)  # one allocation: B is weight-sized

    def advance(self) -> None:
        if self.training:
            self.redraw()
