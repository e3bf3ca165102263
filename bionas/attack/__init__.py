"""Adversarial robustness of trained checkpoints (``bionas attack``), on torchattacks.

``resolve_config`` builds an :class:`AttackConfig` (preset, file, flags); ``run_attack`` runs it;
:class:`AttackModel` is the [0, 1]-images-to-logits view of a trained network with a selectable
gradient (``exact`` or the rules' own); ``ATTACKS`` is the registry of attacks.
"""
from bionas.attack.config import AttackConfig, resolve_config
from bionas.attack.model import AttackModel, gradient_mode, isolated_random_state
from bionas.attack.run import AttackResult, craft, load_target, markdown_table, masking_warnings, run_attack
from bionas.attack.suite import ATTACKS, Variant, variants

__all__ = ["AttackConfig", "resolve_config", "run_attack", "AttackResult", "AttackModel", "gradient_mode",
           "isolated_random_state", "ATTACKS", "Variant", "variants", "craft", "load_target", "markdown_table",
           "masking_warnings"]
