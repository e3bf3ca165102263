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

The paper's networks apply a nonlinearity after the layer and learn from the activity after it
("with the incorporation of nonlinear activation functions, as in our model"; its algorithm
saves the normalised hidden activations for the Hebbian update): option ``post`` says which
postsynaptic activity ``z`` the update uses -- ``linear`` (eq. 1 as written, ``z = W x``),
``relu``, or ``zscore`` (the paper's magnitude-preserving z-score, eq. 6, then ReLU and a rescale
to [0, 1]: :func:`magnitude_zscore`) -- which must match what the network applies after the
layer (the ``mlp`` model's ``activation``).

Args: lr (0.01), exclude_self (False: eq. 1; True: eq. 2), post (``linear``), beta (1.0, eq. 6's
scale), detach_input_error (False).
"""
from __future__ import annotations

import torch
from torch import Tensor

from bionas.errors import ConfigError
from bionas.rules.base import LocalRule
from bionas.rules.conv_local import correlate, global_count, global_sum, without_bias
from bionas.rules.registry import RULES


POSTS = ("linear", "relu", "zscore")


def magnitude_zscore(y: Tensor, beta: float = 1.0, eps: float = 1e-8) -> Tensor:
    """Eq. 6 of "Sparse, excitatory networks...": ``beta (|y| - mean |y|) / std |y|`` over each
    sample's units (channels and positions for a map), then ReLU and a rescale of each sample to
    [0, 1] (divided by its maximum): non-negative activity of preserved relative strength."""
    a = y.abs()
    dims = tuple(range(1, y.dim()))
    z = beta * (a - a.mean(dims, keepdim=True)) / (a.std(dims, keepdim=True) + eps)
    z = torch.relu(z)
    return z / (z.amax(dims, keepdim=True) + eps)


def postsynaptic(u: Tensor, post: str, beta: float = 1.0) -> Tensor:
    """The activity a Hebbian update uses from the layer's linear output ``u``."""
    if post == "relu":
        return torch.relu(u)
    if post == "zscore":
        return magnitude_zscore(u, beta)
    return u


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
    return global_sum(hebb - decay), global_count(count, W)


@RULES.register("oja")
class OjaRule(LocalRule):
    """Oja's subspace rule (eq. 1; ``exclude_self``: eq. 2), local, for convolutions and linear layers."""

    color = "#17becf"
    line_style = (0, (3, 1, 1, 1))

    def __init__(self, weight: Tensor, generator: torch.Generator, lr: float = 0.01, exclude_self: bool = False,
                 post: str = "linear", beta: float = 1.0, detach_input_error: bool = False):
        super().__init__(weight, generator, detach_input_error=detach_input_error)
        if not lr > 0 or post not in POSTS:
            raise ConfigError(f"oja needs lr > 0 and post in {', '.join(POSTS)}; got lr={lr}, post={post!r}")
        self.lr, self.exclude_self, self.post, self.beta = float(lr), bool(exclude_self), post, float(beta)

    def update(self, layer, x: Tensor, y: Tensor) -> None:
        W = layer.weight
        x, z = x.to(W.dtype), without_bias(layer, y.to(W.dtype))
        direction, count = oja_direction(layer, x, postsynaptic(z, self.post, self.beta), self.exclude_self)
        W.add_(direction / count, alpha=self.lr)

    def extra_repr(self) -> str:
        return f"lr={self.lr}, exclude_self={self.exclude_self}, post={self.post}, {super().extra_repr()}"
