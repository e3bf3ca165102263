"""Convolution algebra shared by the local rules (Hebbian, predictive coding).

A local rule for a convolution needs three things beyond the forward pass, each written here
once with the layer's own stride, padding, dilation and groups:

* :func:`correlate` -- ``sum_{n, p} post[n, c, p] * patch_c(x)[n, p]`` for every output channel
  ``c``: the Hebbian "post x pre" product, weight-shaped. It is the kernel of the weight
  gradient (``conv2d_weight``), so it costs one backward convolution.
* :func:`patch_norms` -- ``||patch_c(x)[n, p]||_2``, the norm of the input patch output channel
  ``c`` sees at position ``p`` (only its group's input channels), shape of the output map.
* :func:`reconstruct` -- the transposed convolution ``W^T post``, input-shaped: how a layer
  predicts its input from its output (predictive coding's generative pass).

Under ``torchrun`` every process sees its shard of the batch; :func:`global_sum` adds a rule's
statistics over the processes, so that a local update equals the one-process update on the
whole global batch (as the gradients of DDP do) and the weights stay identical on every rank.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from bionas.errors import ConfigError


def global_sum(t: Tensor) -> Tensor:
    """``t`` summed over the processes of a distributed job, in place (``t`` itself otherwise)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t


def global_count(n: int, like: Tensor) -> Tensor:
    """The number ``n`` (of samples, or sample-positions) summed over the processes, as a scalar
    of ``like``'s dtype and device: the denominator of a global-batch mean."""
    return global_sum(torch.tensor(float(n), dtype=like.dtype, device=like.device))


def without_bias(layer: nn.Module, y: Tensor) -> Tensor:
    """The layer's output ``y`` less its bias (channels on dim 1 of a map, last dim of a linear
    output): the weights' own product ``W x``, what the local rules' updates use."""
    if layer.bias is None:
        return y
    shape = (1, -1, 1, 1) if y.dim() == 4 else (-1,)
    return y - layer.bias.detach().view(shape)


def conv_geometry(layer: nn.Conv2d) -> tuple[tuple, tuple, tuple, int]:
    """``(stride, padding, dilation, groups)`` of a zero-padded convolution with numeric padding."""
    if isinstance(layer.padding, str) or layer.padding_mode != "zeros":
        raise ConfigError(f"local rules need zero padding given as numbers; got padding={layer.padding!r}, "
                          f"padding_mode={layer.padding_mode!r}")
    return tuple(layer.stride), tuple(layer.padding), tuple(layer.dilation), layer.groups


def correlate(layer: nn.Conv2d, x: Tensor, post: Tensor) -> Tensor:
    """Weight-shaped ``sum over batch and positions of post_c * patch_c(x)``.

    x: (N, C_in, H, W) input; post: (N, C_out, H', W') a signal on the output map.
    """
    stride, padding, dilation, groups = conv_geometry(layer)
    return torch.nn.grad.conv2d_weight(x, layer.weight.shape, post, stride, padding, dilation, groups)


def patch_norms(layer: nn.Conv2d, x: Tensor, eps: float = 1e-12) -> Tensor:
    """(N, C_out, H', W'): L2 norm of the input patch behind each output unit.

    Output channels of one group see the same patch, so one channel per group is computed and
    repeated (a full ``C_out``-channel convolution would cost as much as the layer itself)."""
    stride, padding, dilation, groups = conv_geometry(layer)
    C_out, C_in_group, kh, kw = layer.weight.shape
    ones = torch.ones(groups, C_in_group, kh, kw, dtype=x.dtype, device=x.device)
    sq = F.conv2d(x * x, ones, None, stride, padding, dilation, groups)  # (N, groups, H', W')
    return sq.clamp_min(eps).sqrt().repeat_interleave(C_out // groups, dim=1)


def reconstruct(layer: nn.Conv2d, weight: Tensor, post: Tensor, input_shape: torch.Size) -> Tensor:
    """(N, C_in, H, W): the transposed convolution of ``post`` with ``weight`` (``W^T post``)."""
    stride, padding, dilation, groups = conv_geometry(layer)
    return torch.nn.grad.conv2d_input(input_shape, weight, post, stride, padding, dilation, groups)


def dog_kernel(size: int, sigma_e: float, sigma_i: float) -> Tensor:
    """Difference-of-Gaussians surround kernel, ``size x size``, centre value 1.

    ``K = (G_e / (2 pi s_e^2) - G_i / (2 pi s_i^2)) / K_center`` with
    ``G(x, y) = exp(-(x^2 + y^2) / (2 s^2))`` (Hasani et al. 2019, as used by the Hebbian-CNN
    paper, Eq. 20); ``K_center`` is the bracket's value at the centre, so ``K(0, 0) = 1``.
    """
    if size < 1 or size % 2 == 0:
        raise ConfigError(f"surround_size must be odd and positive, got {size}")
    if not (0 < sigma_e < sigma_i):
        raise ConfigError(f"surround needs 0 < sigma_e < sigma_i (excitatory centre, wider inhibitory "
                          f"surround), got sigma_e={sigma_e}, sigma_i={sigma_i}")
    r = torch.arange(size, dtype=torch.float64) - size // 2
    d2 = r[:, None] ** 2 + r[None, :] ** 2
    bracket = (torch.exp(-d2 / (2 * sigma_e**2)) / (2 * torch.pi * sigma_e**2)
               - torch.exp(-d2 / (2 * sigma_i**2)) / (2 * torch.pi * sigma_i**2))
    return bracket / bracket[size // 2, size // 2]


def apply_surround(a: Tensor, kernel: Tensor) -> Tensor:
    """Every channel of ``a`` (N, C, H, W) convolved with the same ``kernel`` (k x k, "same"
    padding): the DoG lateral inhibition, depthwise."""
    k = kernel.shape[-1]
    return F.conv2d(a, kernel.to(a.dtype).expand(a.shape[1], 1, k, k), padding=k // 2, groups=a.shape[1])
