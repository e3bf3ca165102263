"""The search command's configuration: one dataclass, defaults from the papers.

Resolution order (later wins): the dataclass defaults below -> a named preset from
``bionas/configs/search.yaml`` (``--preset smoke``) -> a YAML file (``--config FILE``, e.g. the
``config.yaml`` a finished run saved, to repeat it exactly) -> explicit command-line flags and
``--set KEY=VALUE``. Unknown keys are errors. The resolved config is saved beside the outputs.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from bionas import configs
from bionas.configs import options as options_lib
from bionas.configs.options import parse_assignment  # noqa: F401 (re-exported for the CLI and tests)
from bionas.errors import ConfigError

ORDERS = ("first", "second")
ARCH_GRADIENTS = ("rule", "exact")


@dataclass
class SearchConfig:
    # what to search
    method: str = "darts"  # a name in bionas.search.STRATEGIES
    space: str = "bionas"  # a name in search_spaces/ or a YAML path
    channels: int | None = None  # None: the space's supernet values (16 channels, 5 cells); the
    cells: int | None = None  # nodes per cell belong to the space (its genotypes have that many)
    rule_options: dict = field(default_factory=dict)  # {rule: {option: value}}
    init: str = "xavier"  # BioNAS section 3.4: Xavier initialisation
    # data: DARTS splits the training set in two, one half for the weights, one for the architecture
    dataset: str = "auto"
    data_dir: str | None = None
    per_class: int | None = None  # training images per class to search on (None: all)
    train_portion: float = 0.5
    augment: bool = True  # random crop + flip (appendix 7.1)
    # weights: SGD, appendix 7.1 (Table 6)
    epochs: int = 50
    batch_size: int = 256
    steps_per_epoch: int | None = None  # None: one pass over the weight half
    lr: float = 0.1
    lr_min: float = 0.0  # cosine annealing ends here
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 3e-4
    grad_clip: float = 5.0  # max global norm of the weight gradient (0: off)
    # architecture: DARTS (Liu et al. 2019, section 3.1.2)
    arch_lr: float = 3e-4
    arch_betas: tuple[float, float] = (0.5, 0.999)
    arch_weight_decay: float = 1e-3
    order: str = "first"  # first: grad at w; second: unrolled w' = w - xi grad L_train (eq. 7)
    unrolled_radius: float = 0.01  # finite-difference eps = radius / ||grad_w' L_val|| (DARTS eq. 8)
    arch_gradient: str = "rule"  # rule: errors flow through each edge's learning rule; exact: true gradient
    # architecture: EG-NAS (Cai et al. 2024; formulas in bionas/search/eg.py), release defaults
    eg_warmup_epochs: int = 15  # weight-only epochs before the first evolutionary update
    eg_population: int = 50  # CMA-ES population size
    eg_restarts: int = 3  # independent CMA-ES instances per epoch (the release's "samples")
    eg_generations: int = 1  # ask/tell rounds per instance and epoch
    eg_sigma0: float = 1.0  # step size sigma_t = max(eg_sigma0 / (epoch + 1), eg_sigma_min)
    eg_sigma_min: float = 0.02
    eg_similarity_weight: float = 0.4  # lam in F(z) = CE +- lam s(z)
    eg_step_size: float = 0.1  # a <- a + eg_step_size * u, u = momentum-averaged (z* - a)
    eg_momentum: float = 0.0
    eg_max_norm: float = 3.0  # per-edge L2 cap on the centred logits after each update
    eg_score_chunk: int = 10  # candidates scored per batched forward pass
    # run
    seed: int = 0
    device: str = "auto"  # auto: cuda if available, else cpu
    channels_last: bool = True  # much faster depthwise convolutions on CPU (oneDNN)
    out: str = "runs/search"
    progress: bool = True

    def validate(self) -> "SearchConfig":
        from bionas.search.strategy import STRATEGIES

        STRATEGIES.get(self.method)
        if self.order not in ORDERS:
            raise ConfigError(f"order must be one of {', '.join(ORDERS)}, got {self.order!r}")
        if self.arch_gradient not in ARCH_GRADIENTS:
            raise ConfigError(f"arch_gradient must be one of {', '.join(ARCH_GRADIENTS)}, got {self.arch_gradient!r}")
        for name in ("epochs", "batch_size", "eg_population", "eg_restarts", "eg_generations", "eg_score_chunk"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("steps_per_epoch", "per_class", "channels", "cells"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"{name} must be a positive integer or null, got {value!r}")
        if not 0.0 < self.train_portion < 1.0:
            raise ConfigError(f"train_portion must be in (0, 1), got {self.train_portion}")
        if not isinstance(self.eg_warmup_epochs, int) or self.eg_warmup_epochs < 0:
            raise ConfigError(f"eg_warmup_epochs must be a non-negative integer, got {self.eg_warmup_epochs!r}")
        if self.eg_population < 2:
            raise ConfigError(f"eg_population must be at least 2, got {self.eg_population}")
        if not 0.0 <= self.eg_momentum < 1.0:
            raise ConfigError(f"eg_momentum must be in [0, 1), got {self.eg_momentum}")
        for name in ("lr", "arch_lr", "unrolled_radius", "eg_sigma0", "eg_sigma_min", "eg_step_size", "eg_max_norm"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if len(self.arch_betas) != 2:
            raise ConfigError(f"arch_betas must be two numbers, got {self.arch_betas!r}")
        if not isinstance(self.rule_options, dict) or not all(isinstance(v, dict) for v in self.rule_options.values()):
            raise ConfigError("rule_options must map rule names to option mappings, e.g. {usf: {scale: 1.0}}")
        return self

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["arch_betas"] = list(self.arch_betas)
        return out


def apply_options(config: SearchConfig, options: dict, source: str) -> SearchConfig:
    """``config`` with ``options`` set; unknown keys are an error naming ``source``."""
    return options_lib.apply_options(config, options, source, "search")


def resolve_config(preset: str | None = None, config_file: str | Path | None = None,
                   overrides: dict | None = None) -> SearchConfig:
    """Defaults -> preset -> config file -> overrides, validated."""
    config = SearchConfig()
    if preset:
        config = apply_options(config, configs.preset("search", preset), f"preset {preset!r}")
    if config_file:
        config = apply_options(config, configs.load_yaml_mapping(config_file, "search config"), str(config_file))
    if overrides:
        config = apply_options(config, overrides, "the command line")
    return config.validate()
