"""Oja's subspace rule: a local Hebbian update that keeps the weights bounded.

"Sparse, excitatory networks from neurobiological principles" (eq. 1, after Oja 1991), for a
layer ``z = W x`` (``W`` of shape (out, in), bias left out)::

    dW_ji = eta * z_j * (x_i - sum_k z_k W_ki)             (eq. 1)
    dW_ji = eta * z_j * (x_i - sum_{k != j} z_k W_ki)      (eq. 2, ``exclude_self``)

averaged over the batch: ``dW = eta (z^T x - G W) / N`` with ``G = z^T z`` (``G - diag(G)``
for eq. 2). For a convolution the inputs are the patches each output unit sees, as the
``hebbian`` rule treats them, and the average runs over samples and positions: ``z^T x`` is the
Hebbian correlation (one backward convolution) and ``G`` the (out x out) Gram matrix of the
output maps; in a grouped convolution only output channels of one group share a patch, so the
sum over ``k`` runs within the group (a depthwise convolution learns one Oja unit per channel).
The average over samples and positions is this module's choice (the paper writes eq. 1 per
sample); it keeps ``lr`` independent of the batch and map size. The layer's forward output is its
ordinary one; the update happens only inside :func:`bionas.rules.local_updates`, and no loss
gradient reaches the weights (the error sent to the input still flows through ``W^T`` unless
``detach_input_error``). Under ``torchrun`` the sums run over the global batch.

Args: lr (0.01), exclude_self (False: eq. 1; True: eq. 2), detach_input_error (False).
"""
from __future__ import annotations

import torch
from torch import Tensor

from bionas.errors import ConfigError
from bionas.rules.base import LocalRule
from bionas.rules.conv_local import correlate, global_sum
from bionas.rules.registry import RULES


def oja_direction(layer, x: Tensor, z: Tensor, exclude_self: bool) -> tuple[Tensor, Tensor]:
    """``(z^T x - G W, count)`` summed over samples (and positions) of all processes, weight-shaped."""
    W = layer.weight
    if W.dim() == 4:
        groups = layer.groups
        hebb = correlate(layer, x, z)  # (out, in/groups, kh, kw)
        C = z.shape[1]
        flat = z.transpose(0, 1).reshape(C, -1)  # (out, N * positions)
        gram = flat @ flat.t()
        block = torch.block_diag(*[torch.ones(C // groups, C // groups, dtype=W.dtype, device=W.device)] * groups)
        gram = gram * block  # output channels of different groups see different patches
        count = z.numel() // C
    else:
        x2, z2 = x.reshape(-1, x.shape[-1]), z.reshape(-1, z.shape[-1])
        hebb, gram, count = z2.t() @ x2, z2.t() @ z2, len(z2)
    if exclude_self:
        gram = gram - torch.diag(torch.diagonal(gram))
    decay = (gram @ W.flatten(1)).view_as(W)
    total = global_sum(torch.tensor(float(count), dtype=W.dtype, device=W.device))
    return global_sum(hebb - decay), total


@RULES.register("oja")
class OjaRule(LocalRule):
    """Oja's subspace rule (eq. 1; ``exclude_self``: eq. 2), local, for convolutions and linear layers."""

    color = "#17becf"
    line_style = (0, (3, 1, 1, 1))

    def __init__(self, weight: Tensor, generator: torch.Generator, lr: float = 0.01, exclude_self: bool = False,
                 detach_input_error: bool = False):
        super().__init__(weight, generator, detach_input_error=detach_input_error)
        if not lr > 0:
            raise ConfigError(f"oja needs lr > 0, got {lr}")
        self.lr, self.exclude_self = float(lr), bool(exclude_self)

    def update(self, layer, x: Tensor, y: Tensor) -> None:
        W = layer.weight
        x, z = x.to(W.dtype), y.to(W.dtype)
        if layer.bias is not None:
            z = z - layer.bias.detach().view(1, -1, *([1] * (z.dim() - 2)))
        direction, count = oja_direction(layer, x, z, self.exclude_self)
        W.add_(direction / count, alpha=self.lr)

    def extra_repr(self) -> str:
        return f"lr={self.lr}, exclude_self={self.exclude_self}, {super().extra_repr()}"
