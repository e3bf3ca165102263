"""One loop drives every search strategy: data, supernet, epochs, logs, checkpoints, plots.

Outputs in ``config.out`` (every file written atomically):

* ``config.yaml`` -- the resolved config (``bionas search --config`` repeats the run);
* ``run_info.json`` -- versions, device, dataset sizes, supernet shape and size;
* ``checkpoint.pt`` -- after every epoch: supernet, strategy (optimisers, schedules), data
  streams, history; ``resume=True`` continues from it and, on the same device, ends exactly where
  an uninterrupted run would;
* ``search_log.csv`` -- per epoch: losses and accuracies, learning rate, seconds, the genotype of
  the moment (as a DARTS literal);
* ``arch_history.json`` -- per epoch (0 = before training): the genotype and the mixing weights;
* at the end: ``genotype.json`` (the result, with final mixing weights), ``genotype.txt`` (DARTS
  literal), ``mixing_weights.png`` and ``cells.png``;
* whatever the strategy adds (``eg``: ``fitness.csv`` and ``fitness.png`` per CMA-ES generation).

Data-parallel under ``torchrun --nproc_per_node N -m bionas search ...``: ``batch_size`` is the
global batch; each rank draws its share of every weight and architecture batch (the loaders'
``shard``), every gradient a strategy takes is averaged over the ranks and batch norm runs over
the global batch (:mod:`bionas.distributed`), so N processes compute what one process computes
on the same global batches; after every epoch the ranks check that their weights and logits
agree. Only rank 0 writes files.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd
import torch
import yaml

import bionas
from bionas import distributed
from bionas.data import TRAIN_AUGMENTATION, BatchLoader, BatchStream, load_dataset, resolve_dataset_name, search_split
from bionas.engine import Heartbeat, checkpoint_to_resume, restore_random_state, save_checkpoint
from bionas.errors import ConfigError
from bionas.io import atomic_open, check_output_dir, save_csv, save_json
from bionas.configs.options import check, check_resume
from bionas.search.config import SearchConfig, apply_options
from bionas.genotype import Genotype
from bionas.space import load_space
from bionas.search.strategy import STRATEGIES, evaluate_supernet
from bionas.search.supernet import Supernet

log = logging.getLogger(__name__)

CHECKPOINT_KIND = "search"


@dataclass
class SearchResult:
    genotype: Genotype
    history: pd.DataFrame  # one row per epoch
    out: Path
    main: bool = True  # False on the ranks of a data-parallel run other than 0

    def summary(self) -> str:
        """What the command line prints at the end (rank 0 only under torchrun)."""
        if not self.main:
            return ""
        lines = []
        if len(self.history):
            last = self.history.iloc[-1]
            lines.append(f"searched {len(self.history)} epochs: final train acc {last['train_acc']:.3f}, "
                         f"val acc {last['val_acc']:.3f}, {self.history['seconds'].sum():.0f} s in all")
        return "\n".join([*lines, f"genotype: {self.genotype.to_darts_literal()}"])


class _Search:
    """Everything one search holds, built from a config (and a checkpoint when resuming)."""

    def __init__(self, config: SearchConfig, context: distributed.Context = distributed.Context()):
        self.config, self.context = config, context
        self.device = distributed.device_for(config.device, context)
        self.space = load_space(config.space)
        shape = self.space.supernet
        overrides = {k: getattr(config, k) for k in ("channels", "cells") if getattr(config, k) is not None}
        self.shape = dataclasses.replace(shape, **overrides) if overrides else shape
        self.dataset = resolve_dataset_name(config.dataset, config.data_dir)
        data = load_dataset(self.dataset, config.data_dir, "train", config.per_class, config.seed)
        weight_idx, arch_idx = search_split(len(data), config.seed, config.train_portion)
        self.train_data, self.val_data = data.subset(weight_idx), data.subset(arch_idx)
        for what, part in (("weight", self.train_data), ("architecture", self.val_data)):
            if len(part) < config.batch_size:
                raise ConfigError(f"the {what} half holds {len(part)} images, fewer than one batch of "
                                  f"{config.batch_size}; lower --batch-size or raise per_class")
        augment = TRAIN_AUGMENTATION[self.dataset] if config.augment else None
        self.memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        self.train_stream = BatchStream(BatchLoader(self.train_data, config.batch_size, augment=augment,
                                                    seed=config.seed + 1, device=self.device,
                                                    memory_format=self.memory_format, shard=context.shard))
        # the architecture's batches come from a persistent iterator over the other half (DARTS)
        self.val_stream = BatchStream(BatchLoader(self.val_data, config.batch_size, augment=augment,
                                                  seed=config.seed + 2, device=self.device,
                                                  memory_format=self.memory_format, shard=context.shard))
        self.steps_per_epoch = self.train_stream.batches_per_pass
        if config.steps_per_epoch is not None:
            self.steps_per_epoch = min(self.steps_per_epoch, config.steps_per_epoch)

        torch.manual_seed(config.seed)  # nothing should draw from it, but keep any stray use repeatable
        self.model = Supernet(self.space, data.channels, data.num_classes, seed=config.seed, shape=self.shape,
                              rule_options=config.rule_options, init=config.init,
                              partial_channels=config.partial_channels,
                              checkpoint_cells=config.checkpoint_cells).to(self.device)
        self.model = self.model.to(memory_format=self.memory_format)
        self.strategy = STRATEGIES.get(config.method)(self.model, config, context)
        if config.dynamics:
            from bionas.dynamics import DynamicsRecorder

            self.strategy.recorder = DynamicsRecorder.from_config(self.model, config, config.epochs, context.main)
        self.history: list[dict] = []
        self.arch_history: list[dict] = []
        self.epoch = 0

    # --- persistence ----------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        save_checkpoint(path, CHECKPOINT_KIND, self.config, self.epoch, self.history, self.device,
                        model=self.model.state_dict(), strategy=self.strategy.state_dict(),
                        train_stream=self.train_stream.state_dict(), val_stream=self.val_stream.state_dict(),
                        arch_history=self.arch_history)

    def restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.strategy.load_state_dict(state["strategy"])
        self.train_stream.load_state_dict(state["train_stream"])
        self.val_stream.load_state_dict(state["val_stream"])
        self.history, self.arch_history = list(state["history"]), list(state["arch_history"])
        self.epoch = int(state["epoch"])
        restore_random_state(state["random_state"], self.device)

    def record_architecture(self) -> Genotype:
        genotype = self.strategy.derive()
        self.arch_history.append({"epoch": self.epoch, "genotype": genotype.to_dict()})
        return genotype


def resumed_config(state: dict, overrides: dict | None = None) -> SearchConfig:
    """The config saved in a checkpoint; ``overrides`` may only repeat it (or change ``progress``/``out``)."""
    saved = apply_options(SearchConfig(), state["config"], "the checkpoint")
    check_resume(saved, overrides, ("progress", "out"), "search")
    return saved


def run_search(config: SearchConfig, resume: bool = False, overrides: dict | None = None,
               on_epoch_end: Callable[[int], None] | None = None) -> SearchResult:
    """Run (or with ``resume``, continue) a search as configured; returns the derived genotype.

    With ``resume`` only ``config.out`` and ``config.progress`` are read: the rest comes from the
    checkpoint in ``out``, and ``overrides`` (options given on the command line) must agree with
    it. ``on_epoch_end(epoch)`` is called after each epoch's checkpoint is on disk (tests use it
    to interrupt a run).
    """
    config = check(config)
    context = distributed.from_environment()
    out = check_output_dir(config.out) if context.main else Path(config.out)
    state = checkpoint_to_resume(out, resume, CHECKPOINT_KIND, "search", "genotype.json")
    if state is not None:
        config = dataclasses.replace(resumed_config(state, overrides), out=config.out, progress=config.progress)
    else:  # record the dataset "auto" stands for, so that config.yaml repeats this very run
        config = dataclasses.replace(config, dataset=resolve_dataset_name(config.dataset, config.data_dir))
    distributed.check_batch(config.batch_size, context)
    distributed.setup(context, distributed.device_for(config.device, context))
    try:
        return _search(config, context, state, out, on_epoch_end)
    finally:
        distributed.teardown(context)


def _search(config: SearchConfig, context: distributed.Context, state: dict | None, out: Path,
            on_epoch_end: Callable[[int], None] | None) -> SearchResult:
    search = _Search(config, context)
    if state is not None:
        search.restore(state)
        log.info("resuming %s after epoch %d of %d", out, search.epoch, config.epochs)
        if search.strategy.recorder is not None:
            search.strategy.recorder.resume(out, search.epoch)
    else:  # epoch 0: the mixing weights before any training (and proof that the space yields a genotype)
        search.record_architecture()
    if state is None and context.main:  # every input checked: record the run
        with atomic_open(out / "config.yaml") as fh:
            yaml.safe_dump(config.to_dict(), fh, sort_keys=False)
        save_json({"bionas_version": bionas.__version__, "torch_version": torch.__version__,
                   "device": str(search.device), "world_size": context.world, "threads": torch.get_num_threads(),
                   "dataset": search.dataset,
                   "weight_images": len(search.train_data), "architecture_images": len(search.val_data),
                   "steps_per_epoch": search.steps_per_epoch, "candidates": [str(c) for c in search.space.candidates],
                   "supernet": dataclasses.asdict(search.shape),
                   "weights": sum(p.numel() for p in search.model.weight_parameters())}, out / "run_info.json")
    if state is None and search.strategy.recorder is not None:
        search.strategy.recorder.end_epoch(0, 0)
    log.info("%s search over space %r (%d candidates per edge, %d cells of %d channels) on %s: %d + %d images, "
             "%d steps per epoch, %d epochs, %s%s", config.method, search.space.name, len(search.space),
             search.shape.cells, search.shape.channels, search.dataset, len(search.train_data), len(search.val_data),
             search.steps_per_epoch, config.epochs, search.device,
             f", {context.world} processes" if context.distributed else "")

    while search.epoch < config.epochs:
        _run_epoch(search)
        distributed.check_in_step(list(search.model.parameters()), context, "supernet weights and logits")
        if search.strategy.recorder is not None:  # its rows first: a resume drops rows after the checkpoint's
            search.strategy.recorder.end_epoch(search.epoch, search.epoch * search.steps_per_epoch)
            search.strategy.recorder.flush(out)
        if context.main:
            search.save(out / "checkpoint.pt")
            _write_logs(search, out)
        if on_epoch_end is not None:
            on_epoch_end(search.epoch)

    genotype = search.strategy.derive()
    if not context.main:
        return SearchResult(genotype, pd.DataFrame(search.history), out, main=False)
    genotype.save(out / "genotype.json")
    with atomic_open(out / "genotype.txt") as fh:
        fh.write(genotype.to_darts_literal() + "\n")
    _write_logs(search, out)
    from bionas.search import plots

    plots.plot_mixing_weights(search.arch_history, out / "mixing_weights.png")
    plots.draw_cells(genotype, out / "cells.png")
    return SearchResult(genotype, pd.DataFrame(search.history), out)


def _run_epoch(search: _Search) -> None:
    from tqdm import tqdm

    config, strategy = search.config, search.strategy
    epoch = search.epoch + 1
    lr = strategy.lr
    start = time.perf_counter()
    sums: dict[str, float] = {}
    bar = tqdm(range(search.steps_per_epoch), desc=f"epoch {epoch}/{config.epochs}", leave=False,
               disable=None if config.progress and search.context.main else True)
    heartbeat = Heartbeat(log, bar.disable and search.context.main)
    for i in bar:
        step = search.epoch * search.steps_per_epoch + i
        metrics = strategy.step(next(search.train_stream), next(search.val_stream), step)
        for k, v in metrics.items():
            sums[k] = sums.get(k, 0.0) + v
        bar.set_postfix({k: f"{v / (i + 1):.3f}" for k, v in sums.items()})
        heartbeat.beat(lambda: f"epoch {epoch}: step {i + 1}/{search.steps_per_epoch}, "
                               + ", ".join(f"{k} {v / (i + 1):.3f}" for k, v in sums.items()))
    bar.close()
    strategy.end_epoch()
    search.epoch = epoch
    if search.context.distributed:  # each rank's metrics are of its share of the batches
        keys = sorted(sums)
        reduced = distributed.all_reduce_sum([sums[k] for k in keys], search.device, search.context)
        sums = {k: v / search.context.world for k, v in zip(keys, reduced)}
    means = {k: v / search.steps_per_epoch for k, v in sums.items()}
    val_loss, val_acc = evaluate_supernet(search.model, _eval_loader(search), search.context)
    genotype = search.record_architecture()
    row = {"epoch": epoch, "lr": lr, "train_loss": means.get("loss"), "train_acc": means.get("acc"),
           **{k: v for k, v in means.items() if k not in ("loss", "acc")},
           "val_loss": val_loss, "val_acc": val_acc, "seconds": time.perf_counter() - start,
           "mixing_entropy": mixing_entropy(search.model), "genotype": genotype.to_darts_literal()}
    search.history.append(row)
    log.info("epoch %d/%d: train loss %.3f acc %.3f, val loss %.3f acc %.3f, lr %.4f, %.1f s", epoch,
             config.epochs, row["train_loss"], row["train_acc"], val_loss, val_acc, lr, row["seconds"])
    log.info("epoch %d genotype: %s", epoch, row["genotype"])


@torch.no_grad()
def mixing_entropy(model: Supernet) -> float:
    """Mean over the edges of both cells of the entropy of the candidate mixture, divided by
    ``log(candidates)``: 1 for the uniform start, 0 when every edge has settled on one candidate."""
    weights = torch.cat(model.mixing_weights()[:2]).double()  # (2 E, K)
    entropy = -(weights * weights.clamp_min(1e-300).log()).sum(-1) / math.log(weights.shape[-1])
    return float(entropy.mean())


def _eval_loader(search: _Search):
    """The whole architecture half, unaugmented (DARTS ``infer``; evaluated with batch statistics;
    under torchrun each rank sees its share of every batch)."""
    world = search.context.world
    batch = -(-max(search.config.batch_size, 256) // world) * world  # divisible by the ranks
    return BatchLoader(search.val_data, batch, shuffle=False, device=search.device,
                       memory_format=search.memory_format, shard=search.context.shard)


def _write_logs(search: _Search, out: Path) -> None:
    search.strategy.write_outputs(out)
    save_csv(pd.DataFrame(search.history), out / "search_log.csv")
    save_json({"candidates": [str(c) for c in search.space.candidates], "epochs": search.arch_history},
              out / "arch_history.json")


__all__ = ["run_search", "SearchResult", "resumed_config"]
