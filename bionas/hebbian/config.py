"""Configuration of ``bionas hebbian``: one dataclass; a named setup from
``bionas/configs/hebbian.yaml`` sets the learning, initialisation, whitening and per-layer rule
options; a config file, flags and ``--set`` override it. The resolved config is saved with the run.

Protocol defaults (Hebbian-CNN paper section 4.2): one Hebbian epoch at batch 64, then the
convolutions are frozen and a linear classifier (dropout 0.5) is trained on their features for 20
epochs by Adam at lr 1e-3, halved every 2 epochs from epoch 10; the backprop setup trains the same
network end to end by Adam at lr 1e-3.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from bionas import configs
from bionas.configs import options as options_lib
from bionas.errors import ConfigError

LEARNING = ("hebbian", "backprop", "none")  # none: the random initial convolutions, read out (a control)
INITS = ("kaiming", "softhebb")


@dataclass
class HebbianConfig:
    setup: str = "hard_wta_bcm_surround"
    learning: str = "hebbian"
    init: str = "kaiming"
    whiten: bool = True  # ZCA whitening of the input images
    zca_eps: float = 1e-2  # added to the covariance's eigenvalues (pixels in [0, 1])
    layers: list = field(default_factory=list)  # per block: hebbian rule options
    surround_forward: bool = False  # a layer's DoG surround also shapes its output, not only its update
    channels: list = field(default_factory=lambda: [96, 384, 1536])  # quadrupling per block
    dataset: str = "cifar10"
    data_dir: str | None = None
    per_class: int | None = None  # training images per class (None: the whole split)
    test_per_class: int | None = None
    flip: bool = True  # random horizontal flips in the Hebbian phase and end-to-end training
    hebbian_epochs: int = 1
    hebbian_batch_size: int = 64
    classifier_epochs: int = 20
    classifier_batch_size: int = 64
    classifier_lr: float = 1e-3
    lr_halve_from: int = 10  # the classifier's lr halves every lr_halve_every epochs from this epoch
    lr_halve_every: int = 2
    dropout: float = 0.5
    backprop_epochs: int = 20
    backprop_lr: float = 1e-3
    feature_dtype: str = "float16"  # cached features (the 60,000 x 24,576 of CIFAR-10 take 2.9 GB)
    eval_batch_size: int = 500
    seed: int = 0
    device: str = "auto"
    out: str = "runs/hebbian"
    progress: bool = True

    def validate(self) -> "HebbianConfig":
        if self.learning not in LEARNING:
            raise ConfigError(f"learning must be one of {', '.join(LEARNING)}, got {self.learning!r}")
        if self.init not in INITS:
            raise ConfigError(f"init must be one of {', '.join(INITS)}, got {self.init!r}")
        if len(self.channels) != 3 or not all(isinstance(c, int) and c > 0 for c in self.channels):
            raise ConfigError(f"channels must list 3 positive widths, got {self.channels!r}")
        if self.learning == "hebbian" and len(self.layers) != 3:
            raise ConfigError(f"setup {self.setup!r} needs hebbian options for each of the 3 blocks (layers: "
                              f"[{{...}}, {{...}}, {{...}}]), got {len(self.layers)}")
        if not all(isinstance(layer, dict) for layer in self.layers):
            raise ConfigError("layers must be a list of mappings of hebbian rule options")
        if self.surround_forward and not (self.learning == "hebbian" and any(l.get("surround") for l in self.layers)):
            raise ConfigError(f"surround_forward needs hebbian layers with surround: true; setup {self.setup!r} has "
                              f"none (try --setup hard_wta_bcm_surround)")
        for name in ("hebbian_epochs", "hebbian_batch_size", "classifier_epochs", "classifier_batch_size",
                     "lr_halve_every", "backprop_epochs", "eval_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.feature_dtype not in ("float16", "bfloat16", "float32"):
            raise ConfigError(f"feature_dtype must be float16, bfloat16 or float32, got {self.feature_dtype!r}")
        for name in ("per_class", "test_per_class"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"{name} must be a positive integer or null, got {value!r}")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def setups() -> dict[str, dict]:
    return configs.load_yaml_mapping(configs.CONFIG_DIR / "hebbian.yaml", "hebbian setups").get("setups", {})


def resolve_config(setup: str = "hard_wta_bcm_surround", config_file=None,
                   overrides: dict | None = None) -> HebbianConfig:
    """Defaults -> named setup -> config file -> overrides."""
    known = setups()
    if setup not in known:
        raise ConfigError(f"unknown hebbian setup {setup!r}; choose from {', '.join(known)}")
    config = options_lib.apply_options(HebbianConfig(setup=setup), dict(known[setup]), f"setup {setup!r}", "hebbian")
    if config_file:
        config = options_lib.apply_options(config, configs.load_yaml_mapping(config_file, "hebbian config"),
                                           str(config_file), "hebbian")
    if overrides:
        config = options_lib.apply_options(config, overrides, "the command line", "hebbian")
    return config.validate()
