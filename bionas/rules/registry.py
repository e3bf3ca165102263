"""The registries of learning rules and rule modifiers.

``RULES.get("fa")`` is the class of feedback alignment. A name may add modifiers to a rule with
``+``: ``RULES.get("usf+bcm_lr+dale")`` is a class, built once and cached, that learns by uSF and
runs the ``bcm_lr`` and ``dale`` modifiers (:data:`MODIFIERS`, :mod:`bionas.rules.modifiers`) at
their hooks, so every place that takes a rule name -- search spaces, genotypes, ``--rule`` --
takes a modified one too. ``RULES.names()`` lists the plain rules.
"""
from __future__ import annotations

from bionas.errors import UnknownNameError
from bionas.registry import ComposingRegistry, Registry


class RuleRegistry(ComposingRegistry):
    """A registry whose ``get`` also builds ``RULE+MODIFIER[+MODIFIER...]`` classes (cached)."""

    def __init__(self, kind: str):
        super().__init__(kind)
        self._composed: dict[str, type] = {}

    def compose(self, name: str):
        if name not in self._composed:
            from bionas.rules.modifiers import compose

            base, *mods = name.split("+")
            if not mods or not all(mods):
                raise UnknownNameError(f"malformed rule {name!r}: write RULE+MODIFIER, e.g. usf+bcm_lr")
            self._composed[name] = compose(Registry.get(self, base), [MODIFIERS.get(m) for m in mods], name)
        return self._composed[name]


RULES: RuleRegistry = RuleRegistry("learning rule")
MODIFIERS: Registry = Registry("rule modifier")
