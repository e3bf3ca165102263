"""The 1-hidden-layer MLP table of "Sparse, excitatory networks from neurobiological principles"
(Table 1, CIFAR-10 column): its learning rule -- Oja's rule in the hidden layer (eq. 1), Hebbian +
weight perturbation in the classifier (eq. 4, with eq. 2 and eq. 3) and the homeostatic bias (eq.
5) -- and backprop, each without and with the non-negativity constraint (Dale's law: ``+dale``,
eq. 6's z-score activation), on real CIFAR-10 through ``bionas train``.

Every run is an ordinary, resumable ``bionas train`` folder under ``--out`` (a finished run is
skipped); the table is rebuilt from the saved runs (``--table-only``). Besides test accuracy it
reports what the paper reports about the weights: the share of non-zero connections (paper: about
10% with its rule) and the weight distribution -- weights normalised to [0, 1] per layer and cut
at the paper's detection threshold 0.005, then the mean and standard deviation of their logarithm
and the skewness of the log (a lognormal distribution has a symmetric log: skewness near 0); the
histograms go to ``weights.png``.

The paper's hyperparameters (Table 1, note d): eta = 5e-4, sigma^2 = 1.6e-4, alpha = 0.04, beta =
87,500, gamma = 0.04, batch 2,000 for the WP runs; non-negative weights start uniform in [0.01,
0.1], the others normal with std 0.01 (here: ``dale`` init ``paper``; the unconstrained runs keep
bionas' Xavier initialisation -- a departure). Its epoch count is not stated; backprop's optimiser
neither (here SGD, momentum 0.9, lr 0.05, batch 100).

    BIONAS_DATA=../shared/data/cifar10 python scripts/seed_rules_table.py --epochs 10   # ~1 h on one core
    python scripts/seed_rules_table.py --table-only
"""
from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

PAPER = {"ours": 46.07, "ours+dale": 33.98, "bp": 55.27, "bp+dale": 36.28}
PAPER_RULE = {"oja": {"lr": 5e-4}, "wp": {"lr": 5e-4, "sigma": math.sqrt(1.6e-4), "mix": True, "hebbian_weight": 0.04,
                                          "wp_weight": 87500.0, "bias_gamma": 0.04}}


def runs(epochs: int, per_class: int | None) -> dict[str, dict]:
    common = {"inputs": "unit", "epochs": epochs, "per_class": per_class, "cutout": 0, "schedule": "cosine",
              "weight_decay": 0.0, "progress": False}
    ours = {"rule": "bp", "batch_size": 2000, "lr": 0.05}
    bp = {"batch_size": 100, "lr": 0.05, "momentum": 0.9}
    return {
        "ours": {**common, **ours, "model": "mlp", "layer_rules": {"hidden": "oja", "classifier": "wp"},
                 "rule_options": {"oja": {**PAPER_RULE["oja"], "post": "relu"}, "wp": PAPER_RULE["wp"]}},
        "ours+dale": {**common, **ours, "model": "mlp_zscore",
                      "layer_rules": {"hidden": "oja+dale", "classifier": "wp+dale"},
                      "rule_options": {"oja": {**PAPER_RULE["oja"], "post": "zscore"}, "wp": PAPER_RULE["wp"]}},
        "bp": {**common, **bp, "model": "mlp", "rule": "bp"},
        "bp+dale": {**common, **bp, "model": "mlp_zscore", "rule": "bp+dale"},
    }


def weight_stats(weight: np.ndarray) -> dict:
    """Share of non-zero weights; of the weights normalised to [0, 1] (by the largest magnitude)
    and above 0.005: mean, std and skewness of their natural log."""
    w = np.abs(weight.ravel())
    nonzero = float((weight != 0).mean())
    scaled = w / w.max() if w.max() > 0 else w
    kept = scaled[scaled > 0.005]
    logs = np.log(kept) if len(kept) else np.array([np.nan])
    skew = float(((logs - logs.mean()) ** 3).mean() / logs.std() ** 3) if len(kept) > 2 else math.nan
    return {"nonzero": nonzero, "log_mean": float(logs.mean()), "log_std": float(logs.std()), "log_skew": skew,
            "above_threshold": float(len(kept) / len(w))}


def table(out: Path) -> str:
    import torch

    from bionas.train import load_trained

    rows, weights = [], {}
    for name in PAPER:
        folder = out / name
        if not (folder / "results.json").is_file():
            continue
        res = json.loads((folder / "results.json").read_text())
        net = load_trained(folder / "checkpoint.pt").model
        row = {"network": name, "test_acc": res["test_acc"], "epochs": res["epochs"], "train_images": None}
        info = json.loads((folder / "run_info.json").read_text())
        row["train_images"] = info.get("train_images")
        for layer in ("hidden", "classifier"):
            w = getattr(net, layer).weight.detach().to(torch.float64).numpy()
            weights[(name, layer)] = w
            row.update({f"{layer}_{k}": v for k, v in weight_stats(w).items()})
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame.to_csv(out / "table.csv", index=False)
    lines = ["| network | paper test acc | ours | epochs | hidden non-zero | classifier non-zero | hidden log-weight "
             "mean / std / skew |", "|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['network']} | {PAPER[r['network']]:.2f}% | {100 * r['test_acc']:.2f}% | {r['epochs']} | "
                     f"{100 * r['hidden_nonzero']:.1f}% | {100 * r['classifier_nonzero']:.1f}% | "
                     f"{r['hidden_log_mean']:.2f} / {r['hidden_log_std']:.2f} / {r['hidden_log_skew']:.2f} |")
    _plot(weights, out / "weights.png")
    return "\n".join(lines) + "\n"


def _plot(weights: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not weights:
        return
    fig, axes = plt.subplots(1, len(weights), figsize=(3.2 * len(weights), 2.8), squeeze=False)
    for ax, ((name, layer), w) in zip(axes[0], weights.items()):
        scaled = np.abs(w.ravel()) / max(np.abs(w).max(), 1e-12)
        ax.hist(scaled[scaled > 0.005], bins=60, color="tab:blue")
        ax.set_title(f"{name}: {layer}", fontsize=9)
        ax.set_xlabel("|w| / max |w| (> 0.005)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="results/seed_rules")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--per-class", type=int, default=None, help="training images per class (default: all)")
    parser.add_argument("--only", nargs="+", choices=list(PAPER), help="these runs only")
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = Path(args.out)
    if not args.table_only:
        from bionas.train import resolve_config, run_train

        for name, options in runs(args.epochs, args.per_class).items():
            if args.only and name not in args.only:
                continue
            folder = out / name
            if (folder / "results.json").is_file():
                print(f"done already: {name}")
                continue
            resume = (folder / "checkpoint.pt").is_file()
            run_train(resolve_config(None, None, {**options, "out": str(folder)}), resume=resume)
    text = table(out)
    (out / "table.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
