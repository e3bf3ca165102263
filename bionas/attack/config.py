"""The attack command's configuration: one dataclass; a preset (``bionas/configs/attack.yaml``:
``quick``, ``full``) sets the attacks and budgets; ``--attacks``, flags and ``--set`` override it.
Every value is recorded with the results.

Defaults are the paper's (BioNAS section 3.5): eps 8/255 and step 2/255 for every L-inf attack.
"""
from __future__ import annotations

from dataclasses import dataclass

from bionas.configs.options import option, resolve, to_dict
from bionas.errors import ConfigError

GRADIENT_CHOICES = ("auto", "exact", "rule", "both")  # auto: both for models with non-bp rules


@dataclass
class AttackConfig:
    checkpoints: list[str] = option(help="bionas train checkpoint files or run directories", factory=list,
                                    flag="--checkpoint")
    preset: str = option("quick", "the named preset this config started from")
    attacks: list[str] = option(help="attacks to run instead of the preset's", factory=list, flag="--attacks")
    gradient: str = option("auto", "white-box gradient: exact, the rules' own, or both (auto: both for non-bp "
                           "models)", choices=GRADIENT_CHOICES, flag="--gradient")
    source: str | None = option(None, "checkpoint the transfer attack crafts its examples on", flag="--source")
    n: int | None = option(None, "seeded class-balanced subset of the test split (null: all)", ge=1, flag="--n")
    data_dir: str | None = option(None, "dataset directory (null: the checkpoint's, or $BIONAS_DATA)",
                                  flag="--data-dir")
    eps: float = option(8 / 255, "L-inf budget on [0, 1] images", gt=0, le=1, flag="--eps")
    alpha: float = option(2 / 255, "step size of PGD, TPGD and the transfer PGD", gt=0, le=1, flag="--alpha")
    pgd_steps: int = option(10, "PGD steps", ge=1)
    pgd_random_start: bool = option(True, "PGD random start")
    tpgd_steps: int = option(7, "TPGD steps", ge=1)
    apgd_steps: int = option(50, "APGD steps", ge=1)
    apgd_restarts: int = option(1, "APGD restarts", ge=1)
    apgd_loss: str = option("ce", "APGD loss", choices=("ce", "dlr"))
    apgd_eot_iter: int = option(5, "rule mode on models with random feedback (brSF): gradients averaged", ge=1)
    square_queries: int = option(1000, "Square queries", ge=1)
    square_p_init: float = option(0.8, "Square initial fraction of pixels", gt=0, le=1)
    onepixel_pixels: list[int] = option(help="one-pixel attack: the pixel counts, one row each", ge=1,
                                        factory=lambda: [1, 2, 3, 4, 5])
    onepixel_steps: int = option(10, "one-pixel differential-evolution steps", ge=1)
    onepixel_popsize: int = option(10, "one-pixel population in torchattacks' meaning (10: 10, 10, 15, 20, 25 members "
                                   "for 1..5 pixels)", ge=1)
    onepixel_members: int | None = option(None, "one-pixel members per image, overriding onepixel_popsize "
                                          "(null: as torchattacks)", ge=4)
    transfer_steps: int = option(10, "PGD steps on the source (exact gradients, random start)", ge=1)
    seed: int = option(0, "seed of the subset and of the attacks", flag="--seed")
    batch_size: int = option(250, "images per attack batch", ge=1, flag="--batch-size")
    device: str = option("auto", "auto (cuda if available), cpu, cuda, cuda:N", flag="--device")
    out: str = option("runs/attack", "output directory", flag="--out")
    progress: bool = option(True, "progress bars")

    def check_together(self) -> None:
        from bionas.attack.suite import ATTACKS

        if not self.checkpoints:
            raise ConfigError("nothing to attack: give --checkpoint A [B ...] (files or bionas train run directories)")
        for name in self.attacks:
            ATTACKS.get(name)
        if not self.onepixel_pixels:
            raise ConfigError("onepixel_pixels must list at least one pixel count")

    def to_dict(self) -> dict:
        return to_dict(self)


def resolve_config(preset: str = "quick", config_file=None, overrides: dict | None = None) -> AttackConfig:
    """Defaults -> preset -> config file -> overrides (an explicit ``attacks`` list replaces the preset's)."""
    return resolve(AttackConfig, "attack", preset, config_file, overrides)
