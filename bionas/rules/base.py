"""The learning-rule abstraction.

A *learning rule* decides how one rule-aware layer (:class:`~bionas.rules.layers.RuleConv2d`,
:class:`~bionas.rules.layers.RuleLinear`) learns. The layer owns the weights and knows its
operation (convolution or matrix product); the rule is a child module that owns any extra state
(feedback tensors, thresholds) and is asked to run the layer's forward pass. Two families exist:

* :class:`FeedbackRule` -- the loss gradient reaches the layer, but the error sent to the
  layer's *input* is computed with a feedback tensor ``B`` of the weight's shape instead of ``W``:
  ``delta_in = B^T delta`` (a transposed convolution with ``B`` for convolutions). The weight and
  bias gradients stay the exact local ones, ``dL/dW = delta x^T``. Backprop is the case ``B = W``.
* :class:`LocalRule` -- the weights receive no loss gradient at all; they change only through
  :meth:`LocalRule.update`, called from the forward pass while local updates are switched on
  (:func:`bionas.rules.local_updates`). The error passed on to the layer's input goes through
  ``W^T`` (so earlier layers still learn) unless the rule cuts it (``detach_input_error``).
  Hebbian rules keep the plain layer's output; predictive coding refines it by inference
  iterations, so it also defines :meth:`LearningRule.exact_forward`.

Every rule is built per layer as ``Rule(weight, generator, **options)``: ``weight`` gives the
shape, device and dtype of any tensor the rule needs, ``generator`` is a ``torch.Generator``
seeded for that layer alone (see :func:`layer_seed`), so random feedback never touches the
global RNG and is identical on every process that converts with the same seed.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor, nn

if TYPE_CHECKING:  # pragma: no cover
    from bionas.rules.layers import RuleLayer

_MASK64 = (1 << 64) - 1


def layer_seed(seed: int, index: int) -> int:
    """Seed for layer ``index`` of a conversion seeded with ``seed`` (splitmix64 finaliser).

    Neighbouring seeds and indices give unrelated streams; the result fits ``manual_seed``.
    """
    z = (seed * 0x9E3779B97F4A7C15 + (index + 1) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) & ((1 << 63) - 1)


def make_generator(seed: int, device: torch.device | str) -> torch.Generator:
    gen = torch.Generator(device=torch.device(device))
    gen.manual_seed(seed)
    return gen


def xavier_std(weight: Tensor) -> float:
    """Glorot & Bengio (2010) standard deviation ``sqrt(2 / (fan_in + fan_out))`` of a weight.

    Fans follow PyTorch's convention: for a convolution ``fan_in = in/groups * kh * kw`` and
    ``fan_out = out * kh * kw``.
    """
    fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(weight)
    return math.sqrt(2.0 / (fan_in + fan_out))


def xavier_like(weight: Tensor, generator: torch.Generator) -> Tensor:
    """A fresh tensor of ``weight``'s shape drawn Xavier-uniform: U(-a, a), a = sqrt(3) * std."""
    out = torch.empty_like(weight, memory_format=torch.contiguous_format)
    with torch.no_grad():
        nn.init.xavier_uniform_(out, generator=generator)
    return out


class LearningRule(nn.Module):
    """Base of all rules. Subclasses set ``name`` (the registry key) and ``kind``.

    ``forward(layer, x)`` returns what :meth:`exact_forward` returns (by default the layer's
    plain forward); a rule changes only what flows backwards (or what happens to the weights on
    the side).
    """

    name: ClassVar[str] = ""  # set by RULES.register
    kind: ClassVar[str] = ""
    color: ClassVar[str] = "black"  # how plots draw this rule's edges and curves
    line_style: ClassVar[object] = "-"
    # torch layer types this rule can learn; a search space may pair the rule only with ops
    # whose weighted layers are all of these types
    layer_types: ClassVar[tuple[type[nn.Module], ...]] = (nn.Conv2d, nn.Linear)
    # False for rules whose layer computes something else than the plain layer (pc refines it)
    preserves_forward: ClassVar[bool] = True

    def __init__(self, weight: Tensor, generator: torch.Generator):
        super().__init__()

    def forward(self, layer: "RuleLayer", x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def exact_forward(self, layer: "RuleLayer", x: Tensor) -> Tensor:
        """The layer's function with every tensor in the autograd graph (no feedback, no update):
        what runs under :func:`bionas.rules.exact_gradients`. The plain layer, unless the rule's
        computation differs from it (predictive coding refines its output)."""
        return layer.plain_forward(x)

    # --- modifier hooks (bionas.rules.modifiers): no-ops for a rule without modifiers --------------
    @property
    def active_modifiers(self) -> tuple:
        """The modifiers of a ``RULE+MODIFIER`` rule (:mod:`bionas.rules.modifiers`); empty otherwise."""
        mods = self._modules.get("modifiers")
        return tuple(mods) if mods is not None else ()

    def observe(self, layer: "RuleLayer", x: Tensor, y: Tensor) -> None:
        """A weight-training forward saw input ``x`` and output ``y`` (both detached)."""
        for m in self.active_modifiers:
            m.observe(layer, x, y)

    def before_optimizer_step(self, layer: "RuleLayer") -> None:
        """The gradients are final (after clipping); the optimiser is about to step."""
        for m in self.active_modifiers:
            m.before_optimizer_step(layer)

    def after_update(self, layer: "RuleLayer") -> None:
        """The layer's weights have just changed (an optimiser step or a local update)."""
        for m in self.active_modifiers:
            m.after_update(layer)

    def initialise(self, layer: "RuleLayer", generator: torch.Generator) -> None:
        """The network's weights have just been (re-)initialised (``engine.initialise_weights``)."""
        for m in self.active_modifiers:
            m.initialise(layer, generator)


class FeedbackRule(LearningRule):
    """Sends ``delta_in = B^T delta`` to the layer's input; exact weight and bias gradients."""

    kind: ClassVar[str] = "feedback"

    def feedback(self, weight: Tensor) -> Tensor:
        """The feedback tensor ``B`` (weight's shape, no autograd history) for the next backward.

        Must not consume randomness: redraws belong in :meth:`advance` (see brSF).
        """
        raise NotImplementedError

    def advance(self) -> None:
        """Called once at every forward of the layer, before :meth:`feedback`: rules whose
        feedback changes over time (brSF redraws in training mode) do it here."""

    def forward(self, layer: "RuleLayer", x: Tensor) -> Tensor:
        self.advance()
        with torch.no_grad():
            feedback = self.feedback(layer.weight)
        y = layer.feedback_forward(x, feedback)
        if layer.local_updates and self.active_modifiers:  # a weight-training forward
            with torch.no_grad():
                self.observe(layer, x.detach(), y.detach())
        return y


class LocalRule(LearningRule):
    """Weights learn from a local update only; they are invisible to the loss gradient.

    Subclasses implement :meth:`update`, which receives the layer, its input and its output
    (both detached) and changes ``layer.weight`` in place. It is called only while the layer's
    ``local_updates`` flag is on (see :func:`bionas.rules.local_updates`), never as a side effect
    of ``model.train()``.
    """

    kind: ClassVar[str] = "local"
    # False for a rule whose update the training engine applies after the forward (wp)
    updates_in_forward: ClassVar[bool] = True

    def __init__(self, weight: Tensor, generator: torch.Generator, detach_input_error: bool = False):
        super().__init__(weight, generator)
        self.detach_input_error = bool(detach_input_error)

    def update(self, layer: "RuleLayer", x: Tensor, y: Tensor) -> None:  # pragma: no cover
        raise NotImplementedError

    def forward(self, layer: "RuleLayer", x: Tensor) -> Tensor:
        # The loss sees the weights as constants; the input error still flows through W^T
        # unless the rule cuts it.
        y = layer.plain_forward(x.detach() if self.detach_input_error else x, detached=True,
                                snapshot=layer.local_updates)
        if layer.local_updates:
            with torch.no_grad():
                self.observe(layer, x.detach(), y.detach())
                self.update(layer, x.detach(), y.detach())
                self.after_update(layer)
        return y

    def extra_repr(self) -> str:
        return f"detach_input_error={self.detach_input_error}"
