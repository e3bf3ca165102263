"""Summarise finished (or running) searches side by side: wall time, final validation accuracy,
and how far the mixing weights left their uniform start, per cell type -- the normalised entropy of
every edge's candidate mixture (1 = uniform, 0 = one candidate) and its top candidate's weight as a
multiple of the uniform 1/K (with K = 22 candidates an edge whose winner holds 0.3 of the weight still
has entropy 0.89, so the second statistic reads more directly) -- and the genotype.

    python scripts/search_summary.py results/search_mini/darts results/search_mini/eg
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd


def edge_entropies(weights: list[list[float]]) -> np.ndarray:
    """Per edge, the entropy of its (renormalised) candidate weights over ``log(candidates)``."""
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum(-1, keepdims=True)  # partial channels store weights scaled by the edge weight
    return -(w * np.log(np.clip(w, 1e-300, None))).sum(-1) / math.log(w.shape[-1])


def top_over_uniform(weights: list[list[float]]) -> np.ndarray:
    """Per edge, the largest (renormalised) candidate weight times the number of candidates:
    1 at the uniform start, K for a one-hot edge."""
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum(-1, keepdims=True)
    return w.max(-1) * w.shape[-1]


def summarise(run: Path) -> dict:
    log = pd.read_csv(run / "search_log.csv")
    history = json.loads((run / "arch_history.json").read_text())["epochs"]
    last = history[-1]["genotype"]
    row = {"run": str(run), "epochs": int(log["epoch"].iloc[-1]), "hours": log["seconds"].sum() / 3600,
           "final_val_acc": float(log["val_acc"].iloc[-1]), "final_train_acc": float(log["train_acc"].iloc[-1])}
    for cell in ("normal", "reduce"):
        start, end = edge_entropies(history[0]["genotype"]["weights"][cell]), edge_entropies(last["weights"][cell])
        row[f"{cell}_entropy_start"] = float(start.mean())
        row[f"{cell}_entropy_end_mean"] = float(end.mean())
        row[f"{cell}_entropy_end_min"] = float(end.min())
        top = top_over_uniform(last["weights"][cell])
        row[f"{cell}_top_x_uniform_median"] = float(np.median(top))
        row[f"{cell}_edges_top_2x_uniform"] = f"{int((top >= 2).sum())}/{len(top)}"
    genotype = run / "genotype.txt"
    row["genotype"] = genotype.read_text().strip() if genotype.exists() else "(running)"
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args()
    table = pd.DataFrame([summarise(r) for r in args.runs])
    print(table.drop(columns="genotype").to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    for _, r in table.iterrows():
        print(f"{r['run']}: {r['genotype']}")


if __name__ == "__main__":
    main()
