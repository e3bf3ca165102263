"""Turning ordinary networks into rule-aware ones, and switching rule behaviour on and off.

* :func:`convert` swaps every ``nn.Conv2d`` / ``nn.Linear`` for a rule-aware layer that shares
  the original's parameters (the same ``Parameter`` objects), so the forward is unchanged.
* :func:`exact_gradients` makes every rule-aware layer back-propagate the true gradient for the
  duration of a ``with`` block -- what an honest white-box attack needs.
* :func:`local_updates` is the one switch that lets local rules change weights.
* :func:`alignment_angles` reports, per layer, the angle between ``W`` and its feedback ``B``.
"""
from __future__ import annotations

import inspect
import logging
import math
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from bionas.errors import ConfigError
from bionas.rules.base import FeedbackRule, LearningRule, layer_seed, make_generator
from bionas.rules.layers import RuleConv2d, RuleLayer, RuleLinear
from bionas.rules.registry import RULES

log = logging.getLogger(__name__)

_RULE_LAYER_FOR = {nn.Conv2d: RuleConv2d, nn.Linear: RuleLinear}


def build_rule(name: str, weight: torch.Tensor, seed: int, index: int = 0, **options) -> LearningRule:
    """Instantiate rule ``name`` for one layer (``index`` within a conversion seeded ``seed``)."""
    cls = RULES.get(name)
    accepted = rule_options(cls)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(f"rule {name!r} does not take option(s) {', '.join(unknown)}; "
                          f"it takes: {', '.join(accepted) or 'none'}")
    gen = make_generator(layer_seed(seed, index), weight.device)
    return cls(weight.detach(), gen, **options)


def options_for(rule: str, rule_options: dict[str, dict]) -> dict:
    """The options a run's ``rule_options`` give rule ``rule``: for ``RULE+MODIFIER...`` those of
    the plain rule, then each modifier's, then the combined name's own entry (later wins), so
    ``rule_options: {oja: {lr: 0.001}, dale: {init: scaled}}`` reaches ``oja+dale`` too."""
    names = rule.split("+")
    merged: dict = {}
    for key in ([names[0]] + [f"{m}" for m in names[1:]] + ([rule] if len(names) > 1 else [])):
        merged.update(rule_options.get(key, {}))
    return merged


def rule_options(cls: type[LearningRule]) -> dict[str, object]:
    """``{option: default}`` of a rule class (its constructor's keywords after weight, generator)."""
    composed = getattr(cls, "composed_options", None)
    if composed is not None:  # RULE+MODIFIER: the rule's options and each modifier's
        return dict(composed)
    params = list(inspect.signature(cls.__init__).parameters.values())[3:]
    return {p.name: p.default for p in params}


def _convert_layer(layer: nn.Module, rule: str, seed: int, index: int, options: dict) -> nn.Module:
    if isinstance(layer, RuleLayer):  # re-convert: keep the layer, replace its rule
        layer.rule = build_rule(rule, layer.weight, seed, index, **options)
        layer.rule.train(layer.training)
        return layer
    cls = _RULE_LAYER_FOR[type(layer)]
    return cls.from_module(layer, build_rule(rule, layer.weight, seed, index, **options))


def _convertible(module: nn.Module) -> bool:
    return isinstance(module, RuleLayer) or type(module) in _RULE_LAYER_FOR


def convert(module: nn.Module, rule: str, seed: int | None = None, **options) -> nn.Module:
    """Make every ``nn.Conv2d`` and ``nn.Linear`` in ``module`` (or ``module`` itself) learn by ``rule``.

    Args:
        module: any network; converted in place. Layers that are already rule-aware get the new
            rule. Subclasses of ``nn.Conv2d`` / ``nn.Linear`` other than bionas' own are left as
            they are (their forward may differ from the parent's).
        rule: a name from :data:`bionas.rules.RULES` (``bionas rules`` lists them).
        seed: seeds the random feedback of every converted layer (layer ``k`` uses
            ``layer_seed(seed, k)``, in ``named_modules`` order). ``None`` draws one from the
            global torch RNG, so ``torch.manual_seed`` still makes the conversion repeatable.
        **options: passed to the rule's constructor (e.g. ``scale=1.0`` for ``usf``).

    Returns:
        ``module`` with its layers replaced; a new rule-aware layer if ``module`` itself was a
        ``Conv2d``/``Linear``. Forward outputs are exactly those of the original, unless the
        rule's ``preserves_forward`` is false (``pc`` refines its layers' outputs). Layers of a
        type the rule cannot learn (``Linear`` for the convolution-only local rules) keep their
        current rule (plain layers: backprop); the count is logged.
    """
    cls = RULES.get(rule)  # fail on an unknown name even when there is nothing to convert
    if seed is None:
        seed = int(torch.randint(0, 2**62, ()))
    if _convertible(module):
        return _convert_layer(module, rule, seed, 0, options)
    targets = [(name, m) for name, m in module.named_modules() if _convertible(m)]
    kept = {name for name, m in targets if not isinstance(m, cls.layer_types)}
    if kept:
        log.info("rule %s learns %s layers only; %d other layer(s) keep their rule: %s", rule,
                 "/".join(t.__name__ for t in cls.layer_types), len(kept), ", ".join(sorted(kept)))
    for index, (name, layer) in enumerate(targets):
        if name in kept:  # the index still counts it, so seeds do not depend on the rule
            continue
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name)
        setattr(parent, child, _convert_layer(layer, rule, seed, index, options))
    return module


def rule_layers(model: nn.Module) -> Iterator[tuple[str, RuleLayer]]:
    """``(name, layer)`` for every rule-aware layer in ``model`` (``model`` itself included)."""
    for name, m in model.named_modules():
        if isinstance(m, RuleLayer):
            yield name, m


def rules_in(model: nn.Module) -> dict[str, str]:
    """``{layer name: rule name}`` of every rule-aware layer."""
    return {name: layer.rule.name for name, layer in rule_layers(model)}


@contextmanager
def _set_flag(model: nn.Module, flag: str, value: bool):
    layers = [layer for _, layer in rule_layers(model)]
    before = [getattr(layer, flag) for layer in layers]
    for layer in layers:
        setattr(layer, flag, value)
    try:
        yield model
    finally:
        for layer, old in zip(layers, before):
            setattr(layer, flag, old)


def exact_gradients(model: nn.Module):
    """Context manager: inside it every rule-aware layer back-propagates the true gradient.

    Feedback rules behave as ``B := W`` and local rules neither update nor hide their weights from
    the loss, so ``torch.autograd`` returns the exact input gradient of the whole network (what a
    white-box attack must use). The rules are back in force when the block exits, also on error.
    No random feedback is drawn inside the block.
    """
    return _set_flag(model, "exact_gradients", True)


@contextmanager
def no_feedback_redraws(model: nn.Module) -> Iterator[None]:
    """Rules keep their current random feedback for the block (their ``training`` flag is off;
    batch norm and the rest of the model keep their mode)."""
    layer_rules = [layer.rule for _, layer in rule_layers(model)]
    modes = [r.training for r in layer_rules]
    for r in layer_rules:
        r.train(False)
    try:
        yield
    finally:
        for r, mode in zip(layer_rules, modes):
            r.train(mode)


def before_optimizer_step(model: nn.Module) -> None:
    """Every rule-aware layer's modifiers see the final gradients (``bcm_lr`` scales them)."""
    for _, layer in rule_layers(model):
        if layer.rule.active_modifiers:
            layer.rule.before_optimizer_step(layer)


def after_optimizer_step(model: nn.Module) -> None:
    """Every rule-aware layer's modifiers see the stepped weights (``dale`` clamps them)."""
    for _, layer in rule_layers(model):
        if layer.rule.active_modifiers:
            layer.rule.after_update(layer)


def local_updates(model: nn.Module, enabled: bool = True):
    """Context manager: switch local-rule weight updates on (or off) inside the block.

    Local updates are off by default and never follow ``model.train()``: a training loop enables
    them around weight-training steps only, so architecture steps, evaluation, fitness scoring
    and attacks cannot change local-rule weights.
    """
    return _set_flag(model, "local_updates", enabled)


def angle_degrees(a: torch.Tensor, b: torch.Tensor) -> float:
    """The angle between two tensors taken as vectors, in degrees, in float64 (NaN if either is zero)."""
    a, b = a.detach().flatten().double(), b.detach().flatten().double()
    denom = a.norm() * b.norm()
    if denom == 0:
        return math.nan
    cos = torch.clamp(a @ b / denom, -1.0, 1.0)
    return math.degrees(math.acos(float(cos)))


def alignment_angles(model: nn.Module) -> dict[str, float]:
    """Angle in degrees between each feedback layer's ``W`` and ``B`` (flattened): 0 for bp.

    Layers with a local rule have no feedback tensor and are left out. For brSF the angle is the
    one of the current draw.
    """
    return {
        name: angle_degrees(layer.weight, layer.rule.feedback(layer.weight))
        for name, layer in rule_layers(model)
        if isinstance(layer.rule, FeedbackRule)
    }
