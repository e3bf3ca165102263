"""``bionas reproduce EXPERIMENT --scale smoke|mini|paper``: the paper's claims as runs and a table.

An experiment is a declarative list of :class:`Run` s -- searches and trainings made by the
ordinary commands, each a folder under ``ROOT/SCALE/`` -- and an aggregation that turns their
saved results into ``table.md``, ``runs.csv`` (every run's numbers) and a plot. A finished run
(its ``genotype.json`` / ``results.json``) is skipped, a killed one resumes from its checkpoint,
so a table can be built over several sittings or machines; ``--dry-run`` lists the runs and an
estimate of their cost.

Experiments (registered in ``EXPERIMENTS``):

* ``mixed_vs_single`` -- BioNAS claims 1 and 2 (sections 4.1-4.2, Tables 1 and 5): per seed, a
  BioNAS-DARTS search, then its cell retrained with the rules the search chose (``mixed``), with
  each single rule on every edge (bp, fa, usf, brsf, frsf), with random rules on the searched
  ops (Table 5), and a random cell of the same space (random ops and rules: the "Random" row).
  The table gives mean and standard deviation over seeds and, for ``mixed`` against every other
  row, the per-seed differences with their mean and whether it exceeds twice its standard error.

Scales: ``smoke`` (minutes; tests), ``mini`` (the ``mini`` search preset, 10-epoch retraining on
5,000 images: hours on a CPU), ``paper`` (the paper's settings, for a GPU).
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from bionas.errors import ConfigError
from bionas.registry import Registry

log = logging.getLogger(__name__)

SINGLE_RULES = ("bp", "fa", "usf", "brsf", "frsf")

# per scale: the presets and overrides of each command, and rough costs (seconds on 2 CPU cores
# for smoke and mini, on one GPU for paper) for --dry-run
SCALES: dict[str, dict] = {
    "smoke": {"search": ("smoke", {"epochs": 2, "steps_per_epoch": 3}), "train": ("smoke", {"epochs": 1,
                                                                                            "per_class": 50,
                                                                                            "test_per_class": 20}),
              "cost": {"search": 60, "train": 15}},
    # mini and paper retrainings record their learning dynamics (claim 4, +4% time): bionas analyze
    "mini": {"search": ("mini", {}), "train": ("short", {"test_per_class": 200, "dynamics": True}),
             "cost": {"search": 40 * 60, "train": 14 * 60}},
    "paper": {"search": ("paper", {}), "train": (None, {"dynamics": True, "dynamics_every": 200}),
              "cost": {"search": 1.4 * 86400, "train": 1.5 * 86400}},
}


@dataclass(frozen=True)
class Run:
    """One run of an experiment: ``command`` with ``options`` into folder ``name``; an option
    value ``"@RUN/FILE"`` names a file of another run of the experiment (made first)."""

    name: str
    command: str  # search | train | random_cell
    options: dict = field(default_factory=dict)
    labels: dict = field(default_factory=dict)  # what the table groups by (seed, variant)

    def finished(self, root: Path) -> bool:
        marker = {"search": "genotype.json", "train": "results.json", "random_cell": "genotype.json"}[self.command]
        return (root / self.name / marker).is_file()


@dataclass
class Experiment:
    runs: list[Run]
    aggregate: Callable[[list[Run], Path, Path], str]  # (runs, root, out) -> table.md text


EXPERIMENTS: Registry[Callable[[str, list[int]], Experiment]] = Registry("experiment")


@EXPERIMENTS.register("mixed_vs_single")
def mixed_vs_single(scale: str, seeds: list[int]) -> Experiment:
    runs = []
    for s in seeds:
        runs.append(Run(f"search_s{s}", "search", {"method": "darts", "seed": s}, {"seed": s, "variant": "search"}))
        searched = f"@search_s{s}/genotype.json"
        variants = [("mixed", {}), *((r, {"rule": r}) for r in SINGLE_RULES), ("random_rules", {"random_rules": True})]
        for variant, extra in variants:
            runs.append(Run(f"train_s{s}_{variant}", "train", {"genotype": searched, "seed": s, **extra},
                            {"seed": s, "variant": variant}))
        runs.append(Run(f"random_cell_s{s}", "random_cell", {"seed": s}, {"seed": s, "variant": "random_cell"}))
        runs.append(Run(f"train_s{s}_random_cell", "train", {"genotype": f"@random_cell_s{s}/genotype.json", "seed": s},
                        {"seed": s, "variant": "random_cell"}))
    return Experiment(runs, _mixed_vs_single_table)


def plan(experiment: str, scale: str, seeds: list[int]) -> Experiment:
    if scale not in SCALES:
        raise ConfigError(f"unknown scale {scale!r}; choose from {', '.join(SCALES)}")
    return EXPERIMENTS.get(experiment)(scale, seeds)


def estimate(runs: list[Run], scale: str, root: Path) -> tuple[list[dict], float]:
    """Each run's state and estimated cost (seconds); the total for the runs left."""
    cost = SCALES[scale]["cost"]
    rows = [{"run": r.name, "command": r.command, "state": "done" if r.finished(root) else
             ("resumable" if (root / r.name / "checkpoint.pt").exists() else "to run"),
             "estimate_s": cost.get(r.command, 1)} for r in runs]
    return rows, sum(r["estimate_s"] for r in rows if r["state"] != "done")


def _resolved(options: dict, root: Path) -> dict:
    out = {}
    for k, v in options.items():
        if isinstance(v, str) and v.startswith("@"):
            path = root / v[1:]
            if not path.is_file():
                raise ConfigError(f"{path} is missing: run the experiment's earlier runs first")
            v = str(path)
        out[k] = v
    return out


def execute(run: Run, scale: str, root: Path, data_dir: str | None, device: str) -> None:
    """Make (or resume, or skip) one run."""
    out = root / run.name
    if run.finished(root):
        log.info("done already: %s", run.name)
        return
    if run.command == "random_cell":
        _random_cell(out, int(run.options["seed"]))
        return
    preset, extra = SCALES[scale][run.command]
    options = {**extra, **_resolved(run.options, root), "out": str(out), "progress": False, "device": device}
    if data_dir is not None:
        options["data_dir"] = data_dir
    resume = (out / "checkpoint.pt").is_file()
    log.info("%s %s (%s)", "resuming" if resume else "running", run.name, run.command)
    if run.command == "search":
        from bionas.search import resolve_config, run_search as start
    else:
        from bionas.train import resolve_config, run_train as start
    start(resolve_config(preset, None, options), resume=resume)


def _random_cell(out: Path, seed: int) -> None:
    """A cell of the search space drawn at random (ops and rules): DARTS' derivation on random
    mixing weights, so it has the searched cell's structure rules (two inputs per node)."""
    from bionas.space import load_space
    from bionas.genotype import derive_genotype

    space = load_space("bionas")
    rng = np.random.default_rng(seed + 7919)
    E, K = space.supernet.edges_per_cell, len(space.candidates)
    weights = [rng.dirichlet(np.ones(K), size=E) for _ in range(2)]
    out.mkdir(parents=True, exist_ok=True)
    derive_genotype(space, *weights).save(out / "genotype.json")


def results_frame(runs: list[Run], root: Path) -> pd.DataFrame:
    rows = []
    for r in runs:
        if r.command != "train" or not r.finished(root):
            continue
        res = json.loads((root / r.name / "results.json").read_text())
        rows.append({**r.labels, "run": r.name, "test_acc": res["test_acc"], "test_loss": res.get("test_loss"),
                     "train_seconds": res.get("train_seconds")})
    return pd.DataFrame(rows)


def _mixed_vs_single_table(runs: list[Run], root: Path, out: Path) -> str:
    frame = results_frame(runs, root)
    from bionas.io import save_csv

    save_csv(frame, out / "runs.csv")
    if frame.empty:
        return "no finished training runs yet\n"
    order = ["mixed", *SINGLE_RULES, "random_rules", "random_cell"]
    lines = ["| retrained with | seeds | test accuracy (mean +- sd) | mixed - this, per seed | mean difference | "
             "beyond 2 SE |", "|---|---:|---:|---|---:|---|"]
    mixed = frame[frame.variant == "mixed"].set_index("seed")["test_acc"]
    for variant in [v for v in order if v in set(frame.variant)]:
        acc = frame[frame.variant == variant].set_index("seed")["test_acc"]
        sd = f"{acc.std():.3f}" if len(acc) > 1 else "-"
        row = f"| {variant} | {len(acc)} | {acc.mean():.3f} +- {sd} |"
        if variant == "mixed":
            lines.append(row + " - | - | - |")
            continue
        paired = (mixed - acc).dropna()
        if len(paired) == 0:
            lines.append(row + " - | - | - |")
            continue
        se = paired.std() / math.sqrt(len(paired)) if len(paired) > 1 else math.nan
        verdict = "-" if math.isnan(se) else ("yes" if abs(paired.mean()) > 2 * se else "no")
        lines.append(row + f" {', '.join(f'{d:+.3f}' for d in paired)} | {paired.mean():+.3f} | {verdict} |")
    _plot(frame, order, out / "accuracy.png")
    return "\n".join(lines) + "\n"


def _plot(frame: pd.DataFrame, order: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bionas.io import save_figure

    variants = [v for v in order if v in set(frame.variant)]
    fig, ax = plt.subplots(figsize=(1.2 * len(variants) + 2, 3.5))
    for i, v in enumerate(variants):
        acc = frame[frame.variant == v]["test_acc"].to_numpy()
        ax.scatter(np.full(len(acc), i), acc, color="black", s=14, zorder=3)
        ax.bar(i, acc.mean(), color="tab:blue" if v == "mixed" else "lightgrey")
    ax.set_xticks(range(len(variants)), variants, rotation=30)
    ax.set_ylabel("test accuracy")
    ax.set_title("searched cell: mixed rules vs one rule, random rules, random cell (dots: seeds)")
    save_figure(fig, path)
    plt.close(fig)


def reproduce(experiment: str, scale: str, seeds: list[int], root: str | Path, data_dir: str | None = None,
              device: str = "auto", dry_run: bool = False) -> Path:
    """Run what is left of ``experiment`` at ``scale`` under ``root/scale`` and write its table."""
    from bionas.io import atomic_open, check_output_dir, save_csv

    exp = plan(experiment, scale, seeds)
    root = check_output_dir(Path(root) / scale)
    rows, left = estimate(exp.runs, scale, root)
    if dry_run:
        for r in rows:
            print(f"{r['state']:>10}  {r['command']:<11} {r['run']:<28} ~{r['estimate_s'] / 60:.0f} min")
        print(f"{sum(r['state'] != 'done' for r in rows)} of {len(rows)} runs left, about {left / 3600:.1f} h "
              f"({'one GPU' if scale == 'paper' else '2 CPU cores'})")
        return root
    for run in exp.runs:
        execute(run, scale, root, data_dir, device)
    out = root / experiment
    out.mkdir(parents=True, exist_ok=True)
    table = exp.aggregate(exp.runs, root, out)
    with atomic_open(out / "table.md") as fh:
        fh.write(table)
    save_csv(pd.DataFrame(rows), out / "plan.csv")
    return out


__all__ = ["reproduce", "plan", "EXPERIMENTS", "SCALES", "Run", "Experiment", "results_frame"]
