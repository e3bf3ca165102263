"""The attacks of the suite, as a registry: name -> the variants it contributes.

Each entry turns an :class:`~bionas.attack.config.AttackConfig` into one or more
:class:`Variant` rows of the paper's Table 4 (``onepixel`` gives OP1..OPk); the registry's order
is the table's row order (after the clean accuracy).

Adding an attack: one function here (or in its own file imported by this package), decorated
``@ATTACKS.register("name")``, returning its variants -- the row label, the kind, the
parameters recorded with the results, and a builder of the torchattacks object. Its budget
options go in :class:`~bionas.attack.config.AttackConfig`; ``--attacks name`` then runs it, it
gets a row in ``table.md``, and the tests parametrised over :data:`ATTACKS` cover it. A variant records
its parameters and builds a torchattacks object for a model. Kinds: ``white`` attacks follow a
gradient (run once per gradient mode), ``black`` ones query outputs only (run once), ``transfer``
evaluates examples crafted on another model.

References (torchattacks implementations unless noted):
FGSM -- Goodfellow et al. 2015, https://arxiv.org/abs/1412.6572, ``x + eps sign(grad)``.
PGD -- Madry et al. 2018, https://arxiv.org/abs/1706.06083, ``x <- Proj(x + alpha sign(grad))``.
TPGD -- Zhang et al. 2019 (TRADES), https://arxiv.org/abs/1901.08573, PGD on ``KL(f(x) || f(x'))``.
APGD -- Croce & Hein 2020, https://arxiv.org/abs/2003.01690, step-size-free PGD with momentum.
Square -- Andriushchenko et al. 2020, https://arxiv.org/abs/1912.00049, random square updates.
One-pixel -- Su et al. 2019 (batched here, ``bionas.attack.onepixel``).
Transfer -- Papernot et al. 2017, https://arxiv.org/abs/1602.02697: PGD examples of a source model.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torchattacks

from bionas.attack.config import AttackConfig
from bionas.attack.onepixel import BatchedOnePixel
from bionas.registry import Registry

KINDS = ("white", "black", "transfer")


@dataclass(frozen=True)
class Variant:
    label: str  # the row of the table: FGSM, PGD, OP3, ...
    kind: str
    params: dict = field(default_factory=dict)
    build: Callable | None = None  # (model, params) -> torchattacks.Attack; None for transfer


ATTACKS: Registry[Callable[[AttackConfig], list[Variant]]] = Registry("attack")


@ATTACKS.register("onepixel")
def onepixel(c: AttackConfig) -> list[Variant]:
    return [Variant(f"OP{k}", "black", {"pixels": k, "steps": c.onepixel_steps, "popsize": c.onepixel_popsize,
                                        "members": c.onepixel_members, "seed": c.seed},
                    lambda m, p: BatchedOnePixel(m, **p))
            for k in c.onepixel_pixels]


@ATTACKS.register("fgsm")
def fgsm(c: AttackConfig) -> list[Variant]:
    return [Variant("FGSM", "white", {"eps": c.eps}, lambda m, p: torchattacks.FGSM(m, eps=p["eps"]))]


@ATTACKS.register("pgd")
def pgd(c: AttackConfig) -> list[Variant]:
    params = {"eps": c.eps, "alpha": c.alpha, "steps": c.pgd_steps, "random_start": c.pgd_random_start}
    return [Variant("PGD", "white", params, lambda m, p: torchattacks.PGD(m, **p))]


@ATTACKS.register("tpgd")
def tpgd(c: AttackConfig) -> list[Variant]:
    params = {"eps": c.eps, "alpha": c.alpha, "steps": c.tpgd_steps}
    return [Variant("TPGD", "white", params, lambda m, p: torchattacks.TPGD(m, **p))]


@ATTACKS.register("apgd")
def apgd(c: AttackConfig) -> list[Variant]:
    params = {"norm": "Linf", "eps": c.eps, "steps": c.apgd_steps, "n_restarts": c.apgd_restarts,
              "loss": c.apgd_loss, "eot_iter": 1, "seed": c.seed}
    return [Variant("APGD", "white", params, lambda m, p: torchattacks.APGD(m, **p))]


@ATTACKS.register("square")
def square(c: AttackConfig) -> list[Variant]:
    params = {"norm": "Linf", "eps": c.eps, "n_queries": c.square_queries, "p_init": c.square_p_init,
              "n_restarts": 1, "seed": c.seed}
    return [Variant("Square", "black", params, lambda m, p: torchattacks.Square(m, **p))]


@ATTACKS.register("transfer")
def transfer(c: AttackConfig) -> list[Variant]:
    params = {"eps": c.eps, "alpha": c.alpha, "steps": c.transfer_steps, "random_start": True,
              "source": c.source, "source_gradient": "exact"}
    return [Variant("Transfer", "transfer", params, None)]


def variants(config: AttackConfig) -> list[Variant]:
    """The rows ``config.attacks`` asks for, in registry order (the order of the results table)."""
    for name in config.attacks:
        ATTACKS.get(name)
    return [v for name in ATTACKS if name in config.attacks for v in ATTACKS.get(name)(config)]
