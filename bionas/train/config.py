"""The train command's configuration: one dataclass, a recipe per dataset and model.

Resolution order (later wins): the dataclass defaults (the BioNAS CIFAR recipe) -> the recipe
for the model and dataset (``recipes:`` in ``bionas/configs/train.yaml``; ``recipe: auto``
picks ``resnet`` for the ResNet baselines, else the dataset's) -> a named preset (``--preset
smoke``) -> a YAML file (``--config``, e.g. a run's saved ``config.yaml``) -> command-line flags
and ``--set KEY=VALUE``. Unknown keys are errors; the resolved config is saved with the run.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from bionas import configs
from bionas.configs import options as options_lib
from bionas.engine import INITS
from bionas.errors import ConfigError

SCHEDULES = ("cosine", "linear", "step", "exponential")
AMP = ("auto", "bf16", "off")
CELL_MODEL = "darts"  # the evaluation network of a genotype; anything else is a bionas.models.resnet name


@dataclass
class TrainConfig:
    # what to train
    model: str = CELL_MODEL  # darts: the cell network of `genotype`; resnet20, resnet56: baselines
    genotype: str | None = None  # registered name (darts_v2) or a genotype file; model darts only
    rule: str | None = None  # one rule on every weighted layer (ablation; default for resnets: bp)
    random_rules: bool = False  # each weighted edge draws its rule among those `space` allows
    space: str = "bionas"  # search space for random rules and for validating the genotype
    rule_options: dict = field(default_factory=dict)  # {rule: {option: value}}
    channels: int = 36  # cell network: initial channels
    layers: int = 20  # cell network: cells
    auxiliary_weight: float = 0.4  # weight of the auxiliary head's loss (0: no auxiliary head)
    drop_path: float = 0.2  # final drop-path probability, ramped linearly from 0 over the epochs
    init: str = "xavier"  # BioNAS section 3.4: Xavier initialisation; torch: PyTorch's defaults
    # data
    recipe: str = "auto"
    dataset: str = "auto"
    data_dir: str | None = None
    per_class: int | None = None  # training images per class (None: all)
    test_per_class: int | None = None  # test images per class (None: the whole test split)
    cutout: int = 16  # side of the Cutout square (0: off)
    image_size: int = 224  # ImageNet only: crop size
    workers: int = 4  # ImageNet only: decoding processes per rank
    # optimisation: SGD
    epochs: int = 600
    batch_size: int = 96  # global batch (split over the ranks under torchrun)
    steps_per_epoch: int | None = None  # None: one pass over the training images
    lr: float = 0.025
    schedule: str = "cosine"  # cosine | linear (to 0) | step (milestones) | exponential (gamma per epoch)
    lr_min: float = 0.0  # cosine: final learning rate
    milestones: list = field(default_factory=lambda: [100, 150, 200])  # step: epochs where lr *= gamma
    gamma: float = 0.1  # step / exponential decay factor
    warmup_epochs: int = 0  # linear warm-up from lr / (warmup_epochs + 1) (large-batch ImageNet)
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 3e-4
    grad_clip: float = 5.0  # max global gradient norm (0: off)
    label_smoothing: float = 0.0
    # run
    seed: int = 0
    device: str = "auto"  # auto: cuda if available, else cpu; under torchrun cuda:LOCAL_RANK
    amp: str = "auto"  # auto: bf16 autocast on CUDA, off on CPU
    channels_last: bool = True
    sync_batchnorm: bool = True  # data-parallel: batch statistics over the global batch
    eval_batch_size: int = 500
    out: str = "runs/train"
    progress: bool = True

    def validate(self) -> "TrainConfig":
        from bionas.data import DATASETS, STREAMED_DATASETS
        from bionas.models.resnet import MODELS
        from bionas.rules import RULES

        if self.model != CELL_MODEL:
            if self.model not in MODELS:
                raise ConfigError(f"unknown model {self.model!r}; choose {CELL_MODEL} (with --genotype) or one of "
                                  f"{', '.join(MODELS.names())}")
            if self.genotype is not None:
                raise ConfigError(f"--genotype is for the cell network; model {self.model} takes --rule only")
            if self.random_rules:
                raise ConfigError("--rules random assigns rules to a genotype's edges; give --genotype, not --model")
        elif self.genotype is None:
            raise ConfigError("nothing to train: give --genotype NAME|FILE (e.g. darts_v2) or --model resnet20")
        if self.rule is not None:
            RULES.get(self.rule)
            if self.random_rules:
                raise ConfigError("--rule and --rules random contradict each other; give one")
        if self.dataset not in ("auto", *DATASETS.names(), *STREAMED_DATASETS):
            raise ConfigError(f"unknown dataset {self.dataset!r}; choose auto, "
                              f"{', '.join([*DATASETS.names(), *STREAMED_DATASETS])}")
        for name in ("epochs", "batch_size", "channels", "layers", "eval_batch_size", "image_size", "workers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < (0 if name == "workers" else 1):
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        for name in ("steps_per_epoch", "per_class", "test_per_class"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"{name} must be a positive integer or null, got {value!r}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.init not in INITS:
            raise ConfigError(f"init must be one of {', '.join(INITS)}, got {self.init!r}")
        if self.amp not in AMP:
            raise ConfigError(f"amp must be one of {', '.join(AMP)}, got {self.amp!r}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        for name in ("lr_min", "weight_decay", "grad_clip", "auxiliary_weight", "momentum"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be non-negative, got {getattr(self, name)}")
        if not 0.0 <= self.drop_path < 1.0:
            raise ConfigError(f"drop_path must be in [0, 1), got {self.drop_path}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if not isinstance(self.milestones, list) or not all(isinstance(m, int) for m in self.milestones):
            raise ConfigError(f"milestones must be a list of epochs, got {self.milestones!r}")
        if not isinstance(self.warmup_epochs, int) or self.warmup_epochs < 0:
            raise ConfigError(f"warmup_epochs must be a non-negative integer, got {self.warmup_epochs!r}")
        if not isinstance(self.rule_options, dict) or not all(isinstance(v, dict) for v in self.rule_options.values()):
            raise ConfigError("rule_options must map rule names to option mappings, e.g. {usf: {scale: 1.0}}")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def apply_options(config: TrainConfig, options: dict, source: str) -> TrainConfig:
    return options_lib.apply_options(config, options, source, "train")


def recipe_name(model: str, dataset: str) -> str:
    """The paper's recipe for a model and dataset: ``resnet`` for the baselines, else by dataset."""
    if model != CELL_MODEL:
        return "resnet"
    return {"imagenet16-120": "imagenet16_120", "imagenet": "imagenet"}.get(dataset, "cifar")


def recipe(name: str) -> dict:
    recipes = configs.load_yaml_mapping(configs.CONFIG_DIR / "train.yaml", "train presets").get("recipes", {})
    if name not in recipes:
        raise ConfigError(f"unknown recipe {name!r}; choose auto or one of {', '.join(sorted(recipes))}")
    return dict(recipes[name] or {})


def resolve_config(preset: str | None = None, config_file: str | Path | None = None,
                   overrides: dict | None = None) -> TrainConfig:
    """Defaults -> recipe -> preset -> config file -> overrides, validated."""
    layers = []
    if preset:
        layers.append((configs.preset("train", preset), f"preset {preset!r}"))
    if config_file:
        layers.append((configs.load_yaml_mapping(config_file, "train config"), str(config_file)))
    if overrides:
        layers.append((overrides, "the command line"))
    merged: dict = {}
    for options, _ in layers:
        merged.update(options)
    name = merged.get("recipe", "auto")
    if name == "auto":
        name = recipe_name(merged.get("model", CELL_MODEL), merged.get("dataset", "auto"))
    config = apply_options(TrainConfig(), recipe(name), f"recipe {name!r}")
    for options, source in layers:
        config = apply_options(config, options, source)
    return dataclasses.replace(config, recipe=name).validate()
