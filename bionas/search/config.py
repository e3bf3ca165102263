"""The search command's configuration: one dataclass, defaults from the papers.

Options resolve as (later wins) these defaults < a named preset from
``bionas/configs/search.yaml`` (``--preset smoke``) < a YAML file (``--config FILE``, e.g. the
``config.yaml`` a finished run saved, to repeat it exactly) < command-line flags and ``--set``
(:func:`bionas.configs.options.resolve`). Each strategy's own options live in its options
dataclass (``DartsOptions``, ``EGOptions``) and are given per strategy name in
``strategy_options`` (``--set strategy_options.eg.population=8``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bionas.dynamics import DynamicsOptions
from bionas.configs.options import apply_options as _apply, check, option, resolve, to_dict
from bionas.data import DATASETS


def _strategies():
    from bionas.search.strategy import STRATEGIES

    return STRATEGIES


@dataclass
class SearchConfig(DynamicsOptions):
    # what to search
    method: str = option("darts", "search strategy", choices=_strategies, flag="--method")
    space: str = option("bionas", "search space: a name in search_spaces/ or a YAML path", flag="--space")
    channels: int | None = option(None, "supernet initial channels (null: the space's)", ge=2, flag="--channels")
    cells: int | None = option(None, "supernet cells (null: the space's)", ge=3, flag="--cells")
    partial_channels: int = option(1, "K: PC-DARTS partial channels, each edge's candidates see 1/K of them "
                                   "(1: the full DARTS supernet)", ge=1)
    rule_options: dict[str, dict] = option(help="{rule: {option: value}}", factory=dict)
    strategy_options: dict[str, dict] = option(help="{strategy: {option: value}}, e.g. {eg: {population: 8}}",
                                               factory=dict)
    init: str = option("xavier", "weight initialisation (BioNAS section 3.4: xavier)", choices=("xavier", "torch"))
    # data: DARTS splits the training set in two, one half for the weights, one for the architecture
    dataset: str = option("auto", "dataset (auto: cifar10 when a data directory is known, else digits)",
                          choices=lambda: ("auto", *DATASETS.names()), flag="--dataset")
    data_dir: str | None = option(None, "dataset directory (null: $BIONAS_DATA)", flag="--data-dir")
    per_class: int | None = option(None, "training images per class to search on (null: all)", ge=1)
    train_portion: float = option(0.5, "share of the training images that train the weights", gt=0, lt=1)
    augment: bool = option(True, "random crop + flip (appendix 7.1)")
    # weights: SGD, appendix 7.1 (Table 6)
    epochs: int = option(50, "search epochs", ge=1, flag="--epochs")
    batch_size: int = option(256, "batch size", ge=1, flag="--batch-size")
    steps_per_epoch: int | None = option(None, "steps per epoch (null: one pass over the weight half)", ge=1)
    lr: float = option(0.1, "initial weight learning rate", gt=0)
    lr_min: float = option(0.0, "cosine annealing ends here", ge=0)
    momentum: float = option(0.9, "SGD momentum", ge=0, lt=1)
    nesterov: bool = option(True, "Nesterov momentum")
    weight_decay: float = option(3e-4, "weight decay", ge=0)
    grad_clip: float = option(5.0, "max global norm of the weight gradient (0: off)", ge=0)
    # run
    seed: int = option(0, "random seed", flag="--seed")
    device: str = option("auto", "auto (cuda if available), cpu, cuda, cuda:N", flag="--device")
    channels_last: bool = option(True, "channels-last tensors (much faster depthwise convolutions on CPU)")
    amp: str = option("off", "bf16: bf16 autocast in the weight steps, first-order architecture steps and EG's "
                      "scoring (second order stays float32); off: float32", choices=("off", "bf16"))
    checkpoint_cells: bool = option(False, "recompute each cell in the backward instead of keeping its "
                                    "activations (less memory, one more forward per step)")
    out: str = option("runs/search", "output directory", flag="--out")
    progress: bool = option(True, "progress bars")

    def check_together(self) -> None:
        from bionas.search.strategy import STRATEGIES

        for name, options in self.strategy_options.items():
            STRATEGIES.get(name).options_from(options)

    def options_for(self, method: str):
        """The options dataclass of strategy ``method``, from ``strategy_options[method]``."""
        from bionas.search.strategy import STRATEGIES

        return STRATEGIES.get(method).options_from(self.strategy_options.get(method, {}))

    def to_dict(self) -> dict:
        return to_dict(self)


def apply_options(config: SearchConfig, options: dict, source: str) -> SearchConfig:
    """``config`` with ``options`` set and checked; unknown keys are an error naming ``source``."""
    return check(_apply(config, options, source, "search"))


def resolve_config(preset: str | None = None, config_file: str | Path | None = None,
                   overrides: dict | None = None) -> SearchConfig:
    """Defaults -> preset -> config file -> overrides, checked."""
    return resolve(SearchConfig, "search", preset, config_file, overrides)
