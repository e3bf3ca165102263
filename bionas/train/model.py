"""Building the network a training config describes, and loading it back from a checkpoint.

``build_network`` is the one place that turns (config, dataset shape) into a model: the DARTS
evaluation network of a genotype whose every edge keeps its rule (after the ``--rule`` /
``--rules random`` overrides), or a ResNet baseline converted to one rule; then the seeded
initialisation. ``load_trained`` rebuilds it from a checkpoint (what ``bionas attack`` uses).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from bionas import rules
from bionas.engine import initialise_weights
from bionas.errors import ConfigError
from bionas.models.darts_net import NetworkCIFAR, NetworkImageNet
from bionas.models.genotypes import resolve_genotype, with_random_rules, with_rule
from bionas.models.resnet import MODELS
from bionas.rules.base import layer_seed
from bionas.genotype import Genotype
from bionas.space import load_space
from bionas.train.config import CELL_MODEL, TrainConfig

CHECKPOINT_KIND = "train"


@dataclass(frozen=True)
class DataShape:
    """What a network needs to know about its dataset (saved in the checkpoint)."""

    name: str
    channels: int
    image_size: int
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


def training_genotype(config: TrainConfig) -> Genotype | None:
    """The genotype to train with the rule overrides applied (``None`` for a baseline model)."""
    if config.model != CELL_MODEL:
        return None
    genotype = resolve_genotype(config.genotype)
    if config.rule is not None:
        genotype = with_rule(genotype, config.rule)
    elif config.random_rules:
        genotype = with_random_rules(genotype, load_space(config.space), config.seed)
    return genotype


def initialise(model: nn.Module, init: str, seed: int) -> None:
    """Xavier-uniform (BioNAS section 3.4) or PyTorch's default weights, from ``seed``."""
    initialise_weights(model, init, torch.Generator().manual_seed(layer_seed(seed, 20_000)))


def build_network(config: TrainConfig, data: DataShape, genotype: Genotype | None) -> nn.Module:
    """The model of ``config`` for ``data``, initialised; every layer's rule already in force.

    Every random number comes from generators seeded by ``config.seed``; torch's layer
    constructors draw default weights from the global RNG, which is forked around them so that
    building (or loading) a network never moves it."""
    with torch.random.fork_rng(devices=[]):
        return _build_network(config, data, genotype)


def _build_network(config: TrainConfig, data: DataShape, genotype: Genotype | None) -> nn.Module:
    if config.model == CELL_MODEL:
        if genotype is None:
            raise ConfigError("the cell network needs a genotype")
        if config.layers < 3:
            raise ConfigError(f"the cell network needs at least 3 cells (two reductions), got layers={config.layers}")
        cls = NetworkImageNet if data.name == "imagenet" else NetworkCIFAR
        net = cls(genotype, data.num_classes, C=config.channels, layers=config.layers,
                  auxiliary=config.auxiliary_weight > 0, in_channels=data.channels, seed=config.seed,
                  rule_options=config.rule_options)
    else:
        net = MODELS.get(config.model)(data.num_classes, data.channels)
        rule = config.rule or "bp"
        net = rules.convert(net, rule, seed=config.seed, **rules.options_for(rule, config.rule_options))
        layers = dict(net.named_modules())
        _check_layer_names(config, layers)
        for i, (name, layer_rule) in enumerate(sorted(config.layer_rules.items())):
            parent, _, child = name.rpartition(".")
            setattr(net.get_submodule(parent), child,
                    rules.convert(layers[name], layer_rule, seed=config.seed + 7919 * (i + 1),
                                  **rules.options_for(layer_rule, config.rule_options)))
    initialise(net, config.init, config.seed)
    return net


def _check_layer_names(config: TrainConfig, layers: dict[str, nn.Module]) -> None:
    for name in sorted(config.layer_rules):
        if not isinstance(layers.get(name), rules.RuleLayer):
            known = ", ".join(n for n, m in layers.items() if isinstance(m, rules.RuleLayer))
            raise ConfigError(f"layer_rules names {name!r}, not a weighted layer of {config.model}; its layers: "
                              f"{known}")


def check_layer_rules(config: TrainConfig) -> None:
    """Refuse a ``layer_rules`` name that is no weighted layer of the model before any data is
    loaded (a full CIFAR-10 load takes most of a minute on a CPU): the layer names do not depend
    on the data's classes or channels, so a stand-in of the model is built to list them."""
    if not config.layer_rules or config.model == CELL_MODEL:
        return
    with torch.random.fork_rng(devices=[]):
        net = rules.convert(MODELS.get(config.model)(10, 3), "bp", seed=0)
    _check_layer_names(config, dict(net.named_modules()))


class WithAuxiliary(nn.Module):
    """``forward`` returns ``(logits, auxiliary logits or None)``: what the training loss needs,
    as a module ``DistributedDataParallel`` can wrap (its hooks only see ``forward``)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        if hasattr(self.net, "forward_with_aux"):
            return self.net.forward_with_aux(x)
        return self.net(x), None


@dataclass
class Trained:
    """A network loaded from a training checkpoint, in eval mode."""

    model: nn.Module
    config: TrainConfig
    data: DataShape
    genotype: Genotype | None
    epoch: int
    history: list[dict]


def load_trained(path: str | Path, device: torch.device | str = "cpu") -> Trained:
    """Rebuild the network saved in a ``bionas train`` checkpoint (weights, rules, feedback)."""
    from bionas.train.config import apply_options

    from bionas.engine import load_checkpoint

    path = Path(path)
    state = load_checkpoint(path, CHECKPOINT_KIND)
    config = apply_options(TrainConfig(), state["config"], str(path))
    data = DataShape(**{**state["data"], "mean": tuple(state["data"]["mean"]), "std": tuple(state["data"]["std"])})
    genotype = Genotype.from_dict(state["genotype"]) if state["genotype"] is not None else None
    net = build_network(config, data, genotype)
    net.load_state_dict(state["model"])
    net.to(device).eval()
    return Trained(net, config, data, genotype, int(state["epoch"]), list(state["history"]))
