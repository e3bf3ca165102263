"""The attack command's configuration: one dataclass; a suite (``bionas/configs/attack.yaml``)
sets the attacks and budgets, ``--attacks``, flags and ``--set`` override it. Every value is
recorded with the results.

Defaults are the paper's (BioNAS section 3.5): eps 8/255 and step 2/255 for every L-inf attack.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from bionas import configs
from bionas.configs import options as options_lib
from bionas.errors import ConfigError

GRADIENT_CHOICES = ("auto", "exact", "rule", "both")  # auto: both for models with non-bp rules


@dataclass
class AttackConfig:
    checkpoints: list = field(default_factory=list)  # checkpoint files or run directories
    suite: str = "quick"
    attacks: list = field(default_factory=list)  # empty: the suite's
    gradient: str = "auto"
    source: str | None = None  # checkpoint the transfer attack crafts its examples on
    n: int | None = None  # a seeded, class-balanced subset of the test split (None: all of it)
    data_dir: str | None = None
    eps: float = 8 / 255
    alpha: float = 2 / 255  # step size of PGD, TPGD and the transfer PGD
    pgd_steps: int = 10
    pgd_random_start: bool = True
    tpgd_steps: int = 7
    apgd_steps: int = 50
    apgd_restarts: int = 1
    apgd_loss: str = "ce"
    apgd_eot_iter: int = 5  # rule mode on models whose feedback is random (brSF): gradients averaged
    square_queries: int = 1000
    square_p_init: float = 0.8
    onepixel_pixels: list = field(default_factory=lambda: [1, 2, 3, 4, 5])
    onepixel_steps: int = 10
    onepixel_popsize: int = 10
    transfer_steps: int = 10  # PGD steps on the source (exact gradients, random start)
    seed: int = 0
    batch_size: int = 250
    device: str = "auto"
    out: str = "runs/attack"
    progress: bool = True

    def validate(self) -> "AttackConfig":
        from bionas.attack.suite import ATTACKS

        if not self.checkpoints:
            raise ConfigError("nothing to attack: give --checkpoint A [B ...] (files or bionas train run directories)")
        for name in self.attacks:
            ATTACKS.get(name)
        if self.gradient not in GRADIENT_CHOICES:
            raise ConfigError(f"gradient must be one of {', '.join(GRADIENT_CHOICES)}, got {self.gradient!r}")
        if not 0 < self.eps <= 1 or not 0 < self.alpha <= 1:
            raise ConfigError(f"eps and alpha are L-inf budgets in (0, 1] on [0, 1] images, got {self.eps}, {self.alpha}")
        for name in ("pgd_steps", "tpgd_steps", "apgd_steps", "apgd_restarts", "apgd_eot_iter", "square_queries",
                     "onepixel_steps", "transfer_steps", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.onepixel_popsize < 4:
            raise ConfigError(f"onepixel_popsize must be at least 4, got {self.onepixel_popsize}")
        if not self.onepixel_pixels or not all(isinstance(p, int) and p >= 1 for p in self.onepixel_pixels):
            raise ConfigError(f"onepixel_pixels must list pixel counts >= 1, got {self.onepixel_pixels!r}")
        if self.n is not None and (not isinstance(self.n, int) or self.n < 1):
            raise ConfigError(f"n must be a positive integer, got {self.n!r}")
        if self.apgd_loss not in ("ce", "dlr"):
            raise ConfigError(f"apgd_loss must be ce or dlr, got {self.apgd_loss!r}")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def suite(name: str) -> dict:
    suites = configs.load_yaml_mapping(configs.CONFIG_DIR / "attack.yaml", "attack suites").get("suites", {})
    if name not in suites:
        raise ConfigError(f"unknown attack suite {name!r}; choose from {', '.join(sorted(suites))}")
    return dict(suites[name] or {})


def resolve_config(suite_name: str = "quick", config_file=None, overrides: dict | None = None) -> AttackConfig:
    """Defaults -> suite -> config file -> overrides (an explicit ``attacks`` list replaces the suite's)."""
    config = AttackConfig(suite=suite_name)
    config = options_lib.apply_options(config, suite(suite_name), f"suite {suite_name!r}", "attack")
    if config_file:
        config = options_lib.apply_options(config, configs.load_yaml_mapping(config_file, "attack config"),
                                           str(config_file), "attack")
    if overrides:
        config = options_lib.apply_options(config, overrides, "the command line", "attack")
    return config.validate()
