"""``bionas analyze RUN_DIR [RUN_DIR ...]``: the paper's learning-dynamics figures from recorded runs.

Reads the ``dynamics.csv`` and ``weight_histograms.csv`` that :mod:`bionas.dynamics` writes
(``--dynamics`` on ``bionas train`` or ``bionas search``) and draws, for any number of runs:

* ``gradient_variance.png`` -- the BioNAS paper's Figure 3 layout: the gradient variance per
  weight of the whole model (``(all)`` rows) against the training step, one line per run (e.g.
  a searched cell with its mixed rules and the same cell with each single rule), and beside it
  the gradient's signal-to-noise ratio per mini-batch ``||E g||^2 / tr(Sigma)`` (see
  :mod:`bionas.dynamics`; about 0 where a window does not resolve the gradient's mean);
* ``weight_histograms.png`` -- Figures 4-6: per run, the weights pooled per rule at the last
  recorded histogram epoch, each with the Gaussian of the same mean and standard deviation and
  its kurtosis (3 for a Gaussian; "a little steeper than a Gaussian" reads as a kurtosis above 3);
* ``alignment.png`` -- per run, the angle between the error each layer sends to its input under
  the rules and the true back-propagated error, against the step: one thin line per layer,
  coloured by rule, and the median per rule in bold (the feedback-alignment picture of
  Lillicrap et al. 2016); a second row shows the weight-update angle;
* ``summary.csv`` -- one row per run and rule: the last window's and the mean gradient variance
  per weight, the mean signal-to-noise ratio (and the mean plug-in noise ratio, biased by the
  window's length), the median alignment angles over the last epoch, and the final weight std
  and kurtosis.

Runs recorded before ``grad_snr`` existed get it here, from their stored sums: a window's length
``n`` follows exactly from ``grad_variance = n / (n - 1) * (grad_sq_norm - grad_mean_sq_norm)``.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from bionas.dynamics import DYNAMICS_CSV, HISTOGRAMS_CSV
from bionas.errors import ConfigError
from bionas.io import save_csv, save_figure


def load_run(path: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A run's dynamics rows and its histogram rows (empty if it wrote none)."""
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"{path} is not a run folder; give the --out folder of a bionas train or search run")
    if not (path / DYNAMICS_CSV).is_file():
        raise ConfigError(f"{path} has no {DYNAMICS_CSV}; rerun it with --dynamics (bionas train or bionas search)")
    try:
        rows = pd.read_csv(path / DYNAMICS_CSV)
        hist = pd.read_csv(path / HISTOGRAMS_CSV) if (path / HISTOGRAMS_CSV).is_file() else pd.DataFrame()
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path / DYNAMICS_CSV} cannot be read ({type(err).__name__}); is it a dynamics file?") \
            from None
    missing = {"step", "epoch", "metric", "layer", "rule", "value"} - set(rows.columns)
    if missing:
        raise ConfigError(f"{path / DYNAMICS_CSV} lacks the columns {', '.join(sorted(missing))}")
    return rows, hist


def with_snr(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` with ``grad_snr`` rows for every gradient window (those recorded, or else computed
    from the window's stored sums; its length recovered from them, see the module's note)."""
    from bionas.dynamics import snr

    if (rows.metric == "grad_snr").any() or not (rows.metric == "grad_variance").any():
        return rows
    keys = ["step", "epoch", "layer", "rule"]
    wide = rows[rows.metric.isin(["grad_variance", "grad_sq_norm", "grad_mean_sq_norm"])] \
        .pivot_table(index=keys, columns="metric", values="value").reset_index()
    whole = wide[wide.layer == "(all)"]
    excess = whole["grad_variance"] / (whole["grad_sq_norm"] - whole["grad_mean_sq_norm"])  # n / (n - 1)
    steps = dict(zip(zip(whole["step"], whole["epoch"]), (excess / (excess - 1)).round()))
    wide["n"] = [steps.get((s, e), math.nan) for s, e in zip(wide["step"], wide["epoch"])]
    wide["value"] = [snr(v, m, n) if n == n else math.nan
                     for v, m, n in zip(wide["grad_variance"], wide["grad_mean_sq_norm"], wide["n"])]
    return pd.concat([rows, wide[keys + ["value"]].assign(metric="grad_snr")], ignore_index=True)


def _rule_style(rule: str) -> dict:
    """Matplotlib line keywords of a rule, from the rule registry (as the search plots draw it)."""
    from bionas.search.plots import rule_colour, rule_style

    return {"color": rule_colour(rule), "linestyle": rule_style(rule)}


def summarise(label: str, rows: pd.DataFrame) -> list[dict]:
    """One row per rule group (and ``all``) of a run."""
    out = []
    last_epoch = int(rows["epoch"].max())
    for group, rule in [("(all)", "all")] + [(f"(rule) {r}", r) for r in sorted(set(rows["rule"]) - {"all"})]:
        grads = rows[(rows.layer == group) & (rows.metric == "grad_variance_per_weight")].sort_values("step")
        noise = rows[(rows.layer == group) & (rows.metric == "noise_ratio")]
        signal = rows[(rows.layer == group) & (rows.metric == "grad_snr")]
        weights = rows[(rows.layer == group) & (rows.epoch == last_epoch)]
        per_layer = rows[(rows.rule == rule) & ~rows.layer.str.startswith("(") & (rows.epoch == last_epoch)] \
            if rule != "all" else rows[~rows.layer.str.startswith("(") & (rows.epoch == last_epoch)]

        def value(frame, metric):
            v = frame[frame.metric == metric]["value"]
            return float(v.iloc[-1]) if len(v) else math.nan

        def median(metric):
            v = per_layer[per_layer.metric == metric]["value"].dropna()
            return float(v.median()) if len(v) else math.nan

        out.append({"run": label, "rule": rule,
                    "grad_variance_per_weight_last": float(grads["value"].iloc[-1]) if len(grads) else math.nan,
                    "grad_variance_per_weight_mean": float(grads["value"].mean()) if len(grads) else math.nan,
                    "grad_snr_mean": float(signal["value"].mean()) if len(signal) else math.nan,
                    "noise_ratio_mean": float(noise["value"].mean()) if len(noise) else math.nan,
                    "input_error_angle_median_last_epoch": median("input_error_angle"),
                    "update_angle_median_last_epoch": median("update_angle"),
                    "weight_std_final": value(weights, "weight_std"),
                    "weight_kurtosis_final": value(weights, "weight_kurtosis")})
    return out


def analyze(run_dirs: list[str | Path], out: str | Path, labels: list[str] | None = None) -> Path:
    """Write the figures and ``summary.csv`` for ``run_dirs`` into ``out``; returns ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if labels is not None and len(labels) != len(run_dirs):
        raise ConfigError(f"--labels has {len(labels)} names for {len(run_dirs)} runs; give one per run")
    labels = labels or [Path(p).name for p in run_dirs]
    runs = [(label, with_snr(rows), hist) for label, (rows, hist) in zip(labels, map(load_run, run_dirs))]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    # Figure 3: gradient variance of the whole model, run against run
    fig, (ax_var, ax_noise) = plt.subplots(1, 2, figsize=(11, 4))
    cmap = plt.get_cmap("tab10")
    for i, (label, rows, _) in enumerate(runs):
        for ax, metric in ((ax_var, "grad_variance_per_weight"), (ax_noise, "grad_snr")):
            r = rows[(rows.layer == "(all)") & (rows.metric == metric)].sort_values("step")
            ax.plot(r["step"], r["value"], color=cmap(i % 10), label=label, lw=1.5)
    ax_var.set(yscale="log", xlabel="training step", ylabel="gradient variance per weight",
               title="gradient variance, whole model")
    ax_noise.axhline(0, color="grey", lw=0.6, ls="--")
    ax_noise.set(xlabel="training step", ylabel="||E g||^2 / tr(Sigma)",
                 title="gradient signal-to-noise per mini-batch")
    ax_noise.set_yscale("symlog", linthresh=1e-3)
    ax_var.legend(fontsize=8)
    save_figure(fig, out / "gradient_variance.png")
    plt.close(fig)

    # Figures 4-6: weight histograms per rule with a fitted Gaussian
    fig, axes = plt.subplots(1, len(runs), figsize=(4.2 * len(runs), 3.6), squeeze=False)
    for ax, (label, rows, hist) in zip(axes[0], runs):
        if hist.empty:
            ax.set_title(f"{label}: no histograms")
            continue
        epoch = int(hist["epoch"].max())
        h = hist[hist.epoch == epoch]
        for rule in [r for r in dict.fromkeys(h["rule"]) if r != "all"]:
            part = h[h.rule == rule]
            centres = ((part["bin_lo"] + part["bin_hi"]) / 2).to_numpy()
            width = float((part["bin_hi"] - part["bin_lo"]).iloc[0])
            density = part["count"].to_numpy() / max(1, part["count"].sum()) / width
            stats = rows[(rows.layer == f"(rule) {rule}") & (rows.epoch == epoch)]
            mu = float(stats[stats.metric == "weight_mean"]["value"].iloc[-1])
            sd = float(stats[stats.metric == "weight_std"]["value"].iloc[-1])
            kurt = float(stats[stats.metric == "weight_kurtosis"]["value"].iloc[-1])
            style = _rule_style(rule)
            ax.step(centres, density, where="mid", color=style["color"], label=f"{rule} (kurtosis {kurt:.2f})")
            gauss = np.exp(-0.5 * ((centres - mu) / sd) ** 2) / (sd * math.sqrt(2 * math.pi))
            ax.plot(centres, gauss, color=style["color"], ls=":", lw=1)
        ax.set(title=f"{label}: weights at epoch {epoch}", xlabel="weight", ylabel="density", yscale="log")
        ax.legend(fontsize=7)
    save_figure(fig, out / "weight_histograms.png")
    plt.close(fig)

    # alignment angles per layer over training
    fig, axes = plt.subplots(2, len(runs), figsize=(4.2 * len(runs), 6.5), squeeze=False, sharey=True)
    for j, (label, rows, _) in enumerate(runs):
        for i, metric in enumerate(("input_error_angle", "update_angle")):
            ax = axes[i][j]
            r = rows[rows.metric == metric]
            for layer, part in r.groupby("layer"):
                style = _rule_style(part["rule"].iloc[0])
                ax.plot(part["step"], part["value"], color=style["color"], lw=0.4, alpha=0.25)
            for rule, part in r.groupby("rule"):
                med = part.groupby("step")["value"].median()
                ax.plot(med.index, med.values, lw=2, label=rule, **_rule_style(rule))
            ax.axhline(90, color="grey", lw=0.6, ls="--")
            ax.set(title=f"{label}: {metric.replace('_', ' ')}", xlabel="training step",
                   ylabel="degrees" if j == 0 else None, ylim=(0, 120))
            if len(r):
                ax.legend(fontsize=7)
    save_figure(fig, out / "alignment.png")
    plt.close(fig)

    save_csv(pd.DataFrame([row for label, rows, _ in runs for row in summarise(label, rows)]), out / "summary.csv")
    return out


__all__ = ["analyze", "load_run", "summarise", "with_snr"]
