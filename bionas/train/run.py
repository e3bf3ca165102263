"""The training loop of ``bionas train``: one process or data-parallel under ``torchrun``.

Outputs in ``config.out`` (written by rank 0 only, every file atomically):

* ``config.yaml`` -- the resolved config (``bionas train --config`` repeats the run);
* ``run_info.json`` -- versions, device, world size, dataset sizes, parameter counts, the rule
  of every layer;
* ``genotype.json`` -- the genotype trained (cell networks), rule overrides applied;
* ``checkpoint.pt`` -- after every epoch: weights (feedback tensors and generators included),
  genotype, rules, config, optimiser, data order, history; ``resume=True`` continues from it
  and ends where an uninterrupted run would;
* ``train_log.csv`` -- per epoch: learning rate, drop-path probability, train loss and accuracy
  (running means over the epoch, augmented data), test loss and accuracy, seconds;
* ``curves.png`` -- loss and accuracy against the epoch;
* at the end ``results.json`` -- the final test accuracy (of the last epoch: the test split is
  never used to pick an epoch).

Learning rates are a function of the epoch (``learning_rate``), set at the start of each epoch
as DARTS' per-epoch schedulers do; drop path ramps as ``drop_path * epoch / epochs``.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd
import torch
import torch.nn.functional as F
import yaml
from torch import nn

import bionas
from bionas import rules
from bionas.configs.options import check_resume
from bionas.data import (STREAMED_DATASETS, TRAIN_AUGMENTATION, BatchLoader, load_dataset, resolve_data_dir,
                         resolve_dataset_name)
from bionas.engine import Heartbeat, checkpoint_to_resume, restore_random_state, save_checkpoint, train_step
from bionas.errors import ConfigError
from bionas.io import atomic_open, check_output_dir, save_csv, save_figure, save_json
from bionas.genotype import Genotype
from bionas import distributed
from bionas.train.config import TrainConfig, apply_options, check
from bionas.train.model import (CHECKPOINT_KIND, DataShape, WithAuxiliary, build_network, check_layer_rules,
                                 training_genotype)

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    history: pd.DataFrame  # one row per epoch
    test_acc: float
    out: Path

    def summary(self) -> str:
        """What the command line prints at the end (rank 0 only under torchrun)."""
        if not distributed.from_environment().main or not len(self.history):
            return ""
        return (f"trained {len(self.history)} epochs in {self.history['seconds'].sum():.0f} s: final train acc "
                f"{self.history['train_acc'].iloc[-1]:.3f}, test acc {self.test_acc:.4f}")


def learning_rate(config: TrainConfig, epoch: int) -> float:
    """The learning rate of epoch ``epoch`` (0-based).

    Warm-up: ``lr * (epoch + 1) / (warmup + 1)`` for the first ``warmup_epochs``; then
    cosine ``lr_min + (lr - lr_min)(1 + cos(pi e / E)) / 2`` (DARTS), linear ``lr (1 - e / E)``
    (PC-DARTS / EG-NAS), step ``lr * gamma^(milestones passed)`` or exponential ``lr * gamma^e``.
    """
    if epoch < config.warmup_epochs:
        return config.lr * (epoch + 1) / (config.warmup_epochs + 1)
    E = config.epochs
    if config.schedule == "cosine":
        return config.lr_min + (config.lr - config.lr_min) * (1 + math.cos(math.pi * epoch / E)) / 2
    if config.schedule == "linear":
        return config.lr * (1 - epoch / E)
    if config.schedule == "step":
        return config.lr * config.gamma ** sum(epoch >= m for m in config.milestones)
    return config.lr * config.gamma ** epoch


class _Training:
    """Everything one run holds: data, network, optimiser, history."""

    def __init__(self, config: TrainConfig, context: distributed.Context, genotype: Genotype | None):
        self.config, self.context, self.genotype = config, context, genotype
        self.device = distributed.device_for(config.device, context)
        distributed.check_batch(config.batch_size, context)
        self.memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        self.dataset = resolve_dataset_name(config.dataset, config.data_dir)
        check_layer_rules(config)
        self._load_data()
        torch.manual_seed(config.seed)  # nothing should draw from it, but keep any stray use repeatable
        self.net = build_network(config, self.data, self.genotype).to(self.device, memory_format=self.memory_format)
        if hasattr(self.net, "shard"):
            self.net.shard = context.shard
        model: nn.Module = WithAuxiliary(self.net)
        if context.distributed:
            if config.sync_batchnorm:
                model = distributed.convert_batchnorm(model, self.device)
            # every rank computes the same buffers (feedback tensors from the same seeds, global
            # batch statistics), so broadcasting them from rank 0 each step would only cost time
            model = distributed.wrap(model, self.device, sync_buffers=not config.sync_batchnorm)
        self.model = model
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=config.lr, momentum=config.momentum,
                                         nesterov=config.nesterov, weight_decay=config.weight_decay)
        use_bf16 = config.amp == "bf16" or (config.amp == "auto" and self.device.type == "cuda")
        self.autocast = (lambda: torch.autocast(self.device.type, dtype=torch.bfloat16)) if use_bf16 else nullcontext
        self.history: list[dict] = []
        self.epoch = 0
        self.recorder = None
        if config.dynamics:
            from bionas.dynamics import DynamicsRecorder

            # the network with its auxiliary head, as the step's loss sees it (not the DDP wrapper)
            self.recorder = DynamicsRecorder.from_config(getattr(self.model, "module", self.model), config,
                                                         config.epochs, context.main)

    def _load_data(self) -> None:
        config, shard = self.config, self.context.shard
        common = dict(device=self.device, memory_format=self.memory_format, shard=shard)
        if self.dataset in STREAMED_DATASETS:
            if config.inputs == "unit":
                raise ConfigError("inputs: unit is for the in-memory datasets (CIFAR, digits); the ImageNet "
                                  "loaders normalise; drop --set inputs=unit")
            from bionas.data.imagenet import MEAN, STD, ImageFolderLoader

            root = resolve_data_dir(config.data_dir)
            if root is None:
                raise ConfigError(f"{self.dataset} needs a data directory: pass --data-dir DIR or set BIONAS_DATA")
            self.train_loader = ImageFolderLoader(root, "train", config.batch_size, True, config.seed + 1,
                                                  config.per_class, config.image_size, config.workers,
                                                  drop_last=True, **common)
            self.test_loader = ImageFolderLoader(root, "test", config.eval_batch_size * self.context.world, False,
                                                 config.seed, config.test_per_class, config.image_size,
                                                 config.workers, **common)
            self.data = DataShape(self.dataset, 3, config.image_size, len(self.train_loader.classes), MEAN, STD)
            self.sizes = (len(self.train_loader.dataset), len(self.test_loader.dataset))
        else:
            train = load_dataset(self.dataset, config.data_dir, "train", config.per_class, config.seed)
            test = load_dataset(self.dataset, config.data_dir, "test", config.test_per_class, config.seed)
            if config.inputs == "unit":  # pixels in [0, 1]: the loaders' normalisation is the identity
                train, test = (dataclasses.replace(d, mean=(0.0,) * d.channels, std=(1.0,) * d.channels)
                               for d in (train, test))
            if len(train) < config.batch_size:
                raise ConfigError(f"{len(train)} training images cannot fill one batch of {config.batch_size}; "
                                  f"lower --batch-size or raise per_class")
            cutout = min(config.cutout, train.image_size // 2)
            if cutout < config.cutout:
                log.warning("cutout %d is larger than half the %dx%d images: using %d", config.cutout,
                            train.image_size, train.image_size, cutout)
            augment = dataclasses.replace(TRAIN_AUGMENTATION[self.dataset], cutout=cutout)
            self.train_loader = BatchLoader(train, config.batch_size, augment=augment, seed=config.seed + 1,
                                            drop_last=True, **common)
            self.test_loader = BatchLoader(test, config.eval_batch_size * self.context.world, shuffle=False,
                                           augment=None, **common)
            self.data = DataShape(self.dataset, train.channels, train.image_size, train.num_classes,
                                  tuple(train.mean), tuple(train.std))
            self.sizes = (len(train), len(test))
        self.steps_per_epoch = len(self.train_loader)
        if config.steps_per_epoch is not None:
            self.steps_per_epoch = min(self.steps_per_epoch, config.steps_per_epoch)

    # --- persistence ----------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        save_checkpoint(path, CHECKPOINT_KIND, self.config, self.epoch, self.history, self.device,
                        data=dataclasses.asdict(self.data),
                        genotype=self.genotype.to_dict() if self.genotype is not None else None,
                        rules=rules.rules_in(self.net), model=self.net.state_dict(),
                        optimizer=self.optimizer.state_dict(), train_loader=self.train_loader.state_dict())

    def restore(self, state: dict) -> None:
        self.net.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.train_loader.load_state_dict(state["train_loader"])
        self.history, self.epoch = list(state["history"]), int(state["epoch"])
        restore_random_state(state["random_state"], self.device)

    # --- one epoch ------------------------------------------------------------------------------
    def loss(self, output, y):
        logits, aux = output[0].float(), (output[1].float() if output[1] is not None else None)
        loss = F.cross_entropy(logits, y, label_smoothing=self.config.label_smoothing)
        if aux is not None:
            aux_loss = F.cross_entropy(aux, y, label_smoothing=self.config.label_smoothing)
            loss = loss + self.config.auxiliary_weight * aux_loss
        return loss

    def train_epoch(self) -> dict:
        from tqdm import tqdm

        config = self.config
        lr = learning_rate(config, self.epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        drop = config.drop_path * self.epoch / config.epochs
        if hasattr(self.net, "drop_prob"):
            self.net.drop_prob = drop
        self.model.train()
        sums = torch.zeros(3, dtype=torch.float64)  # loss * images, correct, images
        bar = tqdm(total=self.steps_per_epoch, desc=f"epoch {self.epoch + 1}/{config.epochs}", leave=False,
                   disable=None if config.progress and self.context.main else True)
        start = time.perf_counter()
        heartbeat = Heartbeat(log, bar.disable and self.context.main)
        for i, (x, y) in enumerate(self.train_loader):
            if i == self.steps_per_epoch:
                break
            step = self.epoch * self.steps_per_epoch + i
            value, (logits, aux) = train_step(  # logits, aux: (B, classes), (B, classes) or None
                self.model, self.optimizer, x, y, step, loss_fn=self.loss, grad_clip=config.grad_clip,
                autocast=self.autocast, recorder=self.recorder,
                fix=f"(epoch {self.epoch + 1}) lower --set lr=... or set grad_clip "
                    f"(--resume continues from the last checkpoint)")
            correct = float((logits.detach().argmax(1) == y).sum())
            sums += torch.tensor([value * len(y), correct, len(y)], dtype=torch.float64)
            bar.update(1)
            bar.set_postfix(loss=f"{sums[0] / sums[2]:.3f}", acc=f"{sums[1] / sums[2]:.3f}", lr=f"{lr:.4g}")
            heartbeat.beat(lambda: f"epoch {self.epoch + 1}: step {i + 1}/{self.steps_per_epoch}, "
                                   f"train loss {float(sums[0] / sums[2]):.3f}")
        bar.close()
        loss_sum, correct, n = distributed.all_reduce_sum(sums.tolist(), self.device, self.context)
        return {"epoch": self.epoch + 1, "lr": lr, "drop_path": drop, "train_loss": loss_sum / n,
                "train_acc": correct / n, "images_per_second": n / (time.perf_counter() - start)}

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        """Mean cross-entropy and accuracy on the test split (eval mode; sharded over the ranks)."""
        self.net.eval()
        loss_sum, correct, n = 0.0, 0.0, 0.0
        for x, y in self.test_loader:
            with self.autocast():
                logits = self.net(x).float()
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += float((logits.argmax(1) == y).sum())
            n += len(y)
        loss_sum, correct, n = distributed.all_reduce_sum([loss_sum, correct, n], self.device, self.context)
        return loss_sum / n, correct / n


def resumed_config(state: dict, overrides: dict | None = None) -> TrainConfig:
    """The config saved in a checkpoint; ``overrides`` may only repeat it (or change ``out``,
    ``progress``, ``device``, ``workers``)."""
    saved = check(apply_options(TrainConfig(), state["config"], "the checkpoint"))
    check_resume(saved, overrides, ("progress", "out", "device", "workers"), "train")
    return saved


def run_train(config: TrainConfig, resume: bool = False, overrides: dict | None = None,
              on_epoch_end: Callable[[int], None] | None = None) -> TrainResult:
    """Train (or with ``resume``, continue) as configured; under ``torchrun``, data-parallel.

    With ``resume`` only ``config.out``/``progress``/``device`` are read: the rest comes from the
    checkpoint in ``out``, and ``overrides`` (options given on the command line) must agree with
    it. ``on_epoch_end(epoch)`` is called after each epoch's checkpoint is on disk.
    """
    if not resume:
        config = check(config)
    context = distributed.from_environment()
    out = check_output_dir(config.out) if context.main else Path(config.out)
    state = checkpoint_to_resume(out, resume, CHECKPOINT_KIND, "training run", "results.json")
    if state is not None:
        config = dataclasses.replace(resumed_config(state, overrides), out=config.out, progress=config.progress,
                                     device=config.device, workers=config.workers)
        genotype = training_genotype(config)
    else:
        genotype = training_genotype(config)  # a bad genotype fails at once, before the dataset is looked for
        # record the dataset "auto" stands for, so that config.yaml repeats this very run
        config = dataclasses.replace(config, dataset=resolve_dataset_name(config.dataset, config.data_dir))
    distributed.setup(context, distributed.device_for(config.device, context))
    try:
        return _run(config, context, genotype, out, state, on_epoch_end)
    finally:
        distributed.teardown(context)


def _run(config: TrainConfig, context: distributed.Context, genotype: Genotype | None, out: Path,
         state: dict | None, on_epoch_end: Callable[[int], None] | None) -> TrainResult:
    run = _Training(config, context, genotype)
    if state is not None:
        run.restore(state)
        log.info("resuming %s after epoch %d of %d", out, run.epoch, config.epochs)
        if run.recorder is not None:
            run.recorder.resume(out, run.epoch)
    elif context.main:
        with atomic_open(out / "config.yaml") as fh:
            yaml.safe_dump(config.to_dict(), fh, sort_keys=False)
        if run.genotype is not None:
            run.genotype.save(out / "genotype.json")
        save_json(_run_info(run), out / "run_info.json")
    if state is None and run.recorder is not None:  # the weights before training
        run.recorder.end_epoch(0, 0)
    what = f"genotype {config.genotype}" if run.genotype is not None else config.model
    log.info("training %s (%s rules) on %s: %d training / %d test images, %d steps per epoch, %d epochs, "
             "%s%s", what, "+".join(sorted(set(rules.rules_in(run.net).values()))), run.dataset, *run.sizes,
             run.steps_per_epoch, config.epochs, run.device,
             f", {context.world} processes" if context.distributed else "")

    first_epoch = run.epoch  # the logs and curves are written after each epoch; at the end only if none ran
    while run.epoch < config.epochs:
        start = time.perf_counter()
        row = run.train_epoch()
        row["test_loss"], row["test_acc"] = run.evaluate()
        row["seconds"] = time.perf_counter() - start
        run.epoch += 1
        run.history.append(row)
        log.info("epoch %d/%d: lr %.4g, train loss %.3f acc %.3f, test loss %.3f acc %.3f, %.1f s", run.epoch,
                 config.epochs, row["lr"], row["train_loss"], row["train_acc"], row["test_loss"], row["test_acc"],
                 row["seconds"])
        if run.recorder is not None:  # its rows first: a resume drops rows after the checkpoint's epoch
            run.recorder.end_epoch(run.epoch, run.epoch * run.steps_per_epoch)
            run.recorder.flush(out)
        if context.main:
            run.save(out / "checkpoint.pt")
            _write_logs(run.history, out)
        if on_epoch_end is not None:
            on_epoch_end(run.epoch)

    history = pd.DataFrame(run.history)
    test_acc = float(history["test_acc"].iloc[-1]) if len(history) else float("nan")
    if context.main:
        if run.epoch == first_epoch:
            _write_logs(run.history, out)
        save_json({"test_acc": test_acc, "test_loss": float(history["test_loss"].iloc[-1]) if len(history) else None,
                   "epochs": run.epoch, "dataset": run.dataset, "test_images": run.sizes[1],
                   "model": config.model, "genotype": config.genotype, "rule": config.rule,
                   "random_rules": config.random_rules, "seed": config.seed,
                   "train_seconds": float(history["seconds"].sum()) if len(history) else 0.0}, out / "results.json")
    return TrainResult(history, test_acc, out)


def _run_info(run: _Training) -> dict:
    layer_rules = rules.rules_in(run.net)
    aux = getattr(run.net, "auxiliary", None)
    params = sum(p.numel() for p in run.net.parameters())
    return {"bionas_version": bionas.__version__, "torch_version": torch.__version__, "device": str(run.device),
            "world_size": run.context.world, "threads": torch.get_num_threads(), "dataset": run.dataset,
            "train_images": run.sizes[0], "test_images": run.sizes[1], "steps_per_epoch": run.steps_per_epoch,
            "parameters": params,
            "parameters_without_auxiliary": params - (sum(p.numel() for p in aux.parameters()) if aux else 0),
            "rule_counts": {r: list(layer_rules.values()).count(r) for r in sorted(set(layer_rules.values()))},
            "layer_rules": layer_rules}


def _write_logs(history: list[dict], out: Path) -> None:
    frame = pd.DataFrame(history)
    save_csv(frame, out / "train_log.csv")
    plot_curves(frame, out / "curves.png")


def plot_curves(history: pd.DataFrame, path: str | Path) -> None:
    """Loss and accuracy, train and test, against the epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.5))
    for split, style in (("train", "-"), ("test", "--")):
        ax_loss.plot(history["epoch"], history[f"{split}_loss"], style, marker="o", ms=3, label=split)
        ax_acc.plot(history["epoch"], history[f"{split}_acc"], style, marker="o", ms=3, label=split)
    ax_loss.set_ylabel("cross-entropy")
    ax_acc.set_ylabel("accuracy")
    for ax in (ax_loss, ax_acc):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


__all__ = ["run_train", "TrainResult", "learning_rate", "resumed_config"]
