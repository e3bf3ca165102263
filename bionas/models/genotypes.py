"""Published genotypes by name, and the rule overrides of the BioNAS ablations.

``GENOTYPES`` holds DARTS-style literals (parsed safely by
:func:`bionas.genotype.parse_darts_literal`); bare ops mean ``bp``. ``resolve_genotype``
takes a registered name or a file (JSON or literal). ``with_rule`` retrains a genotype with one rule
on every edge ("same learning rule end to end", BioNAS section 4); ``with_random_rules`` draws each
weighted edge's rule from those a space allows for its op.

Adding a published genotype: one ``GENOTYPES.register("<name>")("Genotype(...)")`` line below with
the DARTS literal (``op|rule`` for a rule other than ``bp``) and its source; ``bionas train
--genotype <name>`` then trains it and the registry-parametrised test in ``tests/test_darts_net.py``
builds it.
"""
from __future__ import annotations

import dataclasses
import random
from pathlib import Path

from bionas.errors import UnknownNameError
from bionas.registry import Registry
from bionas.genotype import Genotype, load_genotype, parse_darts_literal
from bionas.ops import has_weights
from bionas.space import SearchSpace, check_pair

GENOTYPES: Registry[str] = Registry("genotype")

# DARTS (Liu et al. 2019), genotypes.py of the reference code: first- and second-order results.
GENOTYPES.register("darts_v1")(
    "Genotype(normal=[('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 0), ('sep_conv_3x3', 1), "
    "('skip_connect', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 2)], normal_concat=[2, 3, 4, 5], "
    "reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 0), ('max_pool_3x3', 0), "
    "('skip_connect', 2), ('skip_connect', 2), ('avg_pool_3x3', 0)], reduce_concat=[2, 3, 4, 5])")
GENOTYPES.register("darts_v2")(
    "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), "
    "('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], normal_concat=[2, 3, 4, 5], "
    "reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), ('max_pool_3x3', 0), "
    "('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])")


def resolve_genotype(name_or_path: str | Path, space: SearchSpace | None = None) -> Genotype:
    """A registered genotype (``darts_v2``) or one read from a file, validated."""
    if str(name_or_path) in GENOTYPES:
        return parse_darts_literal(GENOTYPES.get(str(name_or_path)), space=str(name_or_path)).validate(space)
    path = Path(name_or_path)
    if not path.exists() and "/" not in str(name_or_path) and path.suffix == "":
        raise UnknownNameError(f"unknown genotype {str(name_or_path)!r}: not a file, and the registered ones are "
                               f"{', '.join(GENOTYPES.names())}")
    return load_genotype(path, space)


def with_rule(genotype: Genotype, rule: str) -> Genotype:
    """Every edge whose op has weights learns by ``rule``; ops without weights stay bare (``bp``)."""
    def edges(es):
        out = []
        for e in es:
            if has_weights(e.op):
                check_pair(e.op, rule)
            out.append(dataclasses.replace(e, rule=rule if has_weights(e.op) else "bp"))
        return tuple(out)
    return dataclasses.replace(genotype, normal=edges(genotype.normal), reduce=edges(genotype.reduce), weights=None)


def with_random_rules(genotype: Genotype, space: SearchSpace, seed: int) -> Genotype:
    """Each weighted edge draws its rule uniformly from the rules ``space`` pairs with its op."""
    rng = random.Random(seed)
    allowed: dict[str, list[str]] = {}
    for c in space.candidates:
        allowed.setdefault(c.op, []).append(c.rule)

    def edges(es):
        out = []
        for e in es:
            if not has_weights(e.op):
                out.append(dataclasses.replace(e, rule="bp"))
                continue
            if e.op not in allowed:
                raise UnknownNameError(f"op {e.op!r} of the genotype is not in search space {space.name!r}; "
                                       f"random rules need a space that offers it")
            out.append(dataclasses.replace(e, rule=rng.choice(allowed[e.op])))
        return tuple(out)
    return dataclasses.replace(genotype, normal=edges(genotype.normal), reduce=edges(genotype.reduce), weights=None)
