"""The main job of the foundation: one small network per learning rule, plus one that mixes them
all, trained briefly on real data and compared.

Outputs in ``out``: ``config.json`` (resolved config, seed, version), ``results.csv`` (one row per
network: first/last training loss, test loss and accuracy, mean alignment angle, seconds),
``curves.csv`` (training loss per step) and ``loss_curves.png``. All are written atomically.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

import bionas
from bionas import rules
from bionas.data import TRAIN_AUGMENTATION, BatchLoader, load_dataset, resolve_dataset_name
from bionas.engine import accuracy, evaluate, train_step
from bionas.configs.options import check, option
from bionas.errors import ConfigError
from bionas.io import check_output_dir, save_csv, save_figure, save_json
from bionas.models import tiny_net

log = logging.getLogger(__name__)

MIXED = "mixed"


def _default_rules() -> list[str]:
    return [name for name in rules.RULES if issubclass(rules.RULES.get(name), rules.FeedbackRule)] + [MIXED]


@dataclass
class QuickstartConfig:
    dataset: str = option("auto", "cifar10, cifar100, digits, or auto (cifar10 when a data directory is known, "
                          "else scikit-learn's digits)", flag="--dataset")
    data_dir: str | None = option(None, "dataset directory (null: $BIONAS_DATA)", flag="--data-dir")
    rules: list[str] = option(help="rules to train, one network each ('mixed': every rule in one network)",
                              factory=_default_rules, flag="--rules")
    steps: int = option(150, "SGD steps per network", ge=1, flag="--steps")
    batch_size: int = option(64, "batch size", ge=1, flag="--batch-size")
    lr: float = option(0.05, "learning rate", gt=0, flag="--lr")
    momentum: float = option(0.9, "SGD momentum", ge=0, lt=1)
    weight_decay: float = option(3e-4, "weight decay", ge=0)
    channels: int = option(16, "channels of the small network", ge=1, flag="--channels")
    train_per_class: int | None = option(500, "training images per class", ge=1, flag="--train-per-class")
    test_per_class: int | None = option(100, "test images per class", ge=1, flag="--test-per-class")
    seed: int = option(0, "random seed", flag="--seed")
    out: str = option("runs/quickstart", "output directory", flag="--out")
    progress: bool = option(True, "progress bars")

    def check_together(self) -> None:
        known = set(rules.RULES) | {MIXED}
        unknown = [r for r in self.rules if r not in known]
        if unknown:
            raise ConfigError(f"unknown rule(s) {', '.join(unknown)}; choose from {', '.join(sorted(known))}")


def _plot(curves: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for net, group in curves.groupby("network", sort=False):
        smooth = group["loss"].rolling(10, min_periods=1).mean()
        ax.plot(group["step"], smooth, label=net)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (10-step mean)")
    ax.legend()
    ax.grid(alpha=0.3)
    save_figure(fig, path)
    plt.close(fig)


@dataclass
class QuickstartResult:
    results: pd.DataFrame  # one row per network
    out: Path

    def summary(self) -> str:
        cols = ["network", "first_loss", "last_loss", "test_acc", "mean_alignment_deg", "seconds"]
        return self.results[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}")


def run_quickstart(config: QuickstartConfig) -> QuickstartResult:
    """Train one TinyNet per entry of ``config.rules``; returns the results table."""
    config = check(config)
    out = check_output_dir(config.out)
    if (out / "results.csv").exists():
        raise ConfigError(f"{out} already holds quickstart results (results.csv); choose another --out or delete them")
    name = resolve_dataset_name(config.dataset, config.data_dir)
    train = load_dataset(name, config.data_dir, "train", config.train_per_class, config.seed)
    test = load_dataset(name, config.data_dir, "test", config.test_per_class, config.seed)
    log.info("quickstart on %s: %d training and %d test images, %d steps per network",
             name, len(train), len(test), config.steps)

    mixed_rules = [r for r in _default_rules() if r != MIXED]
    rows, curves = [], []
    for net_rule in config.rules:
        torch.manual_seed(config.seed)
        rule_arg = mixed_rules if net_rule == MIXED else net_rule
        model = tiny_net(train.channels, train.num_classes, rule_arg, C=config.channels, seed=config.seed)
        optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                    weight_decay=config.weight_decay)
        loader = BatchLoader(train, config.batch_size, augment=TRAIN_AUGMENTATION[name], seed=config.seed,
                             drop_last=True)
        start = time.perf_counter()
        losses = _train(model, optimizer, loader, config, label=net_rule)
        seconds = time.perf_counter() - start
        test_loss, test_acc = evaluate(model, BatchLoader(test, 500, shuffle=False))
        angles = list(rules.alignment_angles(model).values())
        head = max(1, len(losses) // 10)
        rows.append({
            "network": net_rule, "rules": "+".join(sorted(set(rules.rules_in(model).values()))),
            "params": sum(p.numel() for p in model.parameters()),
            "first_loss": sum(losses[:head]) / head, "last_loss": sum(losses[-head:]) / head,
            "test_loss": test_loss, "test_acc": test_acc,
            "mean_alignment_deg": sum(angles) / len(angles) if angles else float("nan"),
            "seconds": seconds,
        })
        curves += [{"network": net_rule, "step": s, "loss": v} for s, v in enumerate(losses)]
        log.info("%s: loss %.3f -> %.3f, test accuracy %.3f", net_rule, rows[-1]["first_loss"],
                 rows[-1]["last_loss"], test_acc)
    results, curve_frame = pd.DataFrame(rows), pd.DataFrame(curves)
    # Written only once every network has trained: a run that fails part-way (NaN, Ctrl-C) leaves
    # an earlier run's files in ``out`` untouched, never a config beside someone else's results.
    save_json({"config": dataclasses.asdict(config), "dataset": name, "bionas_version": bionas.__version__,
               "torch_version": torch.__version__, "train_images": len(train), "test_images": len(test)},
              out / "config.json")
    save_csv(results, out / "results.csv")
    save_csv(curve_frame, out / "curves.csv")
    _plot(curve_frame, out / "loss_curves.png")
    return QuickstartResult(results, out)


def _train(model, optimizer, loader: BatchLoader, config: QuickstartConfig, label: str) -> list[float]:
    from tqdm import tqdm

    losses: list[float] = []
    # disable=None: bars only on a terminal, so logs and CI output stay readable
    bar = tqdm(total=config.steps, desc=f"{label:>6}", disable=None if config.progress else True, leave=False)
    while len(losses) < config.steps:
        for x, y in loader:
            loss, logits = train_step(model, optimizer, x, y, step=len(losses))
            acc = accuracy(logits, y)
            losses.append(loss)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", acc=f"{acc:.2f}")
            if len(losses) == config.steps:
                break
    bar.close()
    return losses
