"""Search strategies: interchangeable plug-ins that move a supernet's architecture logits.

A strategy never builds or edits the network; it receives a :class:`~bionas.search.supernet.Supernet`
and a config, and one loop (:func:`bionas.search.run.run_search`) drives every strategy through

* :meth:`SearchStrategy.step` -- one search step on a training batch and a validation batch;
* :meth:`SearchStrategy.end_epoch` -- once per epoch (learning-rate schedules, ...);
* :meth:`SearchStrategy.derive` -- the genotype of the moment;
* :meth:`SearchStrategy.state_dict` / :meth:`load_state_dict` -- everything needed to resume.

``config.amp == "bf16"`` gives every strategy ``self.autocast``, a bf16 autocast context for
its forward passes (the weight step uses it; a strategy decides where else it is safe).

The base class trains the weights the same way for every strategy (SGD with Nesterov momentum,
cosine schedule, gradient clipping: BioNAS appendix 7.1); a subclass implements
:meth:`update_architecture` and declares its own options as a dataclass in ``Options`` (fields
made with :func:`bionas.configs.options.option`, so they are checked like every config field).
Register a new strategy with ``@STRATEGIES.register("name")``, which also sets its ``name``.
"""
from __future__ import annotations

import dataclasses
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bionas import distributed, rules
from bionas.configs.options import apply_options, check
from bionas.engine import accuracy, preserved_batchnorm_statistics, train_step
from bionas.registry import Registry
from bionas.genotype import Genotype

STRATEGIES: Registry[type["SearchStrategy"]] = Registry("search method")

Batch = tuple[Tensor, Tensor]  # images (B, C, H, W), labels (B,)

DIVERGED_FIX = "lower --lr or --set arch_lr=..., or keep --set grad_clip=5"


no_feedback_redraws = rules.no_feedback_redraws  # re-exported: the search strategies use it


@dataclasses.dataclass
class NoOptions:
    """A strategy without options of its own."""


class SearchStrategy:
    """Base of all strategies: owns the weight optimiser and its schedule.

    Args:
        model: the supernet (its architecture logits are left to the subclass).
        config: a :class:`~bionas.search.config.SearchConfig`; the strategy's own options are
            ``self.options``, an instance of its ``Options`` dataclass.
    """

    name = ""  # set by STRATEGIES.register
    Options: type = NoOptions

    @classmethod
    def options_from(cls, mapping: dict):
        """``cls.Options`` from a mapping of option values, checked; unknown keys are errors."""
        return check(apply_options(cls.Options(), mapping, f"strategy_options.{cls.name}", f"{cls.name} strategy"))

    def __init__(self, model, config, context: distributed.Context = distributed.Context()):
        self.model, self.config, self.context = model, config, context
        self.options = config.options_for(self.name)
        self.weight_optimizer = torch.optim.SGD(
            list(model.weight_parameters()), lr=config.lr, momentum=config.momentum,
            nesterov=config.nesterov and config.momentum > 0, weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.weight_optimizer, T_max=config.epochs, eta_min=config.lr_min)
        self.epoch = 0
        self.recorder = None  # a bionas.dynamics.DynamicsRecorder, set by the search loop
        device = next(model.parameters()).device
        self.autocast = ((lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if config.amp == "bf16"
                         else nullcontext)

    @property
    def lr(self) -> float:
        return self.weight_optimizer.param_groups[0]["lr"]

    # --- the loop's interface -------------------------------------------------------------------
    def step(self, train_batch: Batch, val_batch: Batch, step: int) -> dict[str, float]:
        """One search step: the architecture moves (on ``val_batch``), then the weights (on ``train_batch``)."""
        metrics = self.update_architecture(train_batch, val_batch, step)
        metrics.update(self.train_weights(train_batch, step))
        return metrics

    def update_architecture(self, train_batch: Batch, val_batch: Batch, step: int) -> dict[str, float]:
        raise NotImplementedError

    def end_epoch(self) -> None:
        self.scheduler.step()
        self.epoch += 1

    def derive(self) -> Genotype:
        return self.model.genotype()

    def write_outputs(self, out) -> None:
        """Write strategy-specific outputs (tables, plots) into the run directory ``out``."""

    def state_dict(self) -> dict:
        return {"weight_optimizer": self.weight_optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.weight_optimizer.load_state_dict(state["weight_optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch = int(state["epoch"])

    # --- shared pieces --------------------------------------------------------------------------
    def train_weights(self, batch: Batch, step: int) -> dict[str, float]:
        """One SGD step of the weights under the current mixing weights (held constant)."""
        x, y = batch
        weights = tuple(w.detach() for w in self.model.mixing_weights())
        value, logits = train_step(self.model, self.weight_optimizer, x, y, step,
                                   forward=lambda images: self.model(images, weights),  # (B, classes)
                                   grad_clip=self.config.grad_clip, what="search weight", fix=DIVERGED_FIX,
                                   autocast=self.autocast, recorder=self.recorder,
                                   sync_gradients=self.average_parameter_gradients if self.context.distributed
                                   else None)
        return {"loss": value, "acc": accuracy(logits, y)}

    def average_gradients(self, grads: list[Tensor | None]) -> list[Tensor | None]:
        """The mean over the ranks of each gradient (unchanged in one process): each rank holds
        the gradient of its share of the global batch (:func:`bionas.distributed.average_gradients`)."""
        return distributed.average_gradients(list(grads), self.context)

    def average_parameter_gradients(self, parameters) -> None:
        """``p.grad`` <- the mean over the ranks, for every parameter with a gradient."""
        parameters = [p for p in parameters if p.grad is not None]
        for p, g in zip(parameters, self.average_gradients([p.grad for p in parameters])):
            p.grad = g


@torch.no_grad()
def evaluate_supernet(model: nn.Module, batches,
                      context: distributed.Context = distributed.Context()) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of the supernet under its current mixing weights, with
    batch statistics -- as the architecture steps see it -- and no trace left behind (running
    statistics, random feedback draws and training mode are restored). Under ``torchrun`` each
    rank passes its share of every batch and the sums are added over the ranks.

    A supernet's running statistics are a poor basis for evaluation: they average over a mixture
    that keeps moving and lag far behind it (results/README.md has the measurement).
    """
    was_training = model.training
    model.train()
    total_loss, correct, n = 0.0, 0, 0
    with preserved_batchnorm_statistics(model), no_feedback_redraws(model):
        for x, y in batches:
            logits = model(x)  # (B, classes)
            total_loss += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
            n += len(y)
    model.train(was_training)
    total_loss, correct, n = distributed.all_reduce_sum([total_loss, correct, n], next(model.parameters()).device,
                                                        context)
    return total_loss / max(n, 1), correct / max(n, 1)
