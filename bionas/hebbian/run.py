"""``bionas hebbian``: a Hebbian CNN trained without labels, then read out by a linear classifier.

Protocol (Hebbian-CNN paper, section 4.2):

1. *Hebbian phase* -- ``hebbian_epochs`` (1) passes over the training images (batch 64, random
   horizontal flips), all three convolutions learning at once by their local rule inside
   :func:`bionas.rules.local_updates`; no labels, no loss. Then the convolutions are frozen.
2. *Read-out* -- features of every training and test image (eval mode, cached in
   ``feature_dtype``) feed a dropout + linear classifier trained by Adam for
   ``classifier_epochs`` (lr halved every ``lr_halve_every`` epochs from ``lr_halve_from``).
   Cached features mean no flips in this phase (a documented simplification).

``learning: backprop`` trains the same network end to end instead (Adam, flips); ``learning:
none`` reads out the untrained random convolutions, the control that shows what the Hebbian
phase adds (random convolutional features are far from useless). The test split is
evaluated after every classifier epoch, as the paper does; ``results.json`` reports the last
epoch's accuracy and, separately, the best epoch's (the paper's "optimal test performance within
20 epochs", which selects on test data and so flatters every preset alike).

Outputs in ``out``: ``config.yaml``, ``run_info.json``, ``checkpoint.pt`` (the engine's
checkpoint: after phase 1 the frozen convolutions and BN statistics, which ``--resume`` reuses;
for the backprop preset the network, optimiser and history after every epoch, which ``--resume``
continues, also to more epochs), ``train_log.csv`` (per epoch), ``curves.png``, ``results.json``.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
import yaml
from torch import Tensor, nn

import bionas
from bionas import rules
from bionas.data import load_dataset
from bionas.engine import (TrainingDiverged, load_checkpoint, local_step, restore_random_state, save_checkpoint,
                           train_step)
from bionas.configs.options import check
from bionas.errors import ConfigError
from bionas.hebbian.config import HebbianConfig
from bionas.hebbian.network import HebbianCNN
from bionas.hebbian.whitening import ZCA
from bionas.io import atomic_open, check_output_dir, save_csv, save_figure, save_json
from bionas.engine import resolve_device

log = logging.getLogger(__name__)

CHECKPOINT_KIND = "hebbian"


@dataclass
class HebbianResult:
    results: dict
    history: pd.DataFrame
    out: Path

    def summary(self) -> str:
        """What the command line prints at the end."""
        r = self.results
        return (f"{r['preset']}: test acc {r['test_acc']:.4f} (best epoch {r['best_epoch']}: {r['best_test_acc']:.4f}) "
                f"on {r['test_images']} test images, {r['wall_seconds']:.0f} s")


def preprocess(train: Tensor, test: Tensor, config: HebbianConfig, mean, std) -> tuple[Tensor, Tensor]:
    """uint8 images -> float inputs: ZCA-whitened (fitted on ``train``) or mean/std normalised."""
    train, test = train.float() / 255, test.float() / 255
    if config.whiten:
        zca = ZCA.fit(train, config.zca_eps)
        return zca(train), zca(test)
    m = torch.tensor(mean)[None, :, None, None]
    s = torch.tensor(std)[None, :, None, None]
    return (train - m) / s, (test - m) / s


def _flip(x: Tensor, gen: torch.Generator) -> Tensor:
    flip = torch.rand(len(x), generator=gen) < 0.5
    return torch.where(flip[:, None, None, None].to(x.device), x.flip(3), x)


def _batches(n: int, batch_size: int, gen: torch.Generator, shuffle: bool = True):
    order = torch.randperm(n, generator=gen) if shuffle else torch.arange(n)
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size]


def _bar(total: int, desc: str, config: HebbianConfig):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, leave=False, disable=None if config.progress else True)


def moved_filters(initial: dict[str, Tensor], net: HebbianCNN, min_angle_deg: float = 1.0) -> list[float]:
    """Per convolution, the fraction of output filters whose direction moved by more than
    ``min_angle_deg`` from ``initial`` (name -> weight): the filters the local rule actually
    trained. Rescaling (``weight_norm``) does not count; a hard WTA whose few winners take every
    position shows up as a small fraction (dead filters)."""
    from bionas.dynamics import moved_fraction

    return [moved_fraction(initial[name], layer.weight, min_angle_deg) for name, layer in rules.rule_layers(net)]


def hebbian_phase(net: HebbianCNN, x: Tensor, config: HebbianConfig, device: torch.device,
                  recorder=None, out: Path | None = None) -> None:
    """Phase 1: every convolution learns by its local rule over ``hebbian_epochs`` passes;
    ``recorder`` records the weight statistics (and the share of filters moved) after each pass
    into ``out`` (the local phase has no gradients to record)."""
    if recorder is not None:
        recorder.end_epoch(0, 0)
    gen = torch.Generator().manual_seed(config.seed)
    net.train()
    for epoch in range(config.hebbian_epochs):
        bar = _bar(-(-len(x) // config.hebbian_batch_size), f"hebbian epoch {epoch + 1}/{config.hebbian_epochs}",
                   config)
        for idx in _batches(len(x), config.hebbian_batch_size, gen):
            batch = x[idx].to(device)
            local_step(net, _flip(batch, gen) if config.flip else batch, forward=net.features)
            bar.update(1)
        bar.close()
        for name, layer in rules.rule_layers(net):
            if not torch.isfinite(layer.weight).all():
                raise TrainingDiverged(f"the hebbian weights of {name} became non-finite in epoch {epoch + 1}; "
                                       f"lower the layer's lr in the preset (--set layers=...) and rerun")
        if recorder is not None:
            recorder.end_epoch(epoch + 1, (epoch + 1) * -(-len(x) // config.hebbian_batch_size))
            recorder.flush(out)


@torch.no_grad()
def extract_features(net: HebbianCNN, x: Tensor, config: HebbianConfig, device: torch.device) -> Tensor:
    """(N, feature_dim) frozen features in ``feature_dtype``, on ``device``."""
    net.eval()
    dtype = getattr(torch, config.feature_dtype)
    out = torch.empty(len(x), net.feature_dim, dtype=dtype, device=device)
    bar = _bar(-(-len(x) // config.eval_batch_size), "features", config)
    for start in range(0, len(x), config.eval_batch_size):
        batch = x[start:start + config.eval_batch_size].to(device)
        out[start:start + config.eval_batch_size] = net.features(batch).to(dtype)
        bar.update(1)
    bar.close()
    return out


def classifier_lr(config: HebbianConfig, epoch: int) -> float:
    """Epoch ``epoch`` (0-based): lr halved every ``lr_halve_every`` epochs from ``lr_halve_from``."""
    if epoch < config.lr_halve_from:
        return config.classifier_lr
    return config.classifier_lr * 0.5 ** ((epoch - config.lr_halve_from) // config.lr_halve_every + 1)


@torch.no_grad()
def _accuracy(predict, x: Tensor, y: Tensor, batch_size: int) -> float:
    correct = 0
    for start in range(0, len(x), batch_size):
        logits = predict(x[start:start + batch_size])
        correct += int((logits.argmax(1).cpu() == y[start:start + batch_size]).sum())
    return correct / len(x)


def train_readout(net: HebbianCNN, features: tuple[Tensor, Tensor], labels: tuple[Tensor, Tensor],
                  config: HebbianConfig, device: torch.device) -> list[dict]:
    """Phase 2: dropout + linear classifier on cached features; one history row per epoch."""
    (f_train, f_test), (y_train, y_test) = features, labels
    head = nn.Sequential(net.dropout, net.classifier).to(device)
    optimizer = torch.optim.Adam(head.parameters(), lr=config.classifier_lr)
    gen = torch.Generator().manual_seed(config.seed + 1)
    history = []
    for epoch in range(config.classifier_epochs):
        lr = classifier_lr(config, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_sum, correct = 0.0, 0
        for i, idx in enumerate(_batches(len(f_train), config.classifier_batch_size, gen)):
            value, logits = train_step(head, optimizer, f_train[idx.to(device)].float(), y_train[idx].to(device), i,
                                       what="classifier", fix=f"(epoch {epoch + 1}) lower --set classifier_lr=...")
            loss_sum += value * len(idx)
            correct += int((logits.detach().argmax(1).cpu() == y_train[idx]).sum())
        head.eval()
        test_acc = _accuracy(lambda f: head(f.float()), f_test, y_test, config.eval_batch_size)
        history.append({"epoch": epoch + 1, "lr": lr, "train_loss": loss_sum / len(f_train),
                        "train_acc": correct / len(f_train), "test_acc": test_acc})
        log.info("classifier epoch %d/%d: train acc %.4f, test acc %.4f", epoch + 1, config.classifier_epochs,
                 history[-1]["train_acc"], test_acc)
    return history


def train_backprop(net: HebbianCNN, x: tuple[Tensor, Tensor], y: tuple[Tensor, Tensor], config: HebbianConfig,
                   device: torch.device, state_path: Path | None = None, resume: bool = False,
                   recorder=None) -> list[dict]:
    """The same network end to end by Adam (the paper's backprop comparison).

    With ``state_path`` the network, optimiser, shuffling generator and history are saved there
    (the engine's checkpoint, atomically) after every epoch; ``resume`` continues from it, bit for
    bit as if never stopped, also to a larger ``backprop_epochs`` than the saved run was started
    with. Each history row records the epoch's ``seconds`` (training and test evaluation).
    ``recorder`` (a :class:`bionas.dynamics.DynamicsRecorder`) records the steps and writes its
    rows beside ``state_path`` before each checkpoint.
    """
    (x_train, x_test), (y_train, y_test) = x, y
    optimizer = torch.optim.Adam(net.parameters(), lr=config.backprop_lr)
    gen = torch.Generator().manual_seed(config.seed + 1)
    history = []
    if resume and state_path is not None and state_path.exists():
        state = load_checkpoint(state_path, CHECKPOINT_KIND)
        if state.get("phase") != "backprop":
            raise ConfigError(f"{state_path} holds a {state.get('phase')} phase, not backprop epochs; choose "
                              f"another --out for the backprop preset")
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        restore_random_state(state["random_state"], device)  # dropout draws from the global generators
        history = list(state["history"])
        log.info("resumed: backprop state after epoch %d loaded from %s", len(history), state_path)
    steps = -(-len(x_train) // config.classifier_batch_size)
    if recorder is not None:
        if history:
            recorder.resume(state_path.parent, len(history))
        else:
            recorder.end_epoch(0, 0)
    for epoch in range(len(history), config.backprop_epochs):
        epoch_start = time.perf_counter()
        loss_sum, correct = 0.0, 0
        bar = _bar(-(-len(x_train) // config.classifier_batch_size), f"epoch {epoch + 1}/{config.backprop_epochs}",
                   config)
        for i, idx in enumerate(_batches(len(x_train), config.classifier_batch_size, gen)):
            batch = x_train[idx].to(device)
            value, logits = train_step(net, optimizer, _flip(batch, gen) if config.flip else batch,
                                       y_train[idx].to(device), epoch * steps + i, what="backprop",
                                       fix=f"(epoch {epoch + 1}) lower --set backprop_lr=...", recorder=recorder)
            loss_sum += value * len(idx)
            correct += int((logits.detach().argmax(1).cpu() == y_train[idx]).sum())
            bar.update(1)
        bar.close()
        net.eval()
        test_acc = _accuracy(lambda b: net(b.to(device)), x_test, y_test, config.eval_batch_size)
        history.append({"epoch": epoch + 1, "lr": config.backprop_lr, "train_loss": loss_sum / len(x_train),
                        "train_acc": correct / len(x_train), "test_acc": test_acc,
                        "seconds": time.perf_counter() - epoch_start})
        log.info("backprop epoch %d/%d: train acc %.4f, test acc %.4f (%.0f s)", epoch + 1, config.backprop_epochs,
                 history[-1]["train_acc"], test_acc, history[-1]["seconds"])
        if recorder is not None:
            recorder.end_epoch(epoch + 1, (epoch + 1) * steps)
            recorder.flush(state_path.parent)
        if state_path is not None:
            save_checkpoint(state_path, CHECKPOINT_KIND, config, epoch + 1, history, device, phase="backprop",
                            model=net.state_dict(), optimizer=optimizer.state_dict(), generator=gen.get_state())
    return history


def _plot(history: pd.DataFrame, config: HebbianConfig, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(history["epoch"], history["train_acc"], label="train")
    ax.plot(history["epoch"], history["test_acc"], label="test")
    ax.set_xlabel("classifier epoch" if config.learning == "hebbian" else "epoch")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{config.preset} ({config.learning})")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, out / "curves.png")
    plt.close(fig)


def unfinished(out: str | Path) -> bool:
    """Whether ``out`` holds a run that saved progress (Hebbian layers, or a backprop epoch) but no
    results yet: ``run_hebbian(..., resume=True)`` continues it."""
    out = Path(out)
    return not (out / "results.json").exists() and (out / "checkpoint.pt").exists()


def run_hebbian(config: HebbianConfig, resume: bool = False) -> HebbianResult:
    """Run one preset end to end (see the module docstring); returns its results."""
    config = check(config).with_epochs_applied()
    out = check_output_dir(config.out)
    saved = out / "checkpoint.pt"  # phase "hebbian": the learned layers; phase "backprop": the epochs so far
    previous = None  # the results of a finished backprop run that --resume takes to more epochs
    if (out / "results.json").exists():
        if not (resume and config.learning == "backprop" and saved.exists()):
            raise ConfigError(f"{out} already holds a finished hebbian run; choose another --out (a finished "
                              f"backprop run goes on to more epochs with --resume --epochs N)")
        previous = json.loads((out / "results.json").read_text())
        done = previous["epochs"]
        if config.backprop_epochs <= done:
            raise ConfigError(f"{out} already holds {done} backprop epochs; ask for more with --resume --epochs N "
                              f"(N > {done})")
    if unfinished(out) and not resume:
        raise ConfigError(f"{out} holds an unfinished hebbian run; add --resume to continue it or choose another --out")
    if resume and not saved.exists():
        raise ConfigError(f"nothing to resume: {saved} does not exist (run without --resume to start)")
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    start_all = time.perf_counter()
    train = load_dataset(config.dataset, config.data_dir, "train", config.per_class, config.seed)
    test = load_dataset(config.dataset, config.data_dir, "test", config.test_per_class, config.seed)
    x_train, x_test = preprocess(train.images, test.images, config, train.mean, train.std)
    net = HebbianCNN(train.channels, train.num_classes, train.image_size, config).to(device)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_open(out / "config.yaml") as fh:
        yaml.safe_dump(config.to_dict(), fh, sort_keys=False)
    save_json({"bionas_version": bionas.__version__, "torch_version": torch.__version__, "device": str(device),
               "train_images": len(train), "test_images": len(test), "feature_dim": net.feature_dim,
               "parameters": sum(p.numel() for p in net.parameters())}, out / "run_info.json")
    log.info("%s (%s): %d training and %d test images, %d features, device %s", config.preset, config.learning,
             len(train), len(test), net.feature_dim, device)
    timings, extra, earlier = {}, {}, 0.0  # earlier: seconds spent by the invocations this one resumes
    recorder = None
    if config.dynamics:
        from bionas.dynamics import DynamicsRecorder

        last = config.backprop_epochs if config.learning == "backprop" else config.hebbian_epochs
        recorder = DynamicsRecorder.from_config(net, config, last)
    if config.learning in ("hebbian", "none"):
        if config.learning == "none":
            log.info("learning none: the convolutions keep their random initialisation (a control)")
        else:
            initial = {name: layer.weight.detach().cpu().clone() for name, layer in rules.rule_layers(net)}
            if resume and saved.exists():
                state = load_checkpoint(saved, CHECKPOINT_KIND)
                net.blocks.load_state_dict(state["model"])
                timings["hebbian_seconds"] = state["hebbian_seconds"]
                log.info("resumed: hebbian layers loaded from %s", saved)
            else:
                start = time.perf_counter()
                hebbian_phase(net, x_train, config, device, recorder, out)
                timings["hebbian_seconds"] = time.perf_counter() - start
                save_checkpoint(saved, CHECKPOINT_KIND, config, config.hebbian_epochs, [], device, phase="hebbian",
                                model=net.blocks.state_dict(), hebbian_seconds=timings["hebbian_seconds"])
                log.info("hebbian phase: %.1f s", timings["hebbian_seconds"])
            extra["moved_filters"] = moved_filters(initial, net)
            log.info("filters trained by the hebbian phase (direction moved > 1 degree), per layer: %s",
                     ", ".join(f"{100 * f:.1f}%" for f in extra["moved_filters"]))
        start = time.perf_counter()
        features = (extract_features(net, x_train, config, device), extract_features(net, x_test, config, device))
        timings["feature_seconds"] = time.perf_counter() - start
        start = time.perf_counter()
        history = train_readout(net, features, (train.labels, test.labels), config, device)
        timings["classifier_seconds"] = time.perf_counter() - start
    else:
        start = time.perf_counter()
        history = train_backprop(net, (x_train, x_test), (train.labels, test.labels), config, device,
                                 state_path=saved, resume=resume, recorder=recorder)
        this_call = time.perf_counter() - start
        # earlier epochs' time: the finished run's record, else the resumed rows' own seconds
        done_before = math.fsum(r["seconds"] for r in history) - this_call
        before = previous["backprop_seconds"] if previous else max(0.0, done_before)
        timings["backprop_seconds"] = before + this_call
        earlier = previous["wall_seconds"] if previous else before
    frame = pd.DataFrame(history)
    save_csv(frame, out / "train_log.csv")
    _plot(frame, config, out)
    best = int(frame["test_acc"].idxmax())
    results = {"preset": config.preset, "learning": config.learning, "test_acc": float(frame["test_acc"].iloc[-1]),
               "best_test_acc": float(frame["test_acc"].iloc[best]), "best_epoch": int(frame["epoch"].iloc[best]),
               "epochs": len(frame), "train_images": len(train), "test_images": len(test), **extra, **timings,
               "wall_seconds": time.perf_counter() - start_all + earlier}
    save_json(results, out / "results.json")
    return HebbianResult(results, frame, out)


__all__ = ["run_hebbian", "unfinished", "moved_filters", "HebbianResult", "preprocess", "hebbian_phase",
           "extract_features", "train_readout", "train_backprop", "classifier_lr"]
