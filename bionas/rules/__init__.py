"""Learning rules: how each convolution and linear layer of a network learns.

>>> from bionas import rules
>>> net = rules.convert(net, "usf")            # every Conv2d/Linear now learns by uSF
>>> with rules.exact_gradients(net): ...       # true gradients, e.g. for white-box attacks
>>> rules.alignment_angles(net)                # {layer: angle(W, B) in degrees}

========  ==========================================================  ============================
rule      error sent to the layer's input                             reference
========  ==========================================================  ============================
bp        ``W^T delta``                                               Rumelhart et al. 1986
fa        ``B^T delta``, ``B`` fixed, Xavier-uniform                  Lillicrap et al. 2016
usf       ``B = s sign(W)``, ``s`` the Xavier std                     Liao et al. 2016
brsf      ``B = |R| sign(W)``, ``R`` redrawn every training forward   Liao et al. 2016
frsf      ``B = |M| sign(W)``, ``M`` drawn once                       Liao et al. 2016
hebbian   ``W^T delta`` (or cut); weights learn locally, no gradient  Hebbian-CNN paper; SoftHebb
pc        ``W^T delta``; weights learn by predictive coding           Tschantz et al. 2023
oja       ``W^T delta``; weights learn by Oja's subspace rule         sparse-nets paper, eqs. 1-2
wp        ``W^T delta``; weights learn by weight perturbation         sparse-nets paper, eqs. 3-5
========  ==========================================================  ============================

Modifiers add behaviour to any rule by name, ``RULE+MODIFIER`` (:mod:`bionas.rules.modifiers`):
``dale`` (non-negative weights, clamped after every update) and ``bcm_lr`` (BCM-gated per-weight
learning rates, gradient-based rules only); e.g. ``usf+bcm_lr``, ``oja+dale``.

For the feedback rules the weight and bias gradients are the exact local ones (``delta x^T``);
only the error passed backwards changes. The local rules change weights only inside
:func:`local_updates`, which the training engine switches on for weight-training steps alone.

Adding a rule: one file ``bionas/rules/<name>.py`` with a class decorated
``@RULES.register("<name>")`` -- a :class:`FeedbackRule` implementing ``feedback(W) -> B``, or a
:class:`LocalRule` implementing ``update(layer, x, y)`` (one whose layer computes something else
than the plain layer also overrides ``exact_forward`` and sets ``preserves_forward = False``) --
with its paper in the module docstring, ``color``/``line_style`` for plots, ``layer_types`` if it
learns only some layer types, and keyword options in ``__init__`` (``rule_options`` passes them);
then its name in the import line below. ``bionas rules`` lists it, search spaces may pair it with
ops, and the registry-parametrised tests (``tests/test_rules.py``, ``tests/test_ops.py``) cover it.
"""
from bionas.rules.registry import MODIFIERS, RULES  # noqa: I001  (registry first: rule files use it)
from bionas.rules import bp, fa, usf, brsf, frsf, hebbian, pc, oja, wp, modifiers  # noqa: F401  (registration)
from bionas.rules.base import FeedbackRule, LearningRule, LocalRule, layer_seed, xavier_std
from bionas.rules.convert import (
    after_optimizer_step,
    alignment_angles,
    before_optimizer_step,
    build_rule,
    convert,
    exact_gradients,
    local_updates,
    no_feedback_redraws,
    options_for,
    rule_layers,
    rules_in,
)
from bionas.rules.layers import RuleConv2d, RuleLayer, RuleLinear
from bionas.rules.wp import perturbation_layers, perturbed

__all__ = [
    "RULES", "LearningRule", "FeedbackRule", "LocalRule", "RuleLayer", "RuleConv2d", "RuleLinear",
    "convert", "build_rule", "exact_gradients", "local_updates", "alignment_angles", "rule_layers",
    "rules_in", "layer_seed", "xavier_std", "before_optimizer_step", "after_optimizer_step", "MODIFIERS",
    "no_feedback_redraws", "perturbation_layers", "perturbed", "options_for",
]
