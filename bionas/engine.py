"""The training engine: the one weight-training step, evaluation, and the one checkpoint format.

Every place that trains weights -- ``bionas train`` (cell networks, ResNets), the search
strategies' weight step, the Hebbian CNN's backprop run and linear read-out, ``bionas
quickstart`` -- calls :func:`train_step` (and the Hebbian CNN's label-free phase
:func:`local_step`); these two are the only places where local learning rules (``hebbian``,
``pc``) are switched on (:func:`bionas.rules.local_updates`), so they learn in weight-training
steps and nowhere else.

Every resumable run saves one kind of checkpoint (:func:`save_checkpoint`): a dict with the
format tag, the kind of run, the package version, the resolved config, the epoch, the history,
the global random states, and whatever the run adds (model and optimiser states, data-loader and
generator states). :func:`checkpoint_to_resume` is the one resume path: a fresh run refuses an
output folder that holds a run, ``--resume`` needs a checkpoint of the same kind.
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from bionas import rules
from bionas.errors import BionasError, ConfigError


INITS = ("xavier", "torch")


def initialise_weights(model: nn.Module, init: str, generator: torch.Generator) -> None:
    """Re-draw every convolution and linear weight of ``model`` from ``generator`` (never the
    global RNG): ``"xavier"`` is Glorot-uniform (the BioNAS paper, section 3.4), ``"torch"``
    PyTorch's default (Kaiming-uniform with a = sqrt(5)); biases are zeroed either way."""
    if init not in INITS:
        raise ValueError(f"init must be one of {', '.join(INITS)}, got {init!r}")
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                if init == "xavier":
                    nn.init.xavier_uniform_(m.weight, generator=generator)
                else:
                    nn.init.kaiming_uniform_(m.weight, a=5 ** 0.5, generator=generator)
                if m.bias is not None:
                    m.bias.zero_()
        for m in model.modules():  # rules with modifiers may constrain the start (dale: non-negative)
            if isinstance(m, rules.RuleLayer) and m.rule.active_modifiers:
                m.rule.initialise(m, generator)


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when available, else the CPU) or a torch device string (``cpu``, ``cuda:1``)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device cuda was asked for but CUDA is not available; use --device cpu")
    return device


class TrainingDiverged(BionasError):
    """The loss (or the gradient norm) became NaN or infinite."""


def check_finite(loss: torch.Tensor, step: int, what: str = "training",
                 fix: str = "lower the learning rate (--lr)") -> float:
    """Return ``loss`` as a float, or raise :class:`TrainingDiverged` naming the step and ``fix``."""
    value = float(loss.detach())
    if not math.isfinite(value):
        raise TrainingDiverged(f"{what} loss became {value} at step {step}; {fix}, then rerun")
    return value


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, step: int,
               forward: Callable[[torch.Tensor], Any] | None = None,
               loss_fn: Callable[[Any, torch.Tensor], torch.Tensor] | None = None, grad_clip: float = 0.0,
               parameters=None, autocast: Callable = nullcontext, local: bool = True, what: str = "training",
               fix: str = "lower the learning rate (--lr)",
               sync_gradients: Callable[[list[torch.Tensor]], None] | None = None,
               recorder=None) -> tuple[float, Any]:
    """One optimiser step on a batch; returns (loss, the model's output).

    ``forward(x)`` (default ``model(x)``; the supernet's weight step passes its fixed mixing
    weights this way) runs with ``model`` in training mode, under ``autocast()``, with local-rule
    updates switched on (``local``; layers of other rules ignore it); ``loss_fn(output, y)`` defaults to the
    cross-entropy. Gradients of ``parameters`` (default: the optimiser's) are clipped to global
    norm ``grad_clip`` (0: no clipping; the norm is still computed, to catch divergence). A
    non-finite loss or gradient norm raises :class:`TrainingDiverged` naming ``step`` and
    ``fix`` before the optimiser moves, so the last checkpoint stays the last good state.
    ``sync_gradients(parameters)``, when given, runs between the backward and the clipping and
    may replace the parameters' ``.grad`` (the data-parallel search averages them over the ranks
    there; training lets DDP do it during the backward). ``recorder`` (a
    :class:`bionas.dynamics.DynamicsRecorder`) sees the step: on its alignment steps an exact
    pass on the same batch first, then the gradients the optimiser receives (before clipping).
    """
    loss_fn = loss_fn if loss_fn is not None else F.cross_entropy
    if recorder is not None and recorder.due(step):
        recorder.exact_pass(x, y, forward, loss_fn, autocast)
    model.train()
    perturbed_layers = rules.perturbation_layers(model) if local else []
    if perturbed_layers:  # weight perturbation: the loss with every wp layer's weights perturbed
        loss_perturbed, noises = _perturbed_loss(model, perturbed_layers, x, y, forward, loss_fn, autocast)
    with autocast(), rules.local_updates(model, local), \
            (recorder.step_context(step) if recorder is not None else nullcontext()):
        out = model(x) if forward is None else forward(x)
    loss = loss_fn(out, y)
    optimizer.zero_grad(set_to_none=True)
    if loss.requires_grad:  # a network whose every layer learns locally has nothing to back-propagate
        loss.backward()
    if parameters is None:
        parameters = [p for group in optimizer.param_groups for p in group["params"]]
    if sync_gradients is not None:
        sync_gradients(parameters)
    if recorder is not None:
        recorder.after_backward(step)
    # under DDP the all-reduced gradient norm is the same on every rank, so all ranks stop together
    norm = float(nn.utils.clip_grad_norm_(parameters, grad_clip or math.inf))
    value = float(loss.detach())
    if not (math.isfinite(value) and math.isfinite(norm)):
        raise TrainingDiverged(f"{what} loss became {value} (gradient norm {norm}) at step {step}; {fix}, then rerun")
    rules.before_optimizer_step(model)  # rule modifiers: bcm_lr gates the gradients
    optimizer.step()
    rules.after_optimizer_step(model)  # dale clamps the stepped weights
    if perturbed_layers:
        change = (loss_perturbed - loss.detach()).double()
        if _distributed():  # the global batch's loss difference: the mean of the ranks' (equal shards)
            import torch.distributed as dist

            dist.all_reduce(change)
            change /= dist.get_world_size()
        for layer, xi in zip(perturbed_layers, noises):
            layer.rule.apply(layer, xi, float(change))
    return value, out


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@contextmanager
def preserved_random_state(model: nn.Module) -> Iterator[None]:
    """Forward passes inside the block leave every random stream as it was: torch's global CPU
    (and CUDA) generator and the generators the model's modules own (drop path's masks), so the
    step after the block draws the same masks as without it."""
    devices = [p.device for p in model.parameters() if p.device.type == "cuda"][:1]
    cpu_state = torch.get_rng_state()
    cuda_state = torch.cuda.get_rng_state(devices[0]) if devices else None
    generators = {id(g): g for m in model.modules() for g in vars(m).values() if isinstance(g, torch.Generator)}
    own_states = [(g, g.get_state()) for g in generators.values()]
    try:
        yield
    finally:
        torch.set_rng_state(cpu_state)
        for g, state in own_states:
            g.set_state(state)
        if cuda_state is not None:
            torch.cuda.set_rng_state(cuda_state, devices[0])


def _perturbed_loss(model, layers, x, y, forward, loss_fn, autocast) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``E_pert`` for weight perturbation (:mod:`bionas.rules.wp`): one forward without gradients
    on the step's batch with the wp layers perturbed, before the step's own forward, with the same
    random masks, batch-norm statistics and feedback draws left as they were and local updates off
    (so every other weight is the one the step's forward will use)."""
    with torch.no_grad(), preserved_random_state(model), preserved_batchnorm_statistics(model), \
            rules.no_feedback_redraws(model), rules.local_updates(model, False), rules.perturbed(layers) as noises:
        with autocast():
            out = model(x) if forward is None else forward(x)
        return loss_fn(out, y).detach(), noises


@contextmanager
def preserved_batchnorm_statistics(model: nn.Module) -> Iterator[None]:
    """Run forward passes in training mode without changing any BatchNorm running statistics.

    Architecture steps, candidate scoring and the dynamics recorder's exact pass run networks on
    validation data, at virtual weights that are never kept (the unrolled ``w'`` and
    ``w +- eps v``) or a second time on a batch; their batches must not leak into the statistics
    that evaluation later uses.
    """
    saved = [(buf, buf.clone()) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
             for buf in (m.running_mean, m.running_var, m.num_batches_tracked) if buf is not None]
    try:
        yield
    finally:
        with torch.no_grad():
            for buf, copy in saved:
                buf.copy_(copy)


class Heartbeat:
    """A log line every ``seconds`` while a loop runs without a progress bar (stderr redirected,
    ``--no-progress``), so that a long epoch is not silent."""

    def __init__(self, logger, enabled: bool, seconds: float = 60.0):
        self.logger, self.enabled, self.seconds = logger, enabled, seconds
        self._clock = time.perf_counter
        self._last = self._clock()

    def beat(self, message: Callable[[], str]) -> None:
        if self.enabled and self._clock() - self._last >= self.seconds:
            self.logger.info("%s", message())
            self._last = self._clock()


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    """The share of rows of ``logits`` (B, classes) whose argmax is the label ``y`` (B,)."""
    return float((logits.detach().argmax(1) == y).float().mean())


@torch.no_grad()
def local_step(model: nn.Module, x: torch.Tensor, forward: Callable[[torch.Tensor], Any] | None = None) -> Any:
    """One forward pass in training mode, without gradients, in which the local rules (``hebbian``,
    ``pc``) update their weights: unsupervised learning with no loss and no optimiser (the Hebbian
    CNN's phase 1). ``forward(x)`` defaults to ``model(x)``."""
    model.train()
    with rules.local_updates(model):
        return model(x) if forward is None else forward(x)


@torch.no_grad()
def evaluate(model: nn.Module, loader) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over a loader, in eval mode (mode restored after)."""
    was_training = model.training
    model.eval()
    total_loss, correct, n = 0.0, 0, 0
    for x, y in loader:
        logits = model(x)
        total_loss += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
        n += len(y)
    model.train(was_training)
    return total_loss / max(n, 1), correct / max(n, 1)


# --- checkpoints ------------------------------------------------------------------------------
CHECKPOINT_FORMAT = "bionas-checkpoint/1"


def random_state(device: torch.device | None = None) -> dict:
    """The global random states a run draws from (torch's CPU generator, and CUDA's on a GPU)."""
    state = {"torch": torch.get_rng_state()}
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_random_state(state: dict, device: torch.device | None = None) -> None:
    torch.set_rng_state(state["torch"])
    if device is not None and device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def save_checkpoint(path: str | Path, kind: str, config, epoch: int, history: list, device=None, **state) -> None:
    """Write the checkpoint of a ``kind`` run (``search``, ``train``, ``hebbian``) atomically."""
    import bionas
    from bionas.io import save_torch

    save_torch({"format": CHECKPOINT_FORMAT, "kind": kind, "bionas_version": bionas.__version__,
                "config": config.to_dict(), "epoch": epoch, "history": list(history),
                "random_state": random_state(device), **state}, path)


def load_checkpoint(path: str | Path, kind: str) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` for a ``kind`` run; a missing,
    truncated or foreign file is a one-line error naming it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(f"{path} cannot be read as a checkpoint ({reason}): it is truncated or not a "
                          f"bionas checkpoint; rerun the run that wrote it") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT or state.get("kind") != kind:
        found = state.get("kind") if isinstance(state, dict) and state.get("format") == CHECKPOINT_FORMAT else None
        which = f" (it is a {found} checkpoint)" if found else ""
        raise ConfigError(f"{path} is not a bionas {kind} checkpoint{which}")
    return state


def checkpoint_to_resume(out: str | Path, resume: bool, kind: str, what: str, finished: str) -> dict | None:
    """The checkpoint in ``out`` to resume from, or ``None`` for a fresh run.

    A fresh run refuses an ``out`` that already holds a run (its ``checkpoint.pt`` or its
    ``finished`` file), so results are never overwritten; ``resume`` needs a ``kind`` checkpoint.
    ``what`` names the kind of run in the errors ("search", "training run").
    """
    out = Path(out)
    path = out / "checkpoint.pt"
    if resume:
        if not path.is_file():
            raise ConfigError(f"nothing to resume: {path} does not exist (run without --resume to start)")
        return load_checkpoint(path, kind)
    found = [name for name in ("checkpoint.pt", finished) if (out / name).exists()]
    if found:
        raise ConfigError(f"{out} already holds a run ({', '.join(found)}); choose another --out, or pass --resume "
                          f"to continue it if it is an unfinished {what}")
    return None
