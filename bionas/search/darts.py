"""BioNAS-DARTS: gradient descent on the architecture logits (BioNAS section 3.3, eqs. 6-9).

Liu, Simonyan & Yang (2019), "DARTS: Differentiable Architecture Search", ICLR,
https://arxiv.org/abs/1806.09055

    first order:   grad_a L_val(w, a)
    second order:  grad_a L_val(w', a) - xi * grad2_{a,w} L_train(w, a) . v,   v = grad_w' L_val(w', a),
                   w' = the weight optimiser's next step from w                      (DARTS eq. 7)
    hessian: exact              grad2 . v = grad_a (grad_w L_train(w, a) . v), by double backward
             finite_difference  grad2 . v ~ (grad_a L_train(w + eps v, a) - grad_a L_train(w - eps v, a))
                                / (2 eps), eps = unrolled_radius / ||v||              (DARTS eq. 8)

The finite difference is DARTS' approximation; at its default radius it crosses the kinks of ReLU
and max pooling and can be far from the derivative (results/README.md), so ``exact`` is the
default. Under ``arch_gradient: rule`` every derivative -- the first-order one and both passes of
the double backward -- takes the rules' feedback paths, so the Hessian-vector term is the
derivative of the rules' weight gradient as the rules define derivatives (for ``bp`` the true one);
the finite difference instead differentiates the rules' weight gradient through the true forward.

Adam moves the logits (lr 3e-4, betas (0.5, 0.999), weight decay 1e-3); the base class trains
the weights by SGD. The errors that reach the logits flow back through every edge's own
learning rule, as in the paper's implementation (biotorch layers); ``arch_gradient: exact``
uses the true gradient for the architecture step instead.

Two details beyond the DARTS paper, both so the approximation is the derivative it claims to be:

* ``w'`` is the weight optimiser's own next step -- momentum, Nesterov and weight decay included
  (the DARTS code also folds in momentum and weight decay). Its derivative with respect to the
  training gradient is ``lr`` for plain momentum and ``lr (1 + mu)`` for Nesterov, so that is
  ``xi``. Gradient clipping is not mirrored (nor is it in DARTS).
* The two finite-difference passes at ``w +- eps v`` share one random-feedback draw: brSF
  redraws its feedback at each training forward, and a fresh draw between the two passes would
  put the difference of two random feedbacks, divided by ``2 eps``, into the gradient.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call

from bionas import distributed, rules
from bionas.configs.options import option
from bionas.engine import accuracy, check_finite
from bionas.search.strategy import (DIVERGED_FIX, STRATEGIES, Batch, SearchStrategy, no_feedback_redraws,
                                    preserved_batchnorm_statistics)


@dataclass
class DartsOptions:
    """DARTS' architecture step (Liu et al. 2019, section 3.1.2; BioNAS appendix 7.1)."""

    order: str = option("first", "first: grad at w; second: unrolled w' = w - xi grad L_train (eq. 7)",
                        choices=("first", "second"))
    arch_lr: float = option(3e-4, "Adam learning rate of the logits", gt=0)
    arch_betas: tuple[float, float] = option((0.5, 0.999), "Adam betas of the logits", ge=0, lt=1)
    arch_weight_decay: float = option(1e-3, "weight decay of the logits", ge=0)
    hessian: str = option("exact", "second order's Hessian-vector term: exact (double backward) or "
                          "finite_difference (DARTS eq. 8, an approximation)", choices=("exact", "finite_difference"))
    unrolled_radius: float = option(0.01, "finite difference only: eps = radius / ||grad_w' L_val|| (eq. 8)", gt=0)
    arch_gradient: str = option("rule", "rule: errors flow through each edge's learning rule; exact: true gradient",
                                choices=("rule", "exact"))


@STRATEGIES.register("darts")
class DartsStrategy(SearchStrategy):
    """DARTS over (op, rule) candidates; ``options.order`` picks the first- or second-order gradient."""

    Options = DartsOptions

    def __init__(self, model, config, context: distributed.Context = distributed.Context()):
        super().__init__(model, config, context)
        o = self.options
        self.arch_optimizer = torch.optim.Adam(model.arch_parameters(), lr=o.arch_lr, betas=tuple(o.arch_betas),
                                               weight_decay=o.arch_weight_decay)

    def architecture_gradient_mode(self):
        """``exact_gradients`` when the options ask for true architecture gradients, else the rules."""
        if self.options.arch_gradient == "exact":
            return rules.exact_gradients(self.model)
        return nullcontext()

    def update_architecture(self, train_batch: Batch, val_batch: Batch, step: int) -> dict[str, float]:
        model = self.model
        model.train()
        with preserved_batchnorm_statistics(model), self.architecture_gradient_mode():
            if self.options.order == "second":  # float32, no recomputation: see unrolled_gradient
                with model.cell_checkpointing(False):
                    grads, loss, logits = self.unrolled_gradient(train_batch, val_batch)
            else:
                with self.autocast():
                    logits = model(val_batch[0])  # (B, classes)
                loss = F.cross_entropy(logits.float(), val_batch[1])
                grads = torch.autograd.grad(loss, model.arch_parameters())
        # under torchrun: the mean over the ranks, the loss with them so that all ranks stop together
        *grads, loss = self.average_gradients([*grads, loss.detach()])
        value = check_finite(loss, step, "search architecture", DIVERGED_FIX)
        self.arch_optimizer.zero_grad(set_to_none=True)
        for alpha, grad in zip(model.arch_parameters(), grads):
            alpha.grad = grad
        self.arch_optimizer.step()
        return {"arch_loss": value, "arch_acc": accuracy(logits, val_batch[1])}

    # --- second order ---------------------------------------------------------------------------
    def unrolled_gradient(self, train_batch: Batch, val_batch: Batch) -> tuple[list[Tensor], Tensor, Tensor]:
        """The second-order architecture gradient, the validation loss at ``w'`` and its logits.

        Always float32 and without cell checkpointing: the Hessian-vector term turns float32
        rounding of batch norm into percent-level differences on some batches already
        (results/README.md), bf16 would swamp it; and a recomputed cell would read the weights
        ``w`` again where the forward ran at ``w'`` (``functional_call`` swaps them only for the
        call)."""
        model = self.model
        names, params = zip(*model.named_weight_parameters())
        alphas = model.arch_parameters()
        (xt, yt), (xv, yv) = train_batch, val_batch

        # w' = the step the weight optimiser would take from w on this training batch; the exact
        # Hessian-vector term later differentiates these gradients, so their graph is kept
        # (under torchrun every gradient below is averaged over the ranks; the double backward
        # differentiates this rank's share, and the mean of the shares is the whole batch's)
        exact = self.options.hessian == "exact"
        grads_train = torch.autograd.grad(F.cross_entropy(model(xt), yt), params, allow_unused=True,
                                          create_graph=exact)
        step_grads = self.average_gradients([None if g is None else g.detach() for g in grads_train])
        with torch.no_grad():
            unrolled = [self.virtual_step(p, g).requires_grad_() for p, g in zip(params, step_grads)]
        logits = functional_call(model, dict(zip(names, unrolled)), (xv,))  # (B, classes)
        loss = F.cross_entropy(logits, yv)
        grads = self.average_gradients(torch.autograd.grad(loss, [*alphas, *unrolled], allow_unused=True))
        d_alpha = list(grads[:len(alphas)])
        v = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads[len(alphas):])]

        xi = self.xi()
        if exact:
            dot = sum((g * vi).sum() for g, vi in zip(grads_train, v) if g is not None and g.requires_grad)
            hv = torch.autograd.grad(dot, alphas, allow_unused=True) if torch.is_tensor(dot) else [None] * len(alphas)
            hv = self.average_gradients(hv)
            return ([da - xi * h if h is not None else da for da, h in zip(d_alpha, hv)],
                    loss.detach(), logits.detach())
        norm = torch.sqrt(sum(vi.pow(2).sum() for vi in v))
        if float(norm) == 0.0:
            return d_alpha, loss.detach(), logits.detach()
        eps = self.options.unrolled_radius / norm
        plus = self._train_arch_gradient(names, params, v, eps, train_batch)
        with no_feedback_redraws(model):  # the same random feedback on both sides of the difference
            minus = self._train_arch_gradient(names, params, v, -eps, train_batch)
        plus, minus = self.average_gradients(plus), self.average_gradients(minus)
        return ([da - xi * (gp - gm) / (2 * eps) for da, gp, gm in zip(d_alpha, plus, minus)],
                loss.detach(), logits.detach())

    def _train_arch_gradient(self, names: Sequence[str], params: Sequence[Tensor], v: Sequence[Tensor],
                             eps: Tensor, batch: Batch) -> tuple[Tensor, ...]:
        """``grad_a L_train(w + eps v, a)`` (the weights held constant)."""
        shifted = {n: p.detach() + eps * vi for n, p, vi in zip(names, params, v)}
        loss = F.cross_entropy(functional_call(self.model, shifted, (batch[0],)), batch[1])
        return torch.autograd.grad(loss, self.model.arch_parameters())

    def xi(self) -> float:
        """d w' / d (training gradient): ``lr``, times ``1 + momentum`` under Nesterov."""
        group = self.weight_optimizer.param_groups[0]
        return group["lr"] * (1.0 + group["momentum"] if group["nesterov"] else 1.0)

    @torch.no_grad()
    def virtual_step(self, p: Tensor, grad: Tensor | None) -> Tensor:
        """What ``torch.optim.SGD.step`` would make of ``p`` given ``grad``, without changing anything."""
        group = self.weight_optimizer.param_groups[0]
        if grad is None:  # SGD leaves parameters without a gradient alone
            return p.detach().clone()
        if group["dampening"]:
            raise NotImplementedError("the unrolled step mirrors SGD without dampening")
        d = grad + group["weight_decay"] * p if group["weight_decay"] else grad.clone()
        mu = group["momentum"]
        if mu:
            buf = self.weight_optimizer.state.get(p, {}).get("momentum_buffer")
            buf = d.clone() if buf is None else mu * buf + d
            d = d + mu * buf if group["nesterov"] else buf
        return p.detach() - group["lr"] * d

    def state_dict(self) -> dict:
        return {**super().state_dict(), "arch_optimizer": self.arch_optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.arch_optimizer.load_state_dict(state["arch_optimizer"])
