"""Pictures of a search: how the mixing weights moved, and the cells it found.

Both read only saved data (``arch_history.json`` entries, a :class:`Genotype`), so they can be
redrawn from any run directory. Colours name the op, line styles the learning rule.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from bionas.candidate import Candidate
from bionas.io import save_figure
from bionas.rules import RULES
from bionas.genotype import Genotype, edge_index



def rule_colour(rule: str) -> str:
    """The colour the rule registry gives ``rule``."""
    return RULES.get(rule).color


def rule_style(rule: str):
    return RULES.get(rule).line_style


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _op_colours(ops: list[str]) -> dict[str, tuple]:
    plt = _pyplot()
    cmap = plt.get_cmap("tab10")
    return {op: cmap(i % 10) for i, op in enumerate(dict.fromkeys(ops))}


def plot_mixing_weights(arch_history: list[dict], path: str | Path) -> None:
    """One panel per edge (rows: target node, columns: source node) for each cell type; in each,
    the softmax weight of every (op, rule) candidate against the epoch."""
    plt = _pyplot()
    weights = arch_history[-1]["genotype"]["weights"]
    candidates = [Candidate.parse(c) for c in weights["candidates"]]
    epochs = [entry["epoch"] for entry in arch_history]
    E = len(weights["normal"])
    nodes = next(n for n in range(1, 64) if len(edge_index(n)) == E)
    colours = _op_colours([c.op for c in candidates])
    fig, axes = plt.subplots(nodes, 2 * (nodes + 1), figsize=(2.2 * 2 * (nodes + 1), 1.9 * nodes + 1.2),
                             sharex=True, sharey=True, squeeze=False)
    for ax in axes.flat:
        ax.set_visible(False)
    for c, cell in enumerate(("normal", "reduce")):
        series = np.array([entry["genotype"]["weights"][cell] for entry in arch_history])  # (T, E, K)
        for e, (node, source) in enumerate(edge_index(nodes)):
            ax = axes[node - 2, c * (nodes + 1) + source]
            ax.set_visible(True)
            for k, cand in enumerate(candidates):
                ax.plot(epochs, series[:, e, k], color=colours[cand.op], linestyle=rule_style(cand.rule),
                        linewidth=1.0, marker="." if len(epochs) < 3 else None)
            ax.set_title(f"{cell}: {source} -> {node}", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], color=colours[op]) for op in colours]
    handles += [plt.Line2D([], [], color="black", linestyle=rule_style(r))
                for r in dict.fromkeys(c.rule for c in candidates)]
    labels = list(colours) + [f"rule {r}" for r in dict.fromkeys(c.rule for c in candidates)]
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 7), fontsize=8, frameon=False)
    fig.supxlabel("epoch (0 = before training)", y=0.06, fontsize=9)
    fig.supylabel("mixing weight (softmax)", fontsize=9)
    fig.subplots_adjust(bottom=0.16)
    save_figure(fig, path)
    plt.close(fig)


def _draw_cell(ax, genotype: Genotype, cell: str) -> None:
    edges = genotype.normal if cell == "normal" else genotype.reduce
    concat = genotype.normal_concat if cell == "normal" else genotype.reduce_concat
    nodes = max(e.node for e in edges) - 1
    pos = {0: (0.0, 1.0), 1: (0.0, -1.0)}
    for i in range(nodes):
        pos[2 + i] = (1.0 + i, 0.9 * (1 if i % 2 else -1) * (0.4 + 0.15 * i))
    pos["out"] = (nodes + 1.2, 0.0)
    names = {0: "c_{k-2}", 1: "c_{k-1}", "out": "c_{k}", **{2 + i: str(i) for i in range(nodes)}}
    for e in edges:
        (x0, y0), (x1, y1) = pos[e.source], pos[e.node]
        rad = 0.25 if (e.node - e.source) > 1 else 0.0
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                    arrowprops=dict(arrowstyle="-|>", color=rule_colour(e.rule), lw=1.4,
                                    shrinkA=14, shrinkB=14, connectionstyle=f"arc3,rad={rad}"))
        mx, my = (x0 + x1) / 2, (y0 + y1) / 2 + rad * 0.5 * (x1 - x0)
        ax.text(mx, my, f"{e.op}\n{e.rule}", fontsize=6.5, ha="center", va="center",
                color=rule_colour(e.rule),
                bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.8))
    for c in concat:
        (x0, y0), (x1, y1) = pos[c], pos["out"]
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                    arrowprops=dict(arrowstyle="-|>", color="#bbbbbb", lw=0.8, shrinkA=14, shrinkB=14))
    for key, (x, y) in pos.items():
        fc = "#c6dbef" if key in (0, 1) else "#fdd0a2" if key == "out" else "#ffffcc"
        ax.text(x, y, names[key], ha="center", va="center", fontsize=8,
                bbox=dict(boxstyle="round,pad=0.4", fc=fc, ec="black", lw=0.8))
    ax.set_xlim(-0.6, nodes + 1.8)
    ax.set_ylim(-1.6, 1.6)
    ax.set_title(f"{cell} cell", fontsize=10)
    ax.axis("off")


def draw_cells(genotype: Genotype, path: str | Path) -> None:
    """The normal and the reduction cell side by side; edge colour = learning rule."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
    for ax, cell in zip(axes, ("normal", "reduce")):
        _draw_cell(ax, genotype, cell)
    rules_used = list(dict.fromkeys(e.rule for e in (*genotype.normal, *genotype.reduce)))
    handles = [plt.Line2D([], [], color=rule_colour(r), lw=2) for r in rules_used]
    fig.legend(handles, rules_used, loc="lower center", ncol=len(rules_used), fontsize=8, frameon=False,
               title="learning rule", title_fontsize=8)
    if genotype.space:
        fig.suptitle(f"genotype from search space {genotype.space!r}", fontsize=10)
    save_figure(fig, path)
    plt.close(fig)


def plot_fitness(frame, path: str | Path) -> None:
    """Best and mean compound fitness (lower is better) per CMA-ES generation, with the current
    architecture's cross-entropy on the same batch for reference."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    x = np.arange(len(frame))
    ax.plot(x, frame["best"], marker=".", label="best candidate")
    ax.plot(x, frame["mean"], marker=".", label="population mean")
    ax.plot(x, frame["current_ce"], linestyle="--", color="gray", label="current architecture (CE)")
    for boundary in np.flatnonzero(np.diff(frame["epoch"].to_numpy())) + 0.5:
        ax.axvline(boundary, color="black", alpha=0.15)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("CMA-ES generation (grey lines: epoch boundaries)")
    ax.set_ylabel("compound fitness (lower is better)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    save_figure(fig, path)
    plt.close(fig)
