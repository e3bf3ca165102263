"""Predictive-coding convolution: the output is refined by inference, both weights learn locally.

Formulation: hybrid (amortised) predictive coding -- Tschantz, Millidge, Seth & Buckley (2023),
"Hybrid predictive coding: Inferring, fast and slow", PLoS Comput Biol 19(8): e1011280,
https://doi.org/10.1371/journal.pcbi.1011280 -- on top of Rao & Ballard (1999), written for one
convolution. The BioNAS paper (section 3.2) describes its PC convolution only as "iteratively
reduces prediction errors, with optional adaptive updates, gating, and normalization" and its
appendix code is missing from the text, so the layer below is a reconstruction of that method.

With input ``x`` (N, C_in, H, W), feedforward weight ``W`` (the layer's own) and a generative
weight ``G`` of the same shape (a buffer, drawn Xavier-uniform from the layer's generator), the
representation ``r`` (N, C_out, H', W') minimises the energy

    E(r) = pi/2 ||x - G^T r||^2 + 1/2 ||r - r0||^2,        r0 = W * x  (feedforward guess)

where ``G^T r`` is the transposed convolution (the layer's prediction of its input) and ``pi`` is
1, or with ``normalise`` the input's precision ``1 / mean(x^2)`` per sample (so the balance of
the two terms does not depend on the input's scale). Inference starts at ``r = r0`` and takes
``iterations`` steps ``r <- r + beta d`` along ``d = -dE/dr = pi G (*) e - (r - r0)``,
``e = x - G^T r``; ``beta = inference_rate``, or with ``adaptive`` the exact line-search step of
the quadratic energy, ``beta = ||d||^2 / (pi ||G^T d||^2 + ||d||^2)`` per sample (never increases
E). The layer outputs ``bias + r0 + gate (r - r0)``: ``gate`` (0..1) mixes the refinement in.

Learning (only inside :func:`bionas.rules.local_updates`), with ``M`` the number of
(sample, position) pairs and the final ``r``, ``e``: ``G <- G + lr pi corr(e, r) / M`` (gradient
descent on the prediction error) and ``W <- W + lr corr(x, r - r0) / M`` (the feedforward sweep
learns to predict the inferred representation, the amortisation of hybrid PC); ``corr`` is the
Hebbian post x pre product of :func:`~bionas.rules.conv_local.correlate` (summed over the
global batch under ``torchrun``, so every process applies the same update). The loss never sees
``W``; in rule mode the error reaches the input through ``W^T`` (straight through the
refinement), unless ``detach_input_error``. Under :func:`bionas.rules.exact_gradients` the whole
inference is differentiated, so attacks see the true gradient of the function computed.

Args: iterations (5), inference_rate (0.1), adaptive (False), gate (1.0), normalise (False),
lr (0.01), detach_input_error (False).
"""
from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bionas.errors import ConfigError
from bionas.rules.base import LocalRule, xavier_like
from bionas.rules.conv_local import conv_geometry, correlate, global_count, global_sum, reconstruct, without_bias
from bionas.rules.registry import RULES

_EPS = 1e-12


@RULES.register("pc")
class PredictiveCodingRule(LocalRule):
    """Hybrid predictive coding for one convolution (see the module docstring)."""

    color = "#17becf"  # in plots: edges and curves of this rule
    line_style = (0, (3, 1, 1, 1))

    layer_types: ClassVar[tuple[type[nn.Module], ...]] = (nn.Conv2d,)
    preserves_forward: ClassVar[bool] = False

    def __init__(self, weight: Tensor, generator: torch.Generator, iterations: int = 5,
                 inference_rate: float = 0.1, adaptive: bool = False, gate: float = 1.0,
                 normalise: bool = False, lr: float = 0.01, detach_input_error: bool = False):
        super().__init__(weight, generator, detach_input_error=detach_input_error)
        if weight.dim() != 4:
            raise ConfigError("the pc rule learns convolutions only (Conv2d weights are 4-d)")
        if not isinstance(iterations, int) or isinstance(iterations, bool) or iterations < 0:
            raise ConfigError(f"pc option iterations must be a non-negative integer, got {iterations!r}")
        if inference_rate <= 0 or lr <= 0 or not (0.0 <= gate <= 1.0):
            raise ConfigError(f"pc needs inference_rate > 0, lr > 0 and 0 <= gate <= 1; got inference_rate="
                              f"{inference_rate}, lr={lr}, gate={gate}")
        self.iterations, self.inference_rate, self.adaptive = iterations, float(inference_rate), bool(adaptive)
        self.gate, self.normalise, self.lr = float(gate), bool(normalise), float(lr)
        self.register_buffer("G", xavier_like(weight, generator))

    def precision(self, x: Tensor) -> Tensor:
        """(N, 1, 1, 1): ``pi`` of the energy, 1 or ``1 / mean(x^2)`` per sample."""
        if not self.normalise:
            return torch.ones(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device)
        return 1.0 / (x * x).mean((1, 2, 3), keepdim=True).clamp_min(_EPS)

    def infer(self, layer: nn.Conv2d, x: Tensor, weight: Tensor, G: Tensor,
              r0: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(r0, r, e, pi)`` after the inference iterations; differentiable if the inputs are.
        ``r0``: the feedforward ``W * x`` when the caller has it already."""
        stride, padding, dilation, groups = conv_geometry(layer)
        pi = self.precision(x)
        if r0 is None:
            r0 = F.conv2d(x, weight, None, stride, padding, dilation, groups)  # (N, C_out, H', W')
        r = r0
        e = x - reconstruct(layer, G, r, x.shape)  # (N, C_in, H, W)
        for _ in range(self.iterations):
            d = pi * F.conv2d(e, G, None, stride, padding, dilation, groups) - (r - r0)  # -dE/dr
            Gd = reconstruct(layer, G, d, x.shape)
            if self.adaptive:
                dd = (d * d).sum((1, 2, 3), keepdim=True)
                beta = dd / (pi * (Gd * Gd).sum((1, 2, 3), keepdim=True) + dd).clamp_min(_EPS)
            else:
                beta = self.inference_rate
            r = r + beta * d
            e = e - beta * Gd  # e = x - G^T r, kept up to date without another transposed conv
        return r0, r, e, pi

    def _output(self, layer: nn.Conv2d, r0: Tensor, r: Tensor, bias: Tensor | None) -> Tensor:
        y = r0 + self.gate * (r - r0)
        return y if bias is None else y + bias[None, :, None, None]

    def exact_forward(self, layer: nn.Conv2d, x: Tensor) -> Tensor:
        r0, r, _, _ = self.infer(layer, x, layer.weight, self.G)
        return self._output(layer, r0, r, layer.bias)

    def forward(self, layer: nn.Conv2d, x: Tensor) -> Tensor:
        # the feedforward sweep carries the gradient: through W^T only (the weights are constants)
        y = layer.plain_forward(x.detach() if self.detach_input_error else x, detached=True,
                                snapshot=layer.local_updates)
        with torch.no_grad():
            r0 = without_bias(layer, y.detach())
            r0, r, e, pi = self.infer(layer, x.detach(), layer.weight.detach(), self.G, r0=r0.to(x.dtype))
            refinement = self.gate * (r - r0)
        y = y + refinement  # value: the refined output
        if layer.local_updates:
            with torch.no_grad():
                self.learn(layer, x.detach(), r0, r, e, pi)
        return y

    def learn(self, layer: nn.Conv2d, x: Tensor, r0: Tensor, r: Tensor, e: Tensor, pi: Tensor) -> None:
        """The two local updates, from the quantities inference left (see the module docstring)."""
        W = layer.weight
        M = global_count(r.numel() // r.shape[1], r)
        dG = global_sum(correlate(layer, e, pi * r)) / M
        dW = global_sum(correlate(layer, x, r - r0)) / M
        self.G.add_(dG.to(self.G.dtype), alpha=self.lr)
        W.add_(dW.to(W.dtype), alpha=self.lr)

    def extra_repr(self) -> str:
        return (f"iterations={self.iterations}, inference_rate={self.inference_rate}, adaptive={self.adaptive}, "
                f"gate={self.gate}, normalise={self.normalise}, lr={self.lr}, {super().extra_repr()}")
