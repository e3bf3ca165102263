"""Learning dynamics recorded during training: gradient noise, feedback alignment, weight statistics.

A :class:`DynamicsRecorder` watches every convolution and linear layer of a model (rule-aware
layers under their rule's name, plain layers as ``bp``) through the one weight step,
:func:`bionas.engine.train_step`, and writes two tidy long-format CSVs into the run folder:

``dynamics.csv`` -- columns ``step, epoch, metric, layer, rule, value``; ``layer`` is a layer's
name, ``(rule) NAME`` for the sum over the layers of a rule, or ``(all)`` for the whole model:

* **gradient statistics** over a window of ``every`` consecutive steps (and the rest of an
  epoch), of each layer's weight gradient ``g_t`` as the optimiser receives it (before clipping):

  - ``grad_variance``: ``tr(Sigma) = n / (n - 1) * (mean_t ||g_t||^2 - ||mean_t g_t||^2)``, the
    summed per-element variance of the gradient across the window's mini-batches;
  - ``grad_sq_norm``: ``mean_t ||g_t||^2``; ``grad_mean_sq_norm``: ``||mean_t g_t||^2``;
  - ``grad_snr``: the gradient's signal-to-noise ratio per mini-batch, ``||E g||^2 / tr(Sigma)``,
    the reciprocal of the "simple noise scale" ``B_simple`` (per mini-batch) of McCandlish,
    Kaplan, Amodei et al. (2018), "An Empirical Model of Large-Batch Training", section 2.2 and
    appendix A. Its numerator is estimated without bias as ``||mean_t g_t||^2 - tr(Sigma) / n``
    (``E ||mean_t g_t||^2 = ||E g||^2 + tr(Sigma) / n`` for ``n`` independent mini-batches), so
    windows of different length (a full window and an epoch's rest) estimate the same number,
    and a window in which the gradient's mean is not resolved reads about 0. Successive steps
    are not independent draws: where their gradients are anti-correlated (a descent that
    oscillates across a valley) it reads below 0, where they drift together above. Keep
    ``every`` short against the learning-rate schedule;
  - ``noise_ratio``: ``tr(Sigma) / ||mean_t g_t||^2``, the plug-in noise scale. Its denominator
    carries the bias ``tr(Sigma) / n``, so it cannot exceed about ``n``: where the signal is
    small it measures the window's length, not the gradient (kept for comparison with older
    runs; read ``grad_snr``);
  - ``grad_window_steps``: the window's ``n`` (``(all)`` rows only);
  - ``grad_variance_per_weight``: ``tr(Sigma) / numel``, comparable across models of other sizes.

  The BioNAS paper (section 4.3, Figure 3) shows "gradient variance" without defining it; this
  is the definition used here, and ``(all)`` rows make its comparison -- the searched cell with
  its mixed rules against the same cell with one rule -- readable run against run.
* **alignment** every ``every`` steps, from one extra forward and backward on the same batch
  in exact mode (:func:`bionas.rules.exact_gradients`, the true gradient), before the step:

  - ``input_error_angle``: the angle (degrees) between the error the layer sends to its input
    under the rules (``B^T delta`` for a feedback rule, with every layer above under its own
    rule) and the true back-propagated error at the same place;
  - ``update_angle``: the angle between the layer's weight gradient under the rules and the
    true gradient of the loss for that weight.

  ``bp`` layers read 0 (up to rounding) wherever every layer above them is ``bp``; layers whose
  input carries no gradient (the first) have no input error. The extra pass draws no random
  feedback, restores the random-number states -- the global ones and the generators the
  model's modules own, so drop-path masks repeat exactly in the step -- and batch-norm
  statistics, so recording leaves training bitwise unchanged.
* **weight statistics** at the start and after every epoch: ``weight_mean``, ``weight_std``,
  ``weight_kurtosis`` (Pearson's, 3 for a Gaussian), per layer and pooled per rule; for
  local-rule layers (hebbian, pc) ``filters_moved``, the share of output filters whose direction
  moved more than 1 degree since the start.

``weight_histograms.csv`` -- ``epoch, rule, bin_lo, bin_hi, count``: a histogram of the weights
pooled per rule (and ``(all)``) at the epochs in ``histogram_epochs`` (default: start and end),
over +-5 standard deviations of the pool, 81 bins.

Rows are appended at each epoch end, before the run's checkpoint is written; ``resume`` drops
rows of epochs after the checkpoint's (written before a kill), so a resumed run continues the
series without a gap or a duplicate. Windows never cross an epoch end, so a checkpoint never
holds a half window.
"""
from __future__ import annotations

import math
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pandas as pd
import torch
from torch import Tensor, nn

from bionas import rules
from bionas.configs.options import option
from bionas.rules.convert import angle_degrees

DYNAMICS_CSV = "dynamics.csv"
HISTOGRAMS_CSV = "weight_histograms.csv"
INITIAL_WEIGHTS = "dynamics_initial.pt"
HISTOGRAM_BINS = 81


@dataclass
class DynamicsOptions:
    """The recorder's options, shared by the configs of every command that trains weights
    (``bionas train``, ``search`` and ``hebbian`` inherit them)."""

    dynamics: bool = option(False, "record gradient statistics, feedback alignment and weight statistics "
                            "(dynamics.csv, weight_histograms.csv; read by bionas analyze)", flag="--dynamics")
    dynamics_every: int = option(50, "dynamics: gradient window and alignment interval, in steps", ge=2)
    dynamics_layer_gradients: bool = option(False, "dynamics: gradient statistics per layer too (else per rule "
                                            "and for the whole model)")
    dynamics_histogram_epochs: list[int] | None = option(None, "dynamics: epochs whose weight histograms are "
                                                         "written (0 = the start; null: the start and the end)")


def snr(grad_variance: float, grad_mean_sq_norm: float, n: int) -> float:
    """Signal-to-noise per mini-batch of a window of ``n`` gradients, ``||E g||^2 / tr(Sigma)``,
    with the unbiased numerator ``||mean g||^2 - tr(Sigma) / n`` (NaN for a window without noise)."""
    if not grad_variance > 0:
        return math.nan
    return (grad_mean_sq_norm - grad_variance / n) / grad_variance


def moved_fraction(initial: Tensor, weight: Tensor, min_angle_deg: float = 1.0) -> float:
    """The share of output filters (rows of the flattened weights) whose direction moved by more
    than ``min_angle_deg`` from ``initial``; rescaling does not count."""
    cos = torch.nn.functional.cosine_similarity(initial.detach().flatten(1).double().cpu(),
                                                weight.detach().flatten(1).double().cpu(), dim=1)
    return float((cos < math.cos(math.radians(min_angle_deg))).double().mean())


def kurtosis(x: Tensor) -> float:
    """Pearson's kurtosis ``E[(x - mu)^4] / sigma^4`` (3 for a Gaussian), in float64."""
    x = x.detach().flatten().double()
    centred = x - x.mean()
    var = float(centred.pow(2).mean())
    return float(centred.pow(4).mean()) / var ** 2 if var > 0 else math.nan


def tracked_layers(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """``(name, layer, rule)`` of every convolution and linear layer with a weight."""
    out = []
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)) and getattr(m, "weight", None) is not None:
            rule = m.rule.name if isinstance(m, rules.RuleLayer) else "bp"
            out.append((name, m, rule))
    return out


class GradientWindow:
    """Running sums of one window of gradients, one entry per layer: ``sum_t g_t``,
    ``sum_t ||g_t||^2`` and the count (float64 sums of float32 gradients)."""

    def __init__(self, shapes: list[torch.Size], device: torch.device):
        self.sums = [torch.zeros(s, dtype=torch.float64, device=device) for s in shapes]
        self.sq = torch.zeros(len(shapes), dtype=torch.float64, device=device)
        self.n = 0

    def add(self, grads: list[Tensor]) -> None:
        grads = [g.detach().double() for g in grads]
        torch._foreach_add_(self.sums, grads)
        self.sq += torch.stack([g.pow(2).sum() for g in grads])
        self.n += 1

    def statistics(self) -> dict[str, Tensor]:
        """Per layer (L,): ``grad_variance``, ``grad_sq_norm``, ``grad_mean_sq_norm``; needs n >= 2."""
        n = self.n
        mean_sq = torch.stack([(s / n).pow(2).sum() for s in self.sums])
        sq = self.sq / n
        return {"grad_variance": (sq - mean_sq).clamp_min(0) * n / (n - 1), "grad_sq_norm": sq,
                "grad_mean_sq_norm": mean_sq}


class DynamicsRecorder:
    """Records a model's learning dynamics during training (see the module docstring).

    Args:
        model: the network (unwrapped: not a ``DistributedDataParallel``).
        every: the window of the gradient statistics and the interval of the alignment, in steps.
        histogram_epochs: epochs (0 = start) whose weight histograms are written; ``None``:
            the start and ``last_epoch``.
        last_epoch: the run's number of epochs.
        write: whether this process writes the files (rank 0 under torchrun).
        layer_gradients: gradient statistics per layer too (else per rule and for the whole
            model only; alignment and weight statistics are always per layer).
    """

    def __init__(self, model: nn.Module, every: int = 50, histogram_epochs: list[int] | None = None,
                 last_epoch: int = 1, write: bool = True, layer_gradients: bool = False):
        if every < 2:
            raise ValueError(f"every must be at least 2 (a variance needs two gradients), got {every}")
        self.model, self.every, self.write, self.layer_gradients = model, every, write, layer_gradients
        self.histogram_epochs = set(histogram_epochs if histogram_epochs is not None else (0, last_epoch))
        self.layers = tracked_layers(model)
        self.rule_of = {name: rule for name, _, rule in self.layers}
        self.window = self._new_window(next(model.parameters()).device)
        self.window_start = 0
        self.rows: list[dict] = []
        self.histograms: list[dict] = []
        self.initial: dict[str, Tensor] = {name: m.weight.detach().cpu().clone() for name, m, rule in self.layers
                                           if isinstance(m, rules.RuleLayer) and m.rule.kind == "local"}
        self.epoch = 1  # the epoch the coming steps belong to (1-based)
        self.appending = False  # False until the first flush of a fresh run, or after resume()
        self._exact: tuple[dict[str, Tensor], dict[str, Tensor]] | None = None
        self._captured: dict[str, Tensor] = {}

    @classmethod
    def from_config(cls, model: nn.Module, config, last_epoch: int, write: bool = True) -> "DynamicsRecorder":
        """A recorder as a run's ``dynamics_*`` options ask for."""
        return cls(model, config.dynamics_every, config.dynamics_histogram_epochs, last_epoch, write,
                   config.dynamics_layer_gradients)

    # --- the weight step's hooks (bionas.engine.train_step) ------------------------------------
    def due(self, step: int) -> bool:
        """Whether ``step`` is an alignment step."""
        return step % self.every == 0

    def exact_pass(self, x: Tensor, y: Tensor, forward: Callable[[Tensor], object] | None,
                   loss_fn: Callable[[object, Tensor], Tensor], autocast: Callable) -> None:
        """The true weight gradients and input errors on this batch, before the step; nothing
        the step computes changes (random state, batch-norm statistics, feedback draws)."""
        from bionas.engine import preserved_batchnorm_statistics, preserved_random_state

        model = self.model
        model.train()
        with preserved_random_state(model), preserved_batchnorm_statistics(model), rules.exact_gradients(model), \
                self.capture() as errors:
            with autocast():
                out = model(x) if forward is None else forward(x)
            loss = loss_fn(out, y)
            weights = [m.weight for _, m, _ in self.layers]
            grads = torch.autograd.grad(loss, weights, allow_unused=True)
        self._exact = ({name: g for (name, _, _), g in zip(self.layers, grads) if g is not None}, dict(errors))

    @contextmanager
    def capture(self) -> Iterator[dict[str, Tensor]]:
        """Inside the block, each tracked layer's input passes through an identity view whose
        gradient -- the error this layer alone sends to its input -- lands in the yielded dict."""
        errors: dict[str, Tensor] = {}

        def hook(name):
            def pre(module, args):
                x = args[0]
                if not (torch.is_tensor(x) and x.requires_grad and torch.is_grad_enabled()):
                    return None
                view = x.view_as(x)

                def store(g):
                    errors[name] = g.detach()
                view.register_hook(store)
                return (view, *args[1:])
            return pre

        with ExitStack() as stack:
            for name, m, _ in self.layers:
                stack.callback(m.register_forward_pre_hook(hook(name)).remove)
            yield errors

    def step_context(self, step: int):
        """Around the step's forward: captures the rules' input errors after an exact pass."""
        if self._exact is None:
            return nullcontext()
        return self._capture_into_self()

    @contextmanager
    def _capture_into_self(self):
        with self.capture() as errors:
            yield
        self._captured = errors  # filled during the backward, after the block

    def after_backward(self, step: int) -> None:
        """The step's gradients are in ``.grad``: add them to the window; on an alignment
        step, compare them (and the captured input errors) with the exact pass."""
        grads = [m.weight.grad if m.weight.grad is not None else torch.zeros_like(m.weight)
                 for _, m, _ in self.layers]
        epoch = self.epoch
        if self.window.n == 0:
            self.window_start = step
        self.window.add(grads)
        if self._exact is not None:
            true_grads, true_errors = self._exact
            for (name, m, rule), g in zip(self.layers, grads):
                if name in true_grads:
                    self._row(step, epoch, "update_angle", name, rule, angle_degrees(g, true_grads[name]))
                if name in true_errors and name in self._captured:
                    self._row(step, epoch, "input_error_angle", name, rule,
                              angle_degrees(self._captured[name], true_errors[name]))
            self._exact, self._captured = None, {}
        if self.window.n == self.every:
            self._close_window(step, epoch)

    # --- epochs ---------------------------------------------------------------------------------
    def end_epoch(self, epoch: int, step: int) -> None:
        """After epoch ``epoch`` (1-based; 0 = before training): close a partial window and
        record the weight statistics; the next steps belong to epoch ``epoch + 1``."""
        self.epoch = epoch + 1
        if self.window.n >= 2:
            self._close_window(step, epoch)
        elif self.window.n:
            self.window = self._new_window(self.window.sq.device)
        self._weight_statistics(epoch, step)

    def flush(self, out: Path) -> None:
        """Append the rows gathered since the last flush to the run folder's CSVs. A fresh run's
        first flush removes the series a run killed before its first checkpoint (or a finished
        run being made again) left in the folder, so that it never continues someone else's."""
        if self.write:
            out = Path(out)
            if not self.appending:
                for name in (DYNAMICS_CSV, HISTOGRAMS_CSV, INITIAL_WEIGHTS):
                    (out / name).unlink(missing_ok=True)
            if self.initial and not (out / INITIAL_WEIGHTS).exists():
                from bionas.io import atomic_open

                with atomic_open(out / INITIAL_WEIGHTS, "wb") as fh:
                    torch.save(self.initial, fh)
            for rows, name in ((self.rows, DYNAMICS_CSV), (self.histograms, HISTOGRAMS_CSV)):
                if rows:
                    path = out / name
                    pd.DataFrame(rows).to_csv(path, mode="a", header=not path.exists(), index=False)
        self.rows, self.histograms = [], []
        self.appending = True

    def resume(self, out: Path, epoch: int) -> None:
        """Continue the series of a run resumed after epoch ``epoch``: rows of later epochs
        (written before the run was killed) are dropped, the start's weights reloaded."""
        from bionas.io import save_csv

        out = Path(out)
        if (out / INITIAL_WEIGHTS).exists():
            self.initial = torch.load(out / INITIAL_WEIGHTS)
        self.epoch = epoch + 1
        self.appending = True
        if not self.write:
            return
        for name in (DYNAMICS_CSV, HISTOGRAMS_CSV):
            path = out / name
            if path.exists():
                frame = pd.read_csv(path)
                save_csv(frame[frame["epoch"] <= epoch], path)

    # --- internals ------------------------------------------------------------------------------
    def _row(self, step: int, epoch: int, metric: str, layer: str, rule: str, value: float) -> None:
        self.rows.append({"step": step, "epoch": epoch, "metric": metric, "layer": layer, "rule": rule,
                          "value": float(value)})

    def _close_window(self, step: int, epoch: int) -> None:
        stats = {k: v.cpu() for k, v in self.window.statistics().items()}
        n = self.window.n
        numel = torch.tensor([float(m.weight.numel()) for _, m, _ in self.layers], dtype=torch.float64)
        groups = {"(all)": list(range(len(self.layers)))}
        for i, (_, _, rule) in enumerate(self.layers):
            groups.setdefault(f"(rule) {rule}", []).append(i)
        entries = [(name, rule, [i]) for i, (name, _, rule) in enumerate(self.layers)] if self.layer_gradients else []
        entries += [(group, group.removeprefix("(rule) ") if group != "(all)" else "all", idx)
                    for group, idx in groups.items()]
        for name, rule, idx in entries:
            var, sq, mean_sq = (float(stats[k][idx].sum()) for k in ("grad_variance", "grad_sq_norm",
                                                                    "grad_mean_sq_norm"))
            for metric, value in (("grad_variance", var), ("grad_sq_norm", sq), ("grad_mean_sq_norm", mean_sq),
                                  ("noise_ratio", var / mean_sq if mean_sq > 0 else math.nan),
                                  ("grad_snr", snr(var, mean_sq, n)),
                                  ("grad_variance_per_weight", var / float(numel[idx].sum()))):
                self._row(step, epoch, metric, name, rule, value)
        self._row(step, epoch, "grad_window_steps", "(all)", "all", n)
        self.window = self._new_window(self.window.sq.device)

    def _new_window(self, device: torch.device) -> GradientWindow:
        return GradientWindow([m.weight.shape for _, m, _ in self.layers], device)

    @torch.no_grad()
    def _weight_statistics(self, epoch: int, step: int) -> None:
        pools: dict[str, list[Tensor]] = {"all": []}
        for name, m, rule in self.layers:
            w = m.weight.detach().flatten().double().cpu()
            pools.setdefault(rule, []).append(w)
            pools["all"].append(w)
            self._weight_rows(step, epoch, name, rule, w)
            if name in self.initial:
                self._row(step, epoch, "filters_moved", name, rule, moved_fraction(self.initial[name], m.weight))
        for rule, parts in pools.items():
            w = torch.cat(parts)
            self._weight_rows(step, epoch, "(all)" if rule == "all" else f"(rule) {rule}", rule, w)
            if epoch in self.histogram_epochs:
                mu, sd = float(w.mean()), float(w.std())
                lo, hi = mu - 5 * sd, mu + 5 * sd
                counts = torch.histc(w, HISTOGRAM_BINS, lo, hi)
                edges = torch.linspace(lo, hi, HISTOGRAM_BINS + 1)
                self.histograms += [{"epoch": epoch, "rule": rule, "bin_lo": float(edges[i]),
                                     "bin_hi": float(edges[i + 1]), "count": int(counts[i])}
                                    for i in range(HISTOGRAM_BINS)]

    def _weight_rows(self, step: int, epoch: int, layer: str, rule: str, w: Tensor) -> None:
        self._row(step, epoch, "weight_mean", layer, rule, float(w.mean()))
        self._row(step, epoch, "weight_std", layer, rule, float(w.std()) if w.numel() > 1 else 0.0)
        self._row(step, epoch, "weight_kurtosis", layer, rule, kurtosis(w))


__all__ = ["DynamicsOptions", "DynamicsRecorder", "GradientWindow", "angle_degrees", "kurtosis", "moved_fraction",
           "snr", "tracked_layers",
           "DYNAMICS_CSV", "HISTOGRAMS_CSV"]
