"""Weight perturbation (WP): learning from the change of the loss under random weight noise.

"Sparse, excitatory networks from neurobiological principles" (eq. 3, after Stricker, Roehrbein
& Knoblauch 2024)::

    dW = -(eta / sigma^2) (E_pert - E) xi * [W != 0]                       (eq. 3)

with ``xi ~ N(0, sigma^2)`` the perturbation of the layer's weights, ``E`` the loss of the batch
and ``E_pert`` the loss with the weights perturbed. Since ``E_pert - E ~ xi . grad E`` for small
``sigma``, ``E[dW] ~ -eta grad E`` (masked): a gradient estimate with no backward pass -- no loss
gradient ever reaches a ``wp`` weight, which the forward treats as constants. The mask keeps
pruned (zero) weights at zero, as the paper does to lower the reward noise.

The training engine (``engine.train_step``) supplies ``E_pert``: before the step's forward it
perturbs every ``wp`` layer of the model at once, each with its own independent noise
(:func:`perturbed`), runs one extra forward without gradients on the same batch -- same
dropout/drop-path masks, batch-norm statistics untouched, local updates off -- and restores the
weights; after the backward it hands ``E_pert - E`` to every ``wp`` layer (:func:`apply`).
Perturbing all layers together costs one extra forward per step (about a third of a step: no
backward), whatever their number; perturbing one layer at a time would cost one forward per
layer and give each layer an estimate free of the other layers' noise. Together, each layer's
estimate carries the others' perturbations as extra reward noise: its variance grows with the
total number of perturbed weights, which is why the paper keeps WP to the classification layer.
Under ``torchrun`` the loss difference is averaged over the processes, and the noise is the same
on every process (drawn from the layer's seed), so the update is the global one.

Options (eqs. 4 and 5, for a classifier layer):

* ``mix`` -- eq. 4, ``dW = eta alpha dW_hebb + eta beta dW_wp``, with ``dW_hebb`` Oja's rule
  without self-interaction (eq. 2, batch-averaged as the ``oja`` rule does, carrying its own
  ``eta``) and ``dW_wp`` eq. 3; ``alpha = hebbian_weight``, ``beta = wp_weight``. The paper's eta
  thus appears twice, so its ``eta = 5e-4, beta = 87,500`` give an expected WP step of
  ``eta^2 beta = 0.022`` times the gradient.
* ``bias_gamma`` -- eq. 5's homeostatic bias, ``db_k = eta gamma (1/K - <p_k>)`` with ``p`` the
  softmax of the layer's outputs over its ``K`` units and ``<.>`` the batch mean (the paper's
  "mean activation of the layer" simplified to ``1/K`` for label-balanced batches; reconstructed
  with the softmax, which makes ``1/K`` the mean over units): a unit active above the mean gets
  its bias lowered. 0 turns it off.

The update happens only in weight-training steps (the engine's, under
:func:`bionas.rules.local_updates`). Args: lr (0.01), sigma (0.01), mix (False), hebbian_weight
(0.04), wp_weight (1.0), bias_gamma (0.0), post (``linear``: the activity eq. 2 uses, as in the
``oja`` rule), detach_input_error (False).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import Tensor, nn

from bionas.errors import ConfigError
from bionas.rules.base import LocalRule, layer_seed
from bionas.rules.conv_local import global_count, global_sum, without_bias
from bionas.rules.oja import POSTS, oja_direction, postsynaptic
from bionas.rules.registry import RULES


@RULES.register("wp")
class WeightPerturbation(LocalRule):
    """Weight perturbation (eq. 3; options: eq. 4's Hebbian mix, eq. 5's homeostatic bias)."""

    color = "#bcbd22"
    updates_in_forward = False  # engine.train_step applies it, once it knows E_pert - E
    line_style = (0, (5, 2))

    def __init__(self, weight: Tensor, generator: torch.Generator, lr: float = 0.01, sigma: float = 0.01,
                 mix: bool = False, hebbian_weight: float = 0.04, wp_weight: float = 1.0, bias_gamma: float = 0.0,
                 post: str = "linear", detach_input_error: bool = False):
        super().__init__(weight, generator, detach_input_error=detach_input_error)
        if not (lr > 0 and sigma > 0 and hebbian_weight >= 0 and wp_weight >= 0 and bias_gamma >= 0):
            raise ConfigError(f"wp needs lr > 0, sigma > 0 and non-negative weights; got lr={lr}, sigma={sigma}, "
                              f"hebbian_weight={hebbian_weight}, wp_weight={wp_weight}, bias_gamma={bias_gamma}")
        if post not in POSTS:
            raise ConfigError(f"wp option post={post!r} is unknown; choose one of {', '.join(POSTS)}")
        self.lr, self.sigma, self.mix, self.post = float(lr), float(sigma), bool(mix), post
        self.hebbian_weight, self.wp_weight, self.bias_gamma = float(hebbian_weight), float(wp_weight), \
            float(bias_gamma)
        # plain ints (saved by get_extra_state): draw k comes from layer_seed(seed, k)
        self.seed = int(torch.randint(0, 2**62, (), generator=generator, device=generator.device))
        self.draws = 0
        self._pending: dict[str, Tensor] = {}

    def get_extra_state(self) -> dict:
        return {"seed": self.seed, "draws": self.draws}

    def set_extra_state(self, state: dict) -> None:
        self.seed, self.draws = int(state["seed"]), int(state["draws"])

    def noise(self, weight: Tensor) -> Tensor:
        """The next perturbation ``xi ~ N(0, sigma^2)``, weight-shaped (draw ``draws + 1``)."""
        self.draws += 1
        gen = torch.Generator(device="cpu").manual_seed(layer_seed(self.seed, self.draws))
        xi = torch.randn(weight.shape, generator=gen, dtype=torch.float32).to(weight.device, weight.dtype)
        return xi.mul_(self.sigma)

    def update(self, layer, x: Tensor, y: Tensor) -> None:
        """The step's (unperturbed) forward: keep what eqs. 4-5 need until :meth:`apply`."""
        self._pending = {}
        W = layer.weight
        z = y.to(W.dtype)
        if layer.bias is not None and self.bias_gamma > 0:
            units = 1 if z.dim() == 4 else z.dim() - 1
            p = torch.softmax(z, dim=units)
            dims = [d for d in range(z.dim()) if d != units]
            count = global_count(p.numel() // p.shape[units], p)
            self._pending["mean_p"] = global_sum(p.sum(dims)) / count  # over the global batch
        z = without_bias(layer, z)
        if self.mix and self.hebbian_weight > 0:
            direction, count = oja_direction(layer, x.to(W.dtype), postsynaptic(z, self.post), exclude_self=True)
            self._pending["hebbian"] = self.lr * direction / count  # eq. 2, with its own eta

    @torch.no_grad()
    def apply(self, layer, xi: Tensor, loss_change: float) -> None:
        """The update of eq. 3 (eq. 4 with ``mix``; eq. 5 with ``bias_gamma``) for this step."""
        W = layer.weight
        wp = xi * (-(self.lr / self.sigma ** 2) * loss_change) * (W != 0)
        if self.mix:
            dW = self.lr * self.wp_weight * wp
            if "hebbian" in self._pending:
                dW += self.lr * self.hebbian_weight * self._pending["hebbian"]
        else:
            dW = wp
        W.add_(dW)
        if "mean_p" in self._pending:
            K = layer.bias.numel()
            layer.bias.add_(self.lr * self.bias_gamma * (1.0 / K - self._pending["mean_p"]))
        self._pending = {}
        self.after_update(layer)

    def extra_repr(self) -> str:
        return (f"lr={self.lr}, sigma={self.sigma}, mix={self.mix}, hebbian_weight={self.hebbian_weight}, "
                f"wp_weight={self.wp_weight}, bias_gamma={self.bias_gamma}, {super().extra_repr()}")


def perturbation_layers(model: nn.Module) -> list[nn.Module]:
    """The layers of ``model`` that learn by weight perturbation."""
    from bionas.rules.convert import rule_layers

    return [layer for _, layer in rule_layers(model) if isinstance(layer.rule, WeightPerturbation)]


@contextmanager
def perturbed(layers: list[nn.Module]) -> Iterator[list[Tensor]]:
    """Inside the block every layer's weight is ``W + xi`` (independent noise per layer); the
    weights are restored exactly (copied back) on exit. Yields the noises."""
    saved = [layer.weight.detach().clone() for layer in layers]
    noises = [layer.rule.noise(layer.weight) for layer in layers]
    with torch.no_grad():
        for layer, xi in zip(layers, noises):
            layer.weight.add_(xi)
    try:
        yield noises
    finally:
        with torch.no_grad():
            for layer, w in zip(layers, saved):
                layer.weight.copy_(w)
