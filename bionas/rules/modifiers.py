"""Rule modifiers: behaviour added to any learning rule by name, ``RULE+MODIFIER``.

A modifier is a small module attached to a layer's rule (``rule.modifiers``, saved with it in
``state_dict``, so a resumed run continues bitwise) with four hooks, each called by the one
place that owns the moment:

* ``observe(layer, x, y)`` -- a weight-training forward saw input ``x`` and output ``y`` (the
  layer's forward, only while :func:`bionas.rules.local_updates` is on: never in architecture
  steps, evaluation or attacks);
* ``before_optimizer_step(layer)`` -- the gradients are final (``engine.train_step``);
* ``after_update(layer)`` -- the weights just changed: after the optimiser's step
  (``engine.train_step``) and after a local rule's own update (its forward);
* ``initialise(layer, generator)`` -- after the network's weight initialisation.

Modifiers:

* ``dale`` -- non-negative, excitatory weights (Dale's law), as in "Sparse, excitatory networks
  from neurobiological principles" (section 3.1.3: ``w = max(0, w)`` after every update, weights
  initialised uniform in [0.01, 0.1]). The clamp runs after every step, so no optimiser state --
  momentum, weight decay -- can leave a weight negative. Options: ``init`` (``paper``: U[0.01,
  0.1]; ``scaled``: U[a/10, a] with ``a`` the layer's Xavier-uniform bound, the paper's ratio of
  bounds at the layer's scale; ``abs``: the absolute value of the network's own initialisation),
  ``bias`` (also clamp the bias; the paper clamps both, default False since most ops here have
  none and batch norm follows).
* ``bcm_lr`` -- BCM-gated per-weight learning rates ("Homeostatic learning for classical
  artificial neural networks", eq. 9, with the sliding threshold of eqs. 2-3): every weight keeps
  its learning rate (a factor 1 on its gradient) until its saturation statistic crosses the BCM
  threshold, then the factor decays over ``decay_steps`` weight steps, ``linear`` (1 - t/T) or
  ``log`` (the paper's ``-ln(x) + 2``, reconstructed as ``(2 - ln x) / 2`` with ``x`` running
  from 1 to ``e^2`` over the decay, so it starts at 1 and ends at 0); it never rises. The paper
  leaves the statistic open between the postsynaptic activation and the error term; the default,
  ``statistic: coactivation``, is the running mean of the weight's own pre x post product
  ``c_ij = <x_i y_j>`` (its abstract: a rate "based on the activation of presynaptic and
  postsynaptic neurons", per weight), compared with the BCM threshold of its postsynaptic unit,
  ``theta_j = lam <y_j^2>`` (eq. 3), both running means with time constant ``tau`` steps; a
  weight is saturated once ``|c_ij| >= theta_j``. ``statistic: error`` is the paper's other
  choice: the running mean of ``|dL/dW_ij|`` (the error term ``delta x``) falling below the fixed
  ``error_threshold``. The factor multiplies the gradient before the optimiser (so weight decay,
  added by the optimiser, is not gated); it needs a rule with a loss gradient.
"""
from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor, nn

from bionas.errors import ConfigError
from bionas.rules.base import LearningRule, LocalRule
from bionas.rules.conv_local import correlate, global_count, global_sum, without_bias
from bionas.rules.registry import MODIFIERS


class Modifier(nn.Module):
    """Base of the rule modifiers: every hook a no-op."""

    name: ClassVar[str] = ""
    needs_gradient: ClassVar[bool] = False  # only for rules whose weights receive the loss gradient

    def __init__(self, weight: Tensor):
        super().__init__()

    def observe(self, layer, x: Tensor, y: Tensor) -> None:
        pass

    def before_optimizer_step(self, layer) -> None:
        pass

    def after_update(self, layer) -> None:
        pass

    def initialise(self, layer, generator: torch.Generator) -> None:
        pass


def modifier_options(cls: type) -> dict[str, object]:
    import inspect

    params = list(inspect.signature(cls.__init__).parameters.values())[2:]
    return {p.name: p.default for p in params}


def compose(base: type[LearningRule], modifiers: list[type[Modifier]], name: str) -> type[LearningRule]:
    """The class of rule ``base`` with ``modifiers``: options are the base rule's and each
    modifier's (a name two of them take is written ``MODIFIER.option``)."""
    from bionas.rules.convert import rule_options

    if len({m.name for m in modifiers}) != len(modifiers):
        raise ConfigError(f"rule {name!r} names a modifier twice")
    for m in modifiers:
        if m.needs_gradient and issubclass(base, LocalRule):
            raise ConfigError(f"rule {name!r}: {m.name} gates loss gradients, and {base.name} weights get none; "
                              f"use it with bp, fa, usf, brsf or frsf")
    own = rule_options(base)
    per_mod = {m.name: modifier_options(m) for m in modifiers}
    options = dict(own)
    for mname, opts in per_mod.items():
        for k, v in opts.items():
            options[k if k not in options and sum(k in o for o in per_mod.values()) == 1 else f"{mname}.{k}"] = v

    def __init__(self, weight: Tensor, generator: torch.Generator, **given):
        mine, theirs = {}, {m.name: {} for m in modifiers}
        for key, value in given.items():
            mname, dot, opt = key.partition(".")
            if dot and mname in theirs:
                theirs[mname][opt] = value
            elif key in own:
                mine[key] = value
            else:
                takers = [m for m in modifiers if key in per_mod[m.name]]
                if len(takers) != 1:
                    raise ConfigError(f"rule {name!r} does not take option {key!r}; it takes: {', '.join(options)}")
                theirs[takers[0].name][key] = value
        base.__init__(self, weight, generator, **mine)
        self.modifiers = nn.ModuleList([m(weight, **theirs[m.name]) for m in modifiers])

    doc = (base.__doc__ or base.name).strip().splitlines()[0].rstrip(".")
    cls = type(name.replace("+", "__"), (base,), {
        "__init__": __init__, "composed_options": options, "__module__": __name__,
        "__doc__": f"{doc}; + {', '.join(m.name for m in modifiers)}."})
    cls.name = name
    return cls


@MODIFIERS.register("dale")
class Dale(Modifier):
    """Non-negative weights: clamped at 0 after every update, non-negative initialisation."""

    INITS = ("paper", "scaled", "abs")

    def __init__(self, weight: Tensor, init: str = "paper", bias: bool = False):
        super().__init__(weight)
        if init not in self.INITS:
            raise ConfigError(f"dale option init={init!r} is unknown; choose one of {', '.join(self.INITS)}")
        self.init, self.bias = init, bool(bias)

    @torch.no_grad()
    def initialise(self, layer, generator: torch.Generator) -> None:
        W = layer.weight
        if self.init == "abs":
            W.abs_()
            return
        if self.init == "paper":
            low, high = 0.01, 0.1
        else:
            fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(W)
            high = math.sqrt(6.0 / (fan_in + fan_out))
            low = high / 10
        W.copy_(torch.rand(W.shape, generator=generator, dtype=W.dtype, device="cpu").to(W.device) * (high - low) + low)

    @torch.no_grad()
    def after_update(self, layer) -> None:
        layer.weight.clamp_(min=0)
        if self.bias and layer.bias is not None:
            layer.bias.clamp_(min=0)

    def extra_repr(self) -> str:
        return f"init={self.init}, bias={self.bias}"


@MODIFIERS.register("bcm_lr")
class BcmLearningRate(Modifier):
    """Per-weight learning-rate factors, 1 until a BCM saturation threshold, then decaying."""

    needs_gradient = True
    DECAYS = ("linear", "log")
    STATISTICS = ("coactivation", "error")

    def __init__(self, weight: Tensor, decay: str = "linear", decay_steps: int = 1000, tau: float = 100.0,
                 lam: float = 1.0, statistic: str = "coactivation", error_threshold: float = 1e-3):
        super().__init__(weight)
        if decay not in self.DECAYS or statistic not in self.STATISTICS:
            raise ConfigError(f"bcm_lr needs decay in {self.DECAYS} and statistic in {self.STATISTICS}; "
                              f"got decay={decay!r}, statistic={statistic!r}")
        if not (decay_steps >= 1 and tau >= 1 and lam > 0 and error_threshold > 0):
            raise ConfigError(f"bcm_lr needs decay_steps >= 1, tau >= 1, lam > 0, error_threshold > 0; got "
                              f"{decay_steps}, {tau}, {lam}, {error_threshold}")
        self.decay, self.statistic = decay, statistic
        self.decay_steps, self.tau, self.lam, self.error_threshold = int(decay_steps), float(tau), float(lam), \
            float(error_threshold)
        w = weight.detach()
        self.register_buffer("saturation", torch.zeros_like(w, memory_format=torch.contiguous_format))
        self.register_buffer("theta", torch.zeros(w.shape[0], dtype=w.dtype, device=w.device))
        self.register_buffer("crossed_at", torch.full_like(w, -1.0, memory_format=torch.contiguous_format))
        self.register_buffer("factor", torch.ones_like(w, memory_format=torch.contiguous_format))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long, device=w.device))
        self.register_buffer("observed", torch.zeros((), dtype=torch.bool, device=w.device))

    def _mean(self, old: Tensor, new: Tensor) -> Tensor:
        """Running mean with time constant ``tau`` steps; the first observation starts it."""
        return new if not bool(self.observed) else old + (new - old) / self.tau

    @torch.no_grad()
    def observe(self, layer, x: Tensor, y: Tensor) -> None:
        if self.statistic != "coactivation":
            return
        W = layer.weight
        x, u = x.to(W.dtype), without_bias(layer, y.to(W.dtype))  # the weights' own product
        if W.dim() == 4:
            count = global_count(u.numel() // u.shape[1], W)
            co = global_sum(correlate(layer, x, u)) / count
            sq = global_sum((u * u).sum((0, 2, 3))) / count
        else:
            x2, u2 = x.reshape(-1, x.shape[-1]), u.reshape(-1, u.shape[-1])
            count = global_count(len(u2), W)
            co = global_sum(u2.t() @ x2) / count
            sq = global_sum((u2 * u2).sum(0)) / count
        self.saturation.copy_(self._mean(self.saturation, co))
        self.theta.copy_(self._mean(self.theta / self.lam, sq) * self.lam)
        self.observed.fill_(True)

    @torch.no_grad()
    def before_optimizer_step(self, layer) -> None:
        grad = layer.weight.grad
        if grad is None:
            return
        if self.statistic == "error":
            self.saturation.copy_(self._mean(self.saturation, grad.abs()))
            self.observed.fill_(True)
            saturated = self.saturation < self.error_threshold
        elif bool(self.observed):
            theta = self.theta.view(-1, *([1] * (grad.dim() - 1)))
            saturated = self.saturation.abs() >= theta
        else:
            saturated = torch.zeros_like(grad, dtype=torch.bool)
        self.crossed_at.masked_fill_(saturated & (self.crossed_at < 0), float(self.steps))
        t = (self.steps.to(grad.dtype) - self.crossed_at).clamp_min(0) / self.decay_steps
        if self.decay == "linear":
            decayed = (1 - t).clamp_min(0)
        else:
            decayed = ((2 - torch.log1p((math.e ** 2 - 1) * t.clamp_max(1))) / 2).clamp_min(0)
        self.factor.copy_(torch.where(self.crossed_at >= 0, torch.minimum(decayed, self.factor), self.factor))
        grad.mul_(self.factor)
        self.steps += 1

    def extra_repr(self) -> str:
        return (f"statistic={self.statistic}, decay={self.decay}, decay_steps={self.decay_steps}, tau={self.tau}, "
                f"lam={self.lam}")
