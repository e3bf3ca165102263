"""What the attacks see: a network taking images in [0, 1] and returning logits, and the
gradient it hands them.

:class:`AttackModel` normalises inside, returns logits only (the auxiliary head never runs: the
network is in eval mode, which also turns drop path off), and keeps local-rule updates off.
``gradient`` selects the backward the white-box attacks differentiate through:

* ``"exact"`` -- the true input gradient (``bionas.rules.exact_gradients``): the honest
  white-box attack.
* ``"rule"`` -- each layer's own learning rule (``B`` instead of ``W``): what an attacker who
  back-propagates through the model's training path gets. Rules whose feedback changes over
  time (brSF) redraw it at every forward, as in training, so that an attack with expectation
  over transformation (APGD's ``eot_iter``) averages over the random feedback.

Forward outputs are identical in both modes (rules change only the backward).
:func:`isolated_random_state` keeps the attacks from touching any other random stream.
"""
from __future__ import annotations

import contextlib
import copy
import random
from typing import Iterator

import numpy as np
import torch
from torch import Tensor, nn

from bionas import rules
from bionas.rules.convert import rule_layers

GRADIENTS = ("exact", "rule")


class AttackModel(nn.Module):
    """``(B, C, H, W)`` images in [0, 1] -> ``(B, classes)`` logits of ``net``."""

    def __init__(self, net: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.net = net.eval()
        if hasattr(net, "drop_prob"):
            net.drop_prob = 0.0
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))
        self.gradient = "exact"
        self._layers = [layer for _, layer in rule_layers(net)]
        self.eval()

    def train(self, mode: bool = True) -> "AttackModel":
        """Always eval mode (batch-norm running statistics, no drop path, no auxiliary head):
        torchattacks calls ``model.train()`` after an attack when it found the model training."""
        return super().train(False)

    @property
    def rule_names(self) -> set[str]:
        return {layer.rule.name for layer in self._layers}

    @property
    def all_bp(self) -> bool:
        return self.rule_names <= {"bp"}

    def forward(self, x: Tensor) -> Tensor:
        x = (x - self.mean) / self.std
        if self.gradient == "exact":
            with rules.exact_gradients(self.net):
                return self.net(x)
        # rule mode: feedback that changes over time advances as in training (torchattacks puts
        # the whole model in eval mode before every attack, so the rules' own flag is set here)
        for layer in self._layers:
            layer.rule.train(True)
        try:
            return self.net(x)
        finally:
            for layer in self._layers:
                layer.rule.train(False)


@contextlib.contextmanager
def gradient_mode(model: AttackModel, gradient: str) -> Iterator[AttackModel]:
    if gradient not in GRADIENTS:
        raise ValueError(f"gradient must be one of {GRADIENTS}, got {gradient!r}")
    before = model.gradient
    model.gradient = gradient
    try:
        yield model
    finally:
        model.gradient = before


@contextlib.contextmanager
def isolated_random_state(model: nn.Module | None = None) -> Iterator[None]:
    """Run the block without changing any random stream outside it: torch's CPU and CUDA
    generators (torchattacks' APGD and Square reseed them), numpy's and Python's, and the
    model's own state (brSF draws and their counters, drop-path generators, BN buffers)."""
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    np_state, py_state = np.random.get_state(), random.getstate()
    saved = copy.deepcopy(model.state_dict()) if model is not None else None
    try:
        yield
    finally:
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        np.random.set_state(np_state)
        random.setstate(py_state)
        if model is not None:
            model.load_state_dict(saved)
