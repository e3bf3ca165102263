"""Pictures of a search: how the mixing weights moved, and the cells it found.

Both read only saved data (``arch_history.json`` entries, a :class:`Genotype`), so they can be
redrawn from any run directory. Colours name the op, line styles the learning rule.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from bionas.candidate import Candidate
from bionas.io import save_figure
from bionas.ops import has_weights
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


WEIGHTLESS = "#888888"  # edges of ops without weights: they have no learning rule


def _cell(genotype: Genotype, cell: str):
    edges = genotype.normal if cell == "normal" else genotype.reduce
    concat = genotype.normal_concat if cell == "normal" else genotype.reduce_concat
    return edges, concat


def _weighted(e, cell: str) -> bool:
    """Whether edge ``e`` has weights where it sits: reduction cells apply stride 2 to the cell
    inputs, where ``skip_connect`` is a factorized reduction with weights, not the identity."""
    return has_weights(e.op, 2 if cell == "reduce" and e.source < 2 else 1)


def _edge_style(e, cell: str) -> tuple[str, str]:
    """(colour, label): the rule's colour and ``op|rule`` for weighted edges; grey and the bare op
    for edges without weights, which no rule trains."""
    if _weighted(e, cell):
        return rule_colour(e.rule), f"{e.op}|{e.rule}"
    return WEIGHTLESS, e.op


def cell_dot(genotype: Genotype, cell: str) -> str:
    """Graphviz source of one cell, laid out left to right as in the DARTS paper's figures."""
    edges, concat = _cell(genotype, cell)
    nodes = sorted({e.node for e in edges})
    lines = [f'digraph "{cell}" {{', '  rankdir=LR; node [fontname="Helvetica", fontsize=12, style="filled,rounded"];',
             '  edge [fontname="Helvetica", fontsize=10];',
             '  "c_{k-2}" [shape=box, fillcolor="#c6dbef", label=<c<sub>k-2</sub>>];',
             '  "c_{k-1}" [shape=box, fillcolor="#c6dbef", label=<c<sub>k-1</sub>>];',
             '  "c_{k}" [shape=box, fillcolor="#fdd0a2", label=<c<sub>k</sub>>];']
    lines += [f'  "{n - 2}" [shape=circle, fillcolor="#ffffcc"];' for n in nodes]
    name = {0: "c_{k-2}", 1: "c_{k-1}", **{n: str(n - 2) for n in nodes}}
    for e in edges:
        colour, label = _edge_style(e, cell)
        style = "solid" if _weighted(e, cell) else "dashed"
        lines.append(f'  "{name[e.source]}" -> "{name[e.node]}" [label="{label}", color="{colour}", '
                     f'fontcolor="{colour}", penwidth=2, style={style}];')
    lines += [f'  "{name[c]}" -> "c_{{k}}" [color="#bbbbbb"];' for c in concat]
    return "\n".join(lines + ["}"])


def _layered_positions(edges, concat) -> dict:
    """Node -> (x, y): x = the node's depth (longest path from the inputs), nodes of one depth
    spread vertically; the output one layer right of the deepest node."""
    depth = {0: 0, 1: 0}
    for n in sorted({e.node for e in edges}):
        depth[n] = 1 + max(depth[e.source] for e in edges if e.node == n)
    layers: dict[int, list] = {}
    for n, d in depth.items():
        layers.setdefault(d, []).append(n)
    pos = {}
    for d, members in layers.items():
        for i, n in enumerate(sorted(members)):
            pos[n] = (float(d), 1.3 * ((len(members) - 1) / 2 - i))
    pos["out"] = (max(depth.values()) + 1.0, 0.0)
    return pos


def _draw_cell(ax, genotype: Genotype, cell: str) -> None:
    """One cell as a layered left-to-right DAG (matplotlib; used where graphviz is not installed)."""
    edges, concat = _cell(genotype, cell)
    pos = _layered_positions(edges, concat)
    names = {0: "$c_{k-2}$", 1: "$c_{k-1}$", "out": "$c_{k}$",
             **{n: str(n - 2) for n in pos if isinstance(n, int) and n >= 2}}
    xs = [x for x, _ in pos.values()]
    ys = [y for _, y in pos.values()]
    ax.set_xlim(min(xs) - 0.5, max(xs) + 0.5)
    ax.set_ylim(min(ys) - 1.0, max(ys) + 1.0)
    to_display, to_data = ax.transData.transform, ax.transData.inverted().transform
    for e in edges:
        (x0, y0), (x1, y1) = pos[e.source], pos[e.node]
        colour, label = _edge_style(e, cell)
        span = x1 - x0
        # neighbouring layers: straight; longer edges bend away from the cell's middle, past the
        # nodes in between
        rad = 0.0 if span <= 1 else (-0.25 if (y0 + y1) >= 0 else 0.25)
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                    arrowprops=dict(arrowstyle="-|>", color=colour, lw=1.6, shrinkA=13, shrinkB=13,
                                    linestyle="-" if _weighted(e, cell) else (0, (4, 2)),
                                    connectionstyle=f"arc3,rad={rad}"))
        # the label sits on the curve, 62% of the way to the target (a node has 2 inputs but may
        # feed 4 edges, so labels crowd less there): matplotlib's arc3 is the
        # quadratic Bezier whose control point is the chord's midpoint moved by rad x chord
        # (perpendicular, in display coordinates)
        a, b = to_display((x0, y0)), to_display((x1, y1))
        control = (a + b) / 2 + rad * np.array([b[1] - a[1], a[0] - b[0]])
        t = 0.62
        mx, my = to_data((1 - t) ** 2 * a + 2 * (1 - t) * t * control + t ** 2 * b)
        ax.text(mx, my, label, fontsize=6.5, ha="center", va="center", color=colour,
                bbox=dict(boxstyle="round,pad=0.12", fc="white", ec="none", alpha=0.85))
    for c in concat:
        (x0, y0), (x1, y1) = pos[c], pos["out"]
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                    arrowprops=dict(arrowstyle="-|>", color="#bbbbbb", lw=0.8, shrinkA=13, shrinkB=13))
    for key, (x, y) in pos.items():
        fc = "#c6dbef" if key in (0, 1) else "#fdd0a2" if key == "out" else "#ffffcc"
        ax.text(x, y, names[key], ha="center", va="center", fontsize=9,
                bbox=dict(boxstyle="round,pad=0.4", fc=fc, ec="black", lw=0.8))
    ax.set_title(f"{cell} cell", fontsize=10)
    ax.axis("off")


def _dot_image(source: str):
    """The PNG graphviz renders from ``source``, as an image array; ``None`` without ``dot``."""
    import shutil
    import subprocess

    dot = shutil.which("dot")
    if dot is None:
        return None
    png = subprocess.run([dot, "-Tpng", "-Gdpi=110"], input=source.encode(), capture_output=True, check=True).stdout
    import io

    return _pyplot().imread(io.BytesIO(png), format="png")


def draw_cells(genotype: Genotype, path: str | Path, engine: str = "auto") -> None:
    """The normal and the reduction cell, one above the other, as DARTS draws them: a layered
    left-to-right DAG, edges coloured by learning rule (grey, dashed, unlabelled by a rule:
    weightless ops). ``engine``: ``dot`` (graphviz, where installed), ``matplotlib``, or
    ``auto`` (dot when available)."""
    plt = _pyplot()
    images = None
    if engine in ("auto", "dot"):
        images = [_dot_image(cell_dot(genotype, cell)) for cell in ("normal", "reduce")]
        if images[0] is None:
            if engine == "dot":
                raise FileNotFoundError("graphviz's dot is not installed (apt-get install graphviz)")
            images = None
    fig, axes = plt.subplots(2, 1, figsize=(10, 8.5))
    for ax, cell, image in zip(axes, ("normal", "reduce"), images or (None, None)):
        if image is not None:
            ax.imshow(image)
            ax.set_title(f"{cell} cell", fontsize=10)
            ax.axis("off")
        else:
            _draw_cell(ax, genotype, cell)
    rules_used = list(dict.fromkeys(e.rule for cell in ("normal", "reduce") for e in _cell(genotype, cell)[0]
                                    if _weighted(e, cell)))
    handles = [plt.Line2D([], [], color=rule_colour(r), lw=2) for r in rules_used]
    handles.append(plt.Line2D([], [], color=WEIGHTLESS, lw=2, linestyle=(0, (4, 2))))
    fig.legend(handles, [*rules_used, "no weights (no rule)"], loc="lower center", ncol=len(handles), fontsize=8,
               frameon=False, title="learning rule", title_fontsize=8)
    if genotype.space:
        fig.suptitle(f"genotype from search space {genotype.space!r}", fontsize=10)
    fig.subplots_adjust(bottom=0.08, hspace=0.15)
    save_figure(fig, path)
    plt.close(fig)


def plot_fitness(frame, path: str | Path) -> None:
    """Per CMA-ES generation: the accuracy and cross-entropy of the selected candidate, the
    population mean and the current architecture on the same batch -- whether the evolution picks
    candidates better than what it has."""
    plt = _pyplot()
    fig, (ax_acc, ax_ce) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    x = np.arange(len(frame))
    for ax, what, label in ((ax_acc, "acc", "accuracy on the batch"), (ax_ce, "ce", "cross-entropy on the batch")):
        ax.plot(x, frame[f"selected_{what}"], marker=".", label="selected candidate")
        ax.plot(x, frame[f"mean_{what}"], marker=".", alpha=0.6, label="population mean")
        ax.plot(x, frame[f"current_{what}"], linestyle="--", color="gray", label="current architecture")
        for boundary in np.flatnonzero(np.diff(frame["epoch"].to_numpy())) + 0.5:
            ax.axvline(boundary, color="black", alpha=0.15)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    from matplotlib.ticker import MaxNLocator

    ax_ce.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_ce.set_xlabel("CMA-ES generation (grey lines: epoch boundaries)")
    ax_acc.legend(fontsize=8)
    save_figure(fig, path)
    plt.close(fig)
