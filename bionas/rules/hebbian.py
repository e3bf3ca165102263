"""Hebbian convolution: weights learn from their own input patches and outputs, no loss gradient.

One rule, the pipeline of the Hebbian-CNN paper (Nimmo et al., "Advancing the biological
plausibility and efficacy of Hebbian convolutional neural networks", section 3.1), every stage
an option. For
a convolution with input ``x`` and pre-activation ``u = W * x`` (bias left out), per training
batch and output channel ``c``, with ``x_c`` the input patch channel ``c`` sees and sums running
over batch and positions:

1. activation ``a``: ``linear`` ``a = u``; ``cosine`` ``a_c = u_c / (||x_c|| ||W_c||)`` (Amato /
   Lagani's cosine-similarity unit; the paper's Eq. 9 is garbled in the text: reconstructed as the
   cosine between patch and filter, the unit those works define).
2. ``surround``: lateral inhibition, ``a <- K_DoG (*) a`` per channel (depthwise, "same"
   padding; Hasani et al. 2019, paper Eq. 20); skipped for 1x1 kernels.
3. ``competition`` across channels at every (sample, position): ``none`` ``y = a``;
   ``hard_wta`` ``y = a * [c = argmax a]`` (paper Eq. 8); ``soft_wta`` (SoftHebb, Journe et al.
   2023, https://arxiv.org/abs/2209.11883) ``r = softmax(a / temperature)``, ``y = r`` for the
   winner and ``-r`` for every other channel (anti-Hebbian).
4. ``update`` (the direction ``dW``):

   * ``outer`` -- the plain normalised outer product of the BioNAS paper (section 3.2; its
     appendix code is missing from the text, reconstructed): ``dW = sum (y / ||y||) (x_c / ||x_c||)``,
     ``||y||`` the norm over channels at the position.
   * ``instar`` -- Grossberg instar (paper Eq. 7): ``dW_c = sum y_c x_c - (sum y_c) W_c``.
   * ``bcm`` -- Bienenstock-Cooper-Munro with a sliding threshold (paper Eqs. 11-12):
     ``theta_c <- (1 - theta_decay) theta_c + theta_decay mean y_c^2`` (mean over batch and
     positions, non-winners counting as 0), then ``dW_c = sum y_c (y_c - theta_c) x_c``; no decay
     term, so non-winners of a hard WTA do not change and winners below threshold are depressed.
   * ``softhebb`` -- SoftHebb (Journe et al. 2023, Eq. 5 of the paper):
     ``dW_c = sum y_c x_c - (sum y_c u_c) W_c``.
5. ``normalise_update``: ``dW <- dW / max |dW|`` (the paper's "normalised" update,
   reconstructed); off, ``dW`` is divided by the number of (sample, position) pairs instead (a
   mean). Then ``W <- W + lr dW``; with ``adaptive_lr`` (SoftHebb's norm-driven rate, Journe et
   al. 2023) filter ``c`` steps by ``lr sqrt(| ||W_c|| - 1 |)``, fast while far from unit norm.
   Under ``torchrun`` the sums (and BCM's ``mean y^2``) run over the global batch, so every
   process applies the same update.
6. ``weight_norm``: ``unit`` rescales every output filter to L2 norm 1 after the step; ``dale``
   keeps weights non-negative (``W <- |W|``, Dale's principle, paper section 3.9).

The layer's forward output is its ordinary convolution: the stages above shape only the update
(an op decides what an edge computes, a rule how it learns). The error sent to the layer's input
flows through ``W^T`` unless ``detach_input_error`` cuts it. Updates happen only inside
:func:`bionas.rules.local_updates`.

Args: update (``outer``), competition (``none``), lr (0.01), temperature (1.0, soft WTA),
activation (``linear``), surround (False), sigma_e (1.2), sigma_i (1.4), surround_size (5),
theta_decay (0.5), theta_init (1.0), normalise_update (True), adaptive_lr (False), weight_norm
(``unit``), dale (False), detach_input_error (False).
"""
from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bionas.errors import ConfigError
from bionas.rules.base import LocalRule
from bionas.rules.conv_local import (apply_surround, correlate, dog_kernel, global_count, global_sum, patch_norms,
                                     without_bias)
from bionas.rules.registry import RULES

UPDATES = ("outer", "instar", "bcm", "softhebb")
COMPETITIONS = ("none", "hard_wta", "soft_wta")
ACTIVATIONS = ("linear", "cosine")
WEIGHT_NORMS = ("none", "unit")
_EPS = 1e-12


def _choice(option: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ConfigError(f"hebbian option {option}={value!r} is unknown; choose one of {', '.join(allowed)}")
    return value


def winner_mask(a: Tensor) -> Tensor:
    """(N, C, H, W) one-hot over channels of the largest ``a`` at every (sample, position)."""
    return F.one_hot(a.argmax(1), a.shape[1]).permute(0, 3, 1, 2).to(a.dtype)


@RULES.register("hebbian")
class HebbianRule(LocalRule):
    """Local Hebbian update of a convolution (see the module docstring for every stage)."""

    color = "#ff7f0e"  # in plots: edges and curves of this rule
    line_style = (0, (1, 1))

    layer_types: ClassVar[tuple[type[nn.Module], ...]] = (nn.Conv2d,)

    def __init__(self, weight: Tensor, generator: torch.Generator, update: str = "outer",
                 competition: str = "none", lr: float = 0.01, temperature: float = 1.0,
                 activation: str = "linear", surround: bool = False, sigma_e: float = 1.2,
                 sigma_i: float = 1.4, surround_size: int = 5, theta_decay: float = 0.5,
                 theta_init: float = 1.0, normalise_update: bool = True, adaptive_lr: bool = False,
                 weight_norm: str = "unit", dale: bool = False, detach_input_error: bool = False):
        super().__init__(weight, generator, detach_input_error=detach_input_error)
        if weight.dim() != 4:
            raise ConfigError("the hebbian rule learns convolutions only (Conv2d weights are 4-d)")
        self.update_kind = _choice("update", update, UPDATES)
        self.competition = _choice("competition", competition, COMPETITIONS)
        self.activation = _choice("activation", activation, ACTIVATIONS)
        self.weight_norm = _choice("weight_norm", weight_norm, WEIGHT_NORMS)
        if lr <= 0 or temperature <= 0 or not (0 < theta_decay <= 1):
            raise ConfigError(f"hebbian needs lr > 0, temperature > 0 and 0 < theta_decay <= 1; got lr={lr}, "
                              f"temperature={temperature}, theta_decay={theta_decay}")
        self.lr, self.temperature, self.theta_decay = float(lr), float(temperature), float(theta_decay)
        self.normalise_update, self.adaptive_lr, self.dale = bool(normalise_update), bool(adaptive_lr), bool(dale)
        self.surround = bool(surround) and weight.shape[-2:] != (1, 1)
        kernel = dog_kernel(surround_size, sigma_e, sigma_i) if surround else torch.ones(1, 1, dtype=torch.float64)
        self.register_buffer("surround_kernel", kernel.to(weight.dtype).to(weight.device))
        self.register_buffer("theta", torch.full((weight.shape[0],), float(theta_init), dtype=weight.dtype,
                                                 device=weight.device))

    # --- the pipeline ---------------------------------------------------------------------------
    def activity(self, layer: nn.Conv2d, x: Tensor, u: Tensor) -> Tensor:
        """Stages 1-2: the activation ``a`` (N, C_out, H', W') the competition sees."""
        a = u
        if self.activation == "cosine":
            w_norm = layer.weight.flatten(1).norm(dim=1).clamp_min(_EPS)  # (C_out,)
            a = u / (patch_norms(layer, x) * w_norm[None, :, None, None])
        if self.surround:
            a = apply_surround(a, self.surround_kernel)
        return a

    def compete(self, a: Tensor) -> Tensor:
        """Stage 3: the post-synaptic signal ``y`` after competition across channels."""
        if self.competition == "hard_wta":
            return a * winner_mask(a)
        if self.competition == "soft_wta":
            r = torch.softmax(a / self.temperature, dim=1)
            return torch.where(winner_mask(a).bool(), r, -r)
        return a

    def direction(self, layer: nn.Conv2d, x: Tensor, u: Tensor, y: Tensor, count: Tensor) -> Tensor:
        """Stage 4: the weight-shaped update direction ``dW``, summed over batch and positions
        (of all processes); BCM moves ``theta`` here. ``count``: (sample, position) pairs."""
        W = layer.weight
        if self.update_kind == "outer":
            y_hat = y / y.norm(dim=1, keepdim=True).clamp_min(_EPS)
            dW = correlate(layer, x, y_hat / patch_norms(layer, x))
        elif self.update_kind == "instar":
            dW = correlate(layer, x, y) - y.sum((0, 2, 3))[:, None, None, None] * W
        elif self.update_kind == "softhebb":
            dW = correlate(layer, x, y) - (y * u).sum((0, 2, 3))[:, None, None, None] * W
        else:  # bcm
            mean_sq = global_sum((y * y).sum((0, 2, 3))) / count  # (C_out,)
            self.theta.mul_(1 - self.theta_decay).add_(self.theta_decay * mean_sq)
            dW = correlate(layer, x, y * (y - self.theta[None, :, None, None]))
        return global_sum(dW)

    def update(self, layer: nn.Conv2d, x: Tensor, y: Tensor) -> None:
        W = layer.weight
        x, u = x.to(W.dtype), y.to(W.dtype)  # under autocast the forward ran in lower precision
        u = without_bias(layer, u)
        post = self.compete(self.activity(layer, x, u))
        count = global_count(post.numel() // post.shape[1], W)
        dW = self.direction(layer, x, u, post, count)
        if self.normalise_update:
            dW = dW / dW.abs().amax().clamp_min(_EPS)
        else:
            dW = dW / count
        if self.adaptive_lr:
            radius = W.flatten(1).norm(dim=1)  # (C_out,)
            dW = dW * (radius - 1).abs().sqrt()[:, None, None, None]
        W.add_(dW, alpha=self.lr)
        if self.weight_norm == "unit":
            W.div_(W.flatten(1).norm(dim=1).clamp_min(_EPS)[:, None, None, None])
        if self.dale:
            W.abs_()

    def extra_repr(self) -> str:
        return (f"update={self.update_kind}, competition={self.competition}, lr={self.lr}, "
                f"activation={self.activation}, surround={self.surround}, weight_norm={self.weight_norm}, "
                f"{super().extra_repr()}")
