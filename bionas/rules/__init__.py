"""Learning rules: how each convolution and linear layer of a network learns.

>>> from bionas import rules
>>> net = rules.convert(net, "usf")            # every Conv2d/Linear now learns by uSF
>>> with rules.exact_gradients(net): ...       # true gradients, e.g. for white-box attacks
>>> rules.alignment_angles(net)                # {layer: angle(W, B) in degrees}

Rules live one per file and register themselves in :data:`RULES`; importing this package
imports them in a fixed order. Adding a rule is one file plus one line below.
"""
from bionas.rules.registry import RULES  # noqa: I001  (registry first: rule files use it)
from bionas.rules import bp, fa, usf, brsf, frsf, hebbian, pc  # noqa: F401  (registration)
from bionas.rules.base import FeedbackRule, LearningRule, LocalRule, layer_seed, xavier_std
from bionas.rules.convert import (
    alignment_angles,
    build_rule,
    convert,
    exact_gradients,
    has_local_rules,
    local_updates,
    rule_layers,
    rules_in,
)
from bionas.rules.layers import RuleConv2d, RuleLayer, RuleLinear

__all__ = [
    "RULES", "LearningRule", "FeedbackRule", "LocalRule", "RuleLayer", "RuleConv2d", "RuleLinear",
    "convert", "build_rule", "exact_gradients", "local_updates", "alignment_angles", "rule_layers",
    "rules_in", "has_local_rules", "layer_seed", "xavier_std",
]
