"""Minimal training and evaluation steps shared by the commands."""
from __future__ import annotations

import math

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
    """The loss became NaN or infinite."""


def check_finite(loss: torch.Tensor, step: int, what: str = "training",
                 fix: str = "lower the learning rate (--lr)") -> float:
    """Return ``loss`` as a float, or raise :class:`TrainingDiverged` naming the step and ``fix``
    (a command with more remedies, such as gradient clipping, passes its own)."""
    value = float(loss.detach())
    if not math.isfinite(value):
        raise TrainingDiverged(f"{what} loss became {value} at step {step}; {fix}, then rerun")
    return value


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               step: int, grad_clip: float | None = None) -> tuple[float, float]:
    """One SGD step on a batch; returns (loss, accuracy). Local rules (hebbian, pc) update
    their weights during this step's forward, and only here."""
    model.train()
    with rules.local_updates(model):
        logits = model(x)  # (B, classes)
    loss = F.cross_entropy(logits, y)
    value = check_finite(loss, step)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return value, float((logits.argmax(1) == y).float().mean())


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
