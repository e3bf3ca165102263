"""The train command's configuration: one dataclass; the paper's recipe per dataset and model.

Options resolve as (later wins, :func:`bionas.configs.options.resolve`): the dataclass defaults
(the BioNAS CIFAR recipe) < the paper's preset for the model and dataset (``base_preset: auto``
picks ``resnet`` for the ResNet baselines, else the dataset's: ``cifar``, ``imagenet16_120``,
``imagenet``; all in ``bionas/configs/train.yaml``) < a named ``--preset`` (``smoke``, ``short``)
< a YAML file (``--config``, e.g. a run's saved ``config.yaml``) < flags and ``--set``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from bionas.dynamics import DynamicsOptions
from bionas.configs.options import apply_options as _apply, check, option, resolve, to_dict
from bionas.engine import INITS
from bionas.errors import ConfigError

SCHEDULES = ("cosine", "linear", "step", "exponential")
AMP = ("auto", "bf16", "off")
CELL_MODEL = "darts"  # the evaluation network of a genotype; anything else is a bionas.models.resnet name


def _models():
    from bionas.models.resnet import MODELS

    return (CELL_MODEL, *MODELS.names())


def _datasets():
    from bionas.data import DATASETS, STREAMED_DATASETS

    return ("auto", *DATASETS.names(), *STREAMED_DATASETS)


def _rules():
    from bionas.rules import RULES

    return RULES


@dataclass
class TrainConfig(DynamicsOptions):
    # what to train
    model: str = option(CELL_MODEL, "darts: the cell network of --genotype; resnet20, resnet56: baselines",
                        choices=_models, flag="--model")
    genotype: str | None = option(None, "a registered genotype (bionas.models.GENOTYPES) or a genotype file",
                                  flag="--genotype")
    rule: str | None = option(None, "one learning rule on every weighted layer or edge", choices=_rules,
                              flag="--rule")
    random_rules: bool = option(False, "each weighted edge draws its rule among those `space` allows")
    layer_rules: dict[str, str] = option(help="models other than the cell network: {layer name: rule} over "
                                              "--rule, e.g. {hidden: oja, classifier: wp} for the mlp",
                                         factory=dict)
    space: str = option("bionas", "search space for random rules and for validating the genotype", flag="--space")
    rule_options: dict[str, dict] = option(help="{rule: {option: value}}", factory=dict)
    channels: int = option(36, "cell network: initial channels", ge=1)
    layers: int = option(20, "cell network: cells", ge=1)
    auxiliary_weight: float = option(0.4, "weight of the auxiliary head's loss (0: no auxiliary head)", ge=0)
    drop_path: float = option(0.2, "final drop-path probability, ramped linearly from 0", ge=0, lt=1)
    init: str = option("xavier", "xavier (BioNAS section 3.4) or torch (PyTorch's defaults)", choices=INITS)
    # data
    base_preset: str = option("auto", "the paper's preset applied first (auto: by model and dataset)")
    dataset: str = option("auto", "dataset (auto: cifar10 when a data directory is known, else digits)",
                          choices=_datasets, flag="--dataset")
    data_dir: str | None = option(None, "dataset directory (null: $BIONAS_DATA)", flag="--data-dir")
    per_class: int | None = option(None, "training images per class (null: all)", ge=1)
    test_per_class: int | None = option(None, "test images per class (null: the whole test split)", ge=1)
    cutout: int = option(16, "side of the Cutout square (0: off)", ge=0)
    inputs: str = option("normalised", "normalised (by the dataset's mean and std) or unit (pixels in [0, 1], "
                         "e.g. for non-negative networks)", choices=("normalised", "unit"))
    image_size: int = option(224, "ImageNet only: crop size", ge=1)
    workers: int = option(4, "ImageNet only: decoding processes per rank", ge=0)
    # optimisation: SGD
    epochs: int = option(600, "epochs (the paper's preset for the model and dataset sets it)", ge=1, flag="--epochs")
    batch_size: int = option(96, "global batch (split over the ranks under torchrun)", ge=1, flag="--batch-size")
    steps_per_epoch: int | None = option(None, "steps per epoch (null: one pass over the training images)", ge=1)
    lr: float = option(0.025, "initial learning rate", gt=0, flag="--lr")
    schedule: str = option("cosine", "cosine | linear (to 0) | step (milestones) | exponential (gamma per epoch)",
                           choices=SCHEDULES)
    lr_min: float = option(0.0, "cosine: final learning rate", ge=0)
    milestones: list[int] = option(help="step: epochs where lr *= gamma", ge=0, factory=lambda: [100, 150, 200])
    gamma: float = option(0.1, "step / exponential decay factor", gt=0)
    warmup_epochs: int = option(0, "linear warm-up from lr / (warmup_epochs + 1) (large-batch ImageNet)", ge=0)
    momentum: float = option(0.9, "SGD momentum", ge=0, lt=1)
    nesterov: bool = option(False, "Nesterov momentum")
    weight_decay: float = option(3e-4, "weight decay", ge=0)
    grad_clip: float = option(5.0, "max global gradient norm (0: off)", ge=0)
    label_smoothing: float = option(0.0, "label smoothing", ge=0, lt=1)
    # run
    seed: int = option(0, "random seed", flag="--seed")
    device: str = option("auto", "auto (cuda if available; under torchrun cuda:LOCAL_RANK), cpu, cuda, cuda:N",
                         flag="--device")
    amp: str = option("auto", "auto: bf16 autocast on CUDA, off on CPU", choices=AMP)
    channels_last: bool = option(True, "channels-last tensors")
    sync_batchnorm: bool = option(True, "data-parallel: batch statistics over the global batch")
    eval_batch_size: int = option(500, "test batch per rank", ge=1)
    out: str = option("runs/train", "output directory", flag="--out")
    progress: bool = option(True, "progress bars")

    @staticmethod
    def adjust_to_base(config: "TrainConfig", base: "TrainConfig", given: set[str]) -> "TrainConfig":
        """A preset, file or flag that changes the base recipe's batch size without giving a
        learning rate gets the recipe's rate scaled linearly with the batch (Goyal et al. 2017,
        "Accurate, Large Minibatch SGD", section 2.1): the smoke preset's batch of 32 takes the
        ResNet recipe's 0.1 at 128 to 0.025, where 0.1 made fa diverge."""
        if "lr" in given or config.batch_size == base.batch_size:
            return config
        return dataclasses.replace(config, lr=base.lr * config.batch_size / base.batch_size)

    @staticmethod
    def base_preset_for(options: dict) -> str:
        """The paper's preset for a model and dataset: ``resnet`` for the baselines, else by dataset."""
        name = options.get("base_preset", "auto")
        if name != "auto":
            return name
        if options.get("model", CELL_MODEL) != CELL_MODEL:
            return "resnet"
        return {"imagenet16-120": "imagenet16_120", "imagenet": "imagenet"}.get(options.get("dataset", "auto"), "cifar")

    def check_together(self) -> None:
        if self.model != CELL_MODEL:
            if self.genotype is not None:
                raise ConfigError(f"--genotype is for the cell network; model {self.model} takes --rule only")
            if self.random_rules:
                raise ConfigError("--rules random assigns rules to a genotype's edges; give --genotype, not --model")
        elif self.genotype is None:
            raise ConfigError("nothing to train: give --genotype NAME|FILE (e.g. darts_v2) or --model resnet20")
        if self.layer_rules and self.model == CELL_MODEL:
            raise ConfigError("layer_rules names layers of --model resnet20/56 or mlp; a genotype gives each edge "
                              "its rule")
        from bionas.rules import RULES

        for layer, rule in self.layer_rules.items():
            RULES.get(rule)  # an unknown rule: one line naming it
        if self.rule is not None and self.random_rules:
            raise ConfigError("--rule and --rules random contradict each other; give one")

    def to_dict(self) -> dict:
        return to_dict(self)


def apply_options(config: TrainConfig, options: dict, source: str) -> TrainConfig:
    """``config`` with ``options`` set (not checked: a saved config may lack a genotype only
    while it is being built); unknown keys are an error naming ``source``."""
    return _apply(config, options, source, "train")


def resolve_config(preset: str | None = None, config_file: str | Path | None = None,
                   overrides: dict | None = None) -> TrainConfig:
    """Defaults -> the paper's preset for the model and dataset -> preset -> config file -> overrides."""
    return resolve(TrainConfig, "train", preset, config_file, overrides)


__all__ = ["TrainConfig", "resolve_config", "apply_options", "check", "CELL_MODEL"]
