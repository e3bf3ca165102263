"""Configuration of ``bionas hebbian``: one dataclass; a named preset from
``bionas/configs/hebbian.yaml`` sets the learning, initialisation, whitening and per-layer rule
options; a config file, flags and ``--set`` override it. The resolved config is saved with the run.

Protocol defaults (Hebbian-CNN paper section 4.2): one Hebbian epoch at batch 64, then the
convolutions are frozen and a linear classifier (dropout 0.5) is trained on their features for 20
epochs by Adam at lr 1e-3, halved every 2 epochs from epoch 10; the backprop preset trains the
same network end to end by Adam at lr 1e-3.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from bionas.dynamics import DynamicsOptions
from bionas.configs.options import option, resolve, to_dict
from bionas.errors import ConfigError

LEARNING = ("hebbian", "backprop", "none")  # none: the random initial convolutions, read out (a control)
INITS = ("kaiming", "softhebb")


@dataclass
class HebbianConfig(DynamicsOptions):
    preset: str = option("hard_wta_bcm_surround", "the named preset this config started from")
    learning: str = option("hebbian", "hebbian, backprop (end to end) or none (random features, a control)",
                           choices=LEARNING)
    init: str = option("kaiming", "convolution initialisation", choices=INITS)
    whiten: bool = option(True, "ZCA whitening of the input images")
    zca_eps: float = option(1e-2, "added to the covariance's eigenvalues (pixels in [0, 1])", gt=0)
    layers: list[dict] = option(help="per block: hebbian rule options", factory=list)
    surround_forward: bool = option(False, "a layer's DoG surround also shapes its output, not only its update")
    channels: list[int] = option(help="widths of the 3 blocks", ge=1, factory=lambda: [96, 384, 1536])
    dataset: str = option("cifar10", "dataset", flag="--dataset")
    data_dir: str | None = option(None, "dataset directory (null: $BIONAS_DATA)", flag="--data-dir")
    per_class: int | None = option(None, "training images per class (null: the whole split)", ge=1,
                                   flag="--per-class")
    test_per_class: int | None = option(None, "test images per class (null: the whole split)", ge=1,
                                        flag="--test-per-class")
    flip: bool = option(True, "random horizontal flips in the Hebbian phase and end-to-end training")
    hebbian_epochs: int = option(1, "passes of local learning", ge=1)
    hebbian_batch_size: int = option(64, "batch of the Hebbian phase", ge=1)
    classifier_epochs: int = option(20, "read-out epochs", ge=1)
    classifier_batch_size: int = option(64, "read-out (and backprop) batch", ge=1)
    classifier_lr: float = option(1e-3, "read-out Adam learning rate", gt=0)
    lr_halve_from: int = option(10, "the read-out lr halves every lr_halve_every epochs from this epoch", ge=0)
    lr_halve_every: int = option(2, "epochs between halvings", ge=1)
    dropout: float = option(0.5, "dropout before the classifier", ge=0, lt=1)
    backprop_epochs: int = option(20, "epochs of the backprop preset", ge=1)
    epochs: int | None = option(None, "sets classifier_epochs, or backprop_epochs for learning: backprop", ge=1,
                                flag="--epochs")
    backprop_lr: float = option(1e-3, "Adam learning rate of the backprop preset", gt=0)
    feature_dtype: str = option("float16", "cached features (CIFAR-10's 60,000 x 24,576 take 2.9 GB in float16)",
                                choices=("float16", "bfloat16", "float32"))
    eval_batch_size: int = option(500, "feature-extraction and test batch", ge=1)
    seed: int = option(0, "random seed", flag="--seed")
    device: str = option("auto", "auto (cuda if available), cpu, cuda, cuda:N", flag="--device")
    out: str = option("runs/hebbian", "output directory", flag="--out")
    progress: bool = option(True, "progress bars")

    def check_together(self) -> None:
        if len(self.channels) != 3:
            raise ConfigError(f"channels must list 3 positive widths, got {self.channels!r}")
        if self.learning == "hebbian" and len(self.layers) != 3:
            raise ConfigError(f"preset {self.preset!r} needs hebbian options for each of the 3 blocks (layers: "
                              f"[{{...}}, {{...}}, {{...}}]), got {len(self.layers)}")
        if self.surround_forward and not (self.learning == "hebbian" and any(b.get("surround") for b in self.layers)):
            raise ConfigError(f"surround_forward needs hebbian layers with surround: true; preset {self.preset!r} "
                              f"has none (try --preset hard_wta_bcm_surround)")

    def with_epochs_applied(self) -> "HebbianConfig":
        """``epochs`` moved to the field it stands for: the read-out's epochs, or for ``learning:
        backprop`` the end-to-end epochs."""
        if self.epochs is None:
            return self
        key = "backprop_epochs" if self.learning == "backprop" else "classifier_epochs"
        return dataclasses.replace(self, **{key: self.epochs, "epochs": None})

    def to_dict(self) -> dict:
        return to_dict(self)


def resolve_config(preset: str = "hard_wta_bcm_surround", config_file=None,
                   overrides: dict | None = None) -> HebbianConfig:
    """Defaults -> named preset -> config file -> overrides, checked."""
    return resolve(HebbianConfig, "hebbian", preset, config_file, overrides)
