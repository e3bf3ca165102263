"""A candidate on a search edge: an ``(op, rule)`` pair.

The op decides what the edge computes, the rule how its layers learn; neither knows of the other.
Written as text, a candidate is ``"op|rule"`` (``"sep_conv_3x3|usf"``); a bare op means ``bp``.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from bionas import ops, rules
from bionas.errors import UnknownNameError


@dataclass(frozen=True)
class Candidate:
    op: str
    rule: str = "bp"

    def __post_init__(self):
        ops.OPS.get(self.op)  # unknown names fail here, naming what exists
        rules.RULES.get(self.rule)

    @classmethod
    def parse(cls, text: str) -> "Candidate":
        """``"sep_conv_3x3|usf"`` -> ``Candidate("sep_conv_3x3", "usf")``; ``"max_pool_3x3"`` -> bp."""
        op, sep, rule = text.strip().partition("|")
        if sep and not rule:
            raise UnknownNameError(f"candidate {text!r} has an empty rule; write 'op|rule' or just 'op'")
        return cls(op.strip(), rule.strip() if sep else "bp")

    def build(self, C: int, stride: int, affine: bool = True, seed: int | None = None, **rule_options) -> nn.Module:
        """The op's layers, converted to learn by the rule."""
        return rules.convert(ops.create_op(self.op, C, stride, affine), self.rule, seed=seed, **rule_options)

    def __str__(self) -> str:
        return f"{self.op}|{self.rule}"
