"""Rule-aware drop-in replacements for ``nn.Conv2d`` and ``nn.Linear``.

The layers subclass the torch modules, so parameters, ``state_dict`` keys and the forward
computation are those of the original; a :class:`~bionas.rules.base.LearningRule` child decides
what flows backwards. The feedback path is a custom autograd function whose backward calls the
same kernel as plain autograd (``aten.convolution_backward`` / two matrix products), handing it
``B`` instead of ``W`` for the input gradient, so a feedback rule costs what backprop costs plus
building ``B``. The backward is itself differentiable (``convolution_backward`` and matrix
products have derivatives), so a double backward -- DARTS' exact second order -- works through
the rules, differentiating with the rules' feedback paths in both passes; without
``create_graph`` autograd records nothing and the backward costs what it did.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bionas.rules.base import LearningRule


def _as_dtype(dtype: torch.dtype, *tensors: Tensor) -> list[Tensor]:
    """Saved tensors in the gradient's dtype (under autocast the forward ran in lower precision)."""
    return [t if t.dtype == dtype else t.to(dtype) for t in tensors]


class _FeedbackLinear(torch.autograd.Function):
    """y = x W^T + b; backward: dx = delta B, dW = delta^T x, db = sum delta."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, feedback: Tensor) -> Tensor:
        ctx.save_for_backward(x, feedback.detach())  # B is a constant of the backward, also when differentiated
        ctx.has_bias = bias is not None
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, feedback = _as_dtype(grad_out.dtype, *ctx.saved_tensors)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_out @ feedback  # (*, out) @ (out, in) -> (*, in)
        delta = grad_out.reshape(-1, grad_out.shape[-1])  # (N, out)
        if ctx.needs_input_grad[1]:
            grad_w = delta.t() @ x.reshape(-1, x.shape[-1])  # (out, in)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = delta.sum(0)
        return grad_x, grad_w, grad_b, None


class _FeedbackConv2d(torch.autograd.Function):
    """y = conv2d(x, W) + b; backward: dx = conv_transpose2d(delta, B), dW, db exact."""

    @staticmethod
    def forward(ctx, x, weight, bias, feedback, stride, padding, dilation, groups):
        ctx.save_for_backward(x, feedback.detach())  # B is a constant of the backward, also when differentiated
        ctx.conv = (stride, padding, dilation, groups)
        ctx.has_bias = bias is not None
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, feedback = _as_dtype(grad_out.dtype, *ctx.saved_tensors)
        stride, padding, dilation, groups = ctx.conv
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]]
        # The weight gradient does not depend on the weight argument, so one call with B gives
        # B^T delta for the input and the exact local gradients for weight and bias.
        grad_x, grad_w, grad_b = torch.ops.aten.convolution_backward(
            grad_out, x, feedback,
            [feedback.shape[0]] if ctx.has_bias else None,
            list(stride), list(padding), list(dilation), False, [0, 0], groups, mask,
        )
        return grad_x, grad_w, grad_b if mask[2] else None, None, None, None, None, None


class RuleLayer:
    """Mixin shared by :class:`RuleConv2d` and :class:`RuleLinear`.

    Attributes:
        rule: the :class:`LearningRule` in force (a child module, saved in ``state_dict``).
        exact_gradients: when true the layer back-propagates the true gradient (``B := W``) and
            applies no local update; set it with :func:`bionas.rules.exact_gradients`.
        local_updates: when true a local rule updates the weights during forward; set it with
            :func:`bionas.rules.local_updates`.
    """

    rule: LearningRule
    exact_gradients: bool
    local_updates: bool

    def _adopt(self, source: nn.Module, rule: LearningRule):
        """Take over ``source``'s parameters (the same ``Parameter`` objects) and install ``rule``."""
        self.weight, self.bias = source.weight, source.bias
        self.rule = rule
        self.exact_gradients = False
        self.local_updates = False
        self.train(source.training)
        return self

    def forward(self, x: Tensor) -> Tensor:
        if self.exact_gradients:
            return self.rule.exact_forward(self, x)
        return self.rule(self, x)

    def plain_forward(self, x: Tensor, detached: bool = False, snapshot: bool = False) -> Tensor:  # pragma: no cover
        """The layer's ordinary forward. ``detached``: the weights as constants (a local rule's
        view); ``snapshot``: constants copied, so that an in-place local update after this call
        cannot invalidate the input gradient's saved weights."""
        raise NotImplementedError

    def feedback_forward(self, x: Tensor, feedback: Tensor) -> Tensor:  # pragma: no cover
        raise NotImplementedError


def _params(module: nn.Module, detached: bool, snapshot: bool) -> tuple[Tensor, Tensor | None]:
    if not detached:
        return module.weight, module.bias
    weight, bias = module.weight.detach(), None if module.bias is None else module.bias.detach()
    if snapshot:  # the backward needs the weights of this forward, and a local rule is about to change them
        weight, bias = weight.clone(), None if bias is None else bias.clone()
    return weight, bias


class RuleLinear(RuleLayer, nn.Linear):
    """``nn.Linear`` whose learning is decided by ``self.rule``."""

    @classmethod
    def from_module(cls, linear: nn.Linear, rule: LearningRule) -> "RuleLinear":
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        return layer._adopt(linear, rule)

    def plain_forward(self, x: Tensor, detached: bool = False, snapshot: bool = False) -> Tensor:
        weight, bias = _params(self, detached, snapshot)
        return F.linear(x, weight, bias)

    def feedback_forward(self, x: Tensor, feedback: Tensor) -> Tensor:
        return _FeedbackLinear.apply(x, self.weight, self.bias, feedback)


class RuleConv2d(RuleLayer, nn.Conv2d):
    """``nn.Conv2d`` (any stride, padding, dilation, groups, padding mode) learning by ``self.rule``."""

    @classmethod
    def from_module(cls, conv: nn.Conv2d, rule: LearningRule) -> "RuleConv2d":
        layer = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
            padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
            bias=conv.bias is not None, padding_mode=conv.padding_mode, device="meta",
        )
        return layer._adopt(conv, rule)

    def plain_forward(self, x: Tensor, detached: bool = False, snapshot: bool = False) -> Tensor:
        weight, bias = _params(self, detached, snapshot)
        return self._conv_forward(x, weight, bias)

    def feedback_forward(self, x: Tensor, feedback: Tensor) -> Tensor:
        padding = self.padding
        if isinstance(padding, str) or self.padding_mode != "zeros":
            # Non-zero padding modes and padding="same" pad explicitly (as nn.Conv2d does);
            # F.pad's own backward carries the error through the padding.
            mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=mode)
            padding = (0, 0)
        return _FeedbackConv2d.apply(
            x, self.weight, self.bias, feedback, self.stride, padding, self.dilation, self.groups
        )
