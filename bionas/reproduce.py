"""``bionas reproduce EXPERIMENT --scale smoke|mini|paper``: the paper's claims as runs and a table.

An experiment is a declarative list of :class:`Run` s -- searches, trainings and attack runs made
by the ordinary commands, each a folder under ``ROOT/SCALE/`` -- and an aggregation that turns
their saved results into ``table.md``, ``runs.csv`` (every run's numbers) and a plot. A finished
run (its ``genotype.json`` / ``results.json`` / ``results.csv``) is skipped, a killed one resumes
from its checkpoint (attacks from their finished rows), so a table can be built over several
sittings or machines; ``--dry-run`` lists the runs and an estimate of their cost. Runs are named
by what they are, not by the experiment (``search_s0``, ``train_s0_mixed``, ``train_s0_resnet56_fa``),
so experiments under one root share them: each run is made once.

Experiments (registered in ``EXPERIMENTS``), after the BioNAS paper's sections 4 and 7:

* ``mixed_vs_single`` -- claims 1 and 2 (sections 4.1-4.2, Tables 1 and 5): per seed, a
  BioNAS-DARTS search, then its cell retrained with the rules the search chose (``mixed``), with
  each single rule on every edge (bp, fa, usf, brsf, frsf), with random rules on the searched
  ops (Table 5), and a random cell of the same space (random ops and rules: the "Random" row).
  The table gives mean and standard deviation over seeds and, for ``mixed`` against every other
  row, the per-seed differences with their mean and whether it exceeds twice its standard error.
* ``table1`` -- Tables 1 and 3: BioNAS-DARTS, BioNAS-EG and the HL-PC space's searched cells
  (each retrained with its own rules), DARTS V2 retrained by backprop, and ResNet-20 / ResNet-56
  with each single rule; test error beside the paper's, and per search method its final
  validation accuracy and cost (Table 3's columns).
* ``dynamics`` -- claim 4 (section 4.3, Figures 3-6): the learning dynamics the retrainings of
  ``mixed_vs_single`` record, through ``bionas analyze`` per seed, and a table of gradient
  variance, update angles and weight kurtosis, mixed against each single rule, paired per seed.
* ``robustness`` -- Table 4: the attack suite on BioNAS-DARTS (``mixed``) and ResNet-56 with each
  single rule, exact- and rule-gradient cells; the transfer attack is crafted on a ResNet-20
  trained by backprop (not one of the targets, so no target is attacked white-box as "transfer").

Scales: ``smoke`` (minutes; tests), ``mini`` (the ``mini`` search preset, 10-epoch retraining on
5,000 images, attacks on 100 test images: hours on a CPU), ``paper`` (the paper's settings, for
a GPU).
"""
from __future__ import annotations

import json
import logging
import math
import os
import socket
import threading
import time
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
# for smoke and mini, on one GPU for paper) for --dry-run: keys are commands, or command/kind for
# the runs whose cost differs by model or method
SCALES: dict[str, dict] = {
    # smoke: the least that runs every code path of every experiment (the test suite makes all of
    # it on 2 cores); 6 images a class leave 30 validation images, two batches; pc infers twice
    "smoke": {"search": ("smoke", {"epochs": 2, "steps_per_epoch": 1, "per_class": 6, "batch_size": 16,
                                   "partial_channels": 4, "rule_options": {"pc": {"iterations": 2}},
                                   "strategy_options": {"eg": {"warmup_epochs": 1, "population": 4, "restarts": 1,
                                                               "score_chunk": 4}}}),
              "train": ("smoke", {"epochs": 1, "per_class": 10, "test_per_class": 5, "steps_per_epoch": 2,
                                  "dynamics": True, "dynamics_every": 2}),
              "attack": ("quick", {"n": 10, "square_queries": 20, "onepixel_steps": 2, "batch_size": 10, "pgd_steps": 2,
                                   "transfer_steps": 2,
                                   "attacks": ["fgsm", "pgd", "square", "onepixel", "transfer"]}),
              "cost": {"search": 60, "train": 15, "attack": 60}},
    # mini and paper retrainings record their learning dynamics (claim 4, +4% time): bionas analyze
    "mini": {"search": ("mini", {}), "train": ("short", {"test_per_class": 200, "dynamics": True}),
             # 100 images: the full suite on 250 took 267 s for OP1 alone on one ResNet-56 (one
             # core), about 4 hours a seed for the six models
             "attack": ("full", {"n": 100}),
             # measured with two jobs sharing the 2 cores: a DARTS search 64 min, an EG search 44 min,
             # an HL-PC search ~147 min (440 s an epoch: its Hebbian and PC convolutions), a cell
             # retraining 16-28 min (bp, usf, brsf, mixed; the sum of its epochs' seconds), fa's 50 min,
             # an HL-PC cell's 64 min (375 s an epoch)
             "cost": {"search": 64 * 60, "search/eg": 44 * 60, "search/hlpc": 147 * 60, "train": 25 * 60,
                      "train/hlpc": 64 * 60,
                      "train/resnet20": 3 * 60, "train/resnet56": 9 * 60, "attack": 100 * 60}},
    "paper": {"search": ("paper", {}), "train": (None, {"dynamics": True, "dynamics_every": 200}),
              "attack": ("full", {"n": 1000, "square_queries": 5000}),
              "cost": {"search": 1.4 * 86400, "search/eg": 0.35 * 86400, "train": 1.5 * 86400,
                       "train/resnet20": 0.1 * 86400, "train/resnet56": 0.25 * 86400, "attack": 0.1 * 86400}},
}

@dataclass(frozen=True)
class Run:
    """One run of an experiment: ``command`` with ``options`` into folder ``name``; an option
    value ``"@RUN/FILE"`` names a file of another run of the experiment (made first)."""

    name: str
    command: str  # search | train | random_cell | attack
    options: dict = field(default_factory=dict)
    labels: dict = field(default_factory=dict)  # what the table groups by (seed, variant)
    kind: str = ""  # for the cost estimate: resnet20, eg, hlpc, ...

    @property
    def marker(self) -> str:
        """The file that a finished run has written last."""
        return {"search": "genotype.json", "train": "results.json", "random_cell": "genotype.json",
                "attack": "results.csv"}[self.command]

    def finished(self, root: Path) -> bool:
        return (root / self.name / self.marker).is_file()

    def resumable(self, root: Path) -> bool:
        """A killed run that continues where it stopped (a checkpoint; an attack's finished rows)."""
        marker = "config.yaml" if self.command == "attack" else "checkpoint.pt"
        return (root / self.name / marker).is_file()


@dataclass
class Experiment:
    runs: list[Run]
    aggregate: Callable[[list[Run], Path, Path], str]  # (runs, root, out) -> table.md text


EXPERIMENTS: Registry[Callable[[str, list[int]], Experiment]] = Registry("experiment")


def _darts_search(s: int) -> Run:
    return Run(f"search_s{s}", "search", {"method": "darts", "seed": s}, {"seed": s, "variant": "search"})


def _searched_cell(s: int, variant: str = "mixed", **extra) -> Run:
    """The seed's BioNAS-DARTS cell retrained: with its own rules (``mixed``) or as ``extra`` says."""
    return Run(f"train_s{s}_{variant}", "train", {"genotype": f"@search_s{s}/genotype.json", "seed": s, **extra},
               {"seed": s, "variant": variant})


def _resnet(s: int, depth: int, rule: str) -> Run:
    return Run(f"train_s{s}_resnet{depth}_{rule}", "train", {"model": f"resnet{depth}", "rule": rule, "seed": s},
               {"seed": s, "variant": f"ResNet{depth} {rule}"}, kind=f"resnet{depth}")


@EXPERIMENTS.register("mixed_vs_single")
def mixed_vs_single(scale: str, seeds: list[int]) -> Experiment:
    runs = []
    for s in seeds:
        runs.append(_darts_search(s))
        runs.append(_searched_cell(s))
        runs += [_searched_cell(s, r, rule=r) for r in SINGLE_RULES]
        runs.append(_searched_cell(s, "random_rules", random_rules=True))
        runs.append(Run(f"random_cell_s{s}", "random_cell", {"seed": s}, {"seed": s, "variant": "random_cell"}))
        runs.append(Run(f"train_s{s}_random_cell", "train", {"genotype": f"@random_cell_s{s}/genotype.json", "seed": s},
                        {"seed": s, "variant": "random_cell"}))
    return Experiment(runs, _mixed_vs_single_table)


# The paper's numbers (BioNAS, Tables 1, 3 and 4) that the tables print beside ours: CIFAR-10 test
# error (%), search validation accuracy (%) and cost (GPU-days), robust accuracy (%).
PAPER_ERROR = {"BioNAS-DARTS": 4.84, "BioNAS-EG": 7.16, "BioNAS-DARTS-HL-PC": 18.08, "DARTS V2 (bp)": 2.76,
               "ResNet20 bp": 8.63, "ResNet20 fa": 32.16, "ResNet20 usf": 10.05, "ResNet20 brsf": 11.02,
               "ResNet20 frsf": 11.20, "ResNet56 bp": 8.30, "ResNet56 fa": 34.88, "ResNet56 usf": 8.20,
               "ResNet56 brsf": 8.69, "ResNet56 frsf": 9.49}
PAPER_SEARCH = {"BioNAS-DARTS": (85.83, 1.37), "BioNAS-EG": (81.16, 0.35)}
PAPER_ROBUST = {  # attack -> (ResNet56 fa, usf, frsf, brsf, bp, BioNAS-DARTS)
    "Clean": (65.8, 91.6, 89.8, 89.8, 92.0, 95.16), "OP1": (47.8, 63.8, 62.6, 65.4, 59.6, 90.9),
    "OP2": (40.6, 44.0, 42.4, 45.0, 35.8, 89.4), "OP3": (38.2, 38.4, 40.6, 42.0, 32.4, 87.5),
    "OP4": (38.2, 36.4, 38.6, 40.4, 32.0, 86.2), "OP5": (38.0, 34.4, 35.4, 38.0, 28.2, 84.9),
    "FGSM": (61.7, 14.6, 18.8, 73.4, 12.5, 61.1), "PGD": (63.3, 0.0, 0.0, 0.0, 0.0, 60.6),
    "TPGD": (67.2, 40.6, 46.1, 50.0, 33.6, 67.5), "APGD": (33.6, 0.0, 0.0, 0.0, 0.0, 67.0),
    "Square": (34.6, 53.4, 55.3, 46.6, 51.6, 58.54), "Transfer": (25.0, 51.04, 46.25, 44.38, 44.7, 53.54)}
ROBUST_MODELS = ("ResNet56 fa", "ResNet56 usf", "ResNet56 frsf", "ResNet56 brsf", "ResNet56 bp", "BioNAS-DARTS")


@EXPERIMENTS.register("table1")
def table1(scale: str, seeds: list[int]) -> Experiment:
    # the trainings that need no new search first (every seed), then the EG and HL-PC searches:
    # a sitting cut short has finished whole rows rather than half of a long search
    runs = []
    for s in seeds:
        runs += [_darts_search(s), _searched_cell(s)]
        runs.append(Run(f"train_s{s}_darts_v2", "train", {"genotype": "darts_v2", "space": "darts", "seed": s},
                        {"seed": s, "variant": "DARTS V2 (bp)"}))
        runs += [_resnet(s, depth, r) for depth in (20, 56) for r in SINGLE_RULES]
    for s in seeds:
        runs.append(Run(f"search_eg_s{s}", "search", {"method": "eg", "seed": s}, {"seed": s, "variant": "search"},
                        kind="eg"))
        runs.append(Run(f"train_s{s}_eg", "train", {"genotype": f"@search_eg_s{s}/genotype.json", "seed": s},
                        {"seed": s, "variant": "BioNAS-EG"}))
        runs.append(Run(f"search_hlpc_s{s}", "search", {"method": "darts", "space": "bionas_hl_pc", "seed": s},
                        {"seed": s, "variant": "search"}, kind="hlpc"))
        runs.append(Run(f"train_s{s}_hlpc", "train", {"genotype": f"@search_hlpc_s{s}/genotype.json",
                                                      "space": "bionas_hl_pc", "seed": s},
                        {"seed": s, "variant": "BioNAS-DARTS-HL-PC"}, kind="hlpc"))
    return Experiment(runs, _table1)


@EXPERIMENTS.register("dynamics")
def dynamics(scale: str, seeds: list[int]) -> Experiment:
    runs = []
    for s in seeds:
        runs += [_darts_search(s), _searched_cell(s), *(_searched_cell(s, r, rule=r) for r in SINGLE_RULES)]
    return Experiment(runs, _dynamics_table)


@EXPERIMENTS.register("robustness")
def robustness(scale: str, seeds: list[int]) -> Experiment:
    runs = []
    for s in seeds:
        targets = [_resnet(s, 56, r) for r in ("fa", "usf", "frsf", "brsf", "bp")]
        source = _resnet(s, 20, "bp")
        runs += [_darts_search(s), _searched_cell(s), *targets, source]
        runs.append(Run(f"attack_s{s}", "attack", {
            "checkpoints": [f"@{t.name}/checkpoint.pt" for t in targets] + [f"@train_s{s}_mixed/checkpoint.pt"],
            "source": f"@{source.name}/checkpoint.pt", "seed": s}, {"seed": s, "variant": "attack"}))
    return Experiment(runs, _robustness_table)


def plan(experiments: str | list[str], scale: str, seeds: list[int]) -> Experiment:
    """The runs of one experiment, or of several in the order given (``all``: every registered
    one): their union, each shared run once, whose aggregation writes every experiment's own table
    and returns an index of them. Naming the cheaper experiments first lets a sitting of limited
    length finish whole tables before it starts the long searches of others."""
    if scale not in SCALES:
        raise ConfigError(f"unknown scale {scale!r}; choose from {', '.join(SCALES)}")
    names = [experiments] if isinstance(experiments, str) else list(experiments)
    if names == ["all"]:
        names = EXPERIMENTS.names()
    elif "all" in names:
        raise ConfigError("'all' already names every experiment; give it alone")
    if len(names) == 1:
        return EXPERIMENTS.get(names[0])(scale, seeds)
    parts = {name: EXPERIMENTS.get(name)(scale, seeds) for name in dict.fromkeys(names)}
    runs = list({r.name: r for part in parts.values() for r in part.runs}.values())

    def aggregate(_runs: list[Run], root: Path, out: Path) -> str:
        index = []
        for name, part in parts.items():
            _write_table(part, root, root / name)
            index.append(f"* {name}: {root / name / 'table.md'}")
        return "\n".join(index) + "\n"

    return Experiment(runs, aggregate)


def output_name(experiments: str | list[str]) -> str:
    """The folder under ``ROOT/SCALE/`` of an experiment's table (of several: their index)."""
    names = [experiments] if isinstance(experiments, str) else list(dict.fromkeys(experiments))
    return "+".join(names)


def spent_seconds(run: Run, root: Path) -> float:
    """The seconds a run has measured for its own work so far (one process each, so on a CPU
    with one thread per job, core-seconds): a training's epochs (``train_seconds``), a search's
    epochs (``search_log.csv``), an attack's rows (finished or so far); 0 for what has none."""
    folder = root / run.name
    try:
        if run.command == "train" and (folder / "results.json").is_file():
            return float(json.loads((folder / "results.json").read_text()).get("train_seconds") or 0.0)
        if run.command == "search" and (folder / "search_log.csv").is_file():
            return float(pd.read_csv(folder / "search_log.csv")["seconds"].sum())
        if run.command == "attack":
            from bionas.attack.run import PARTIAL

            for name in ("results.csv", PARTIAL):
                if (folder / name).is_file():
                    return float(pd.read_csv(folder / name)["seconds"].sum())
    except (ValueError, KeyError, pd.errors.EmptyDataError) as err:
        log.warning("%s: cannot read its timings (%s); counted as 0 s", run.name, err)
    return 0.0


def estimate(runs: list[Run], scale: str, root: Path) -> tuple[list[dict], float]:
    """Each run's state (done, to remake: finished but a file an unfinished run reads is gone,
    resumable, to run), estimated cost and measured time so far (seconds); the total cost of
    the runs left."""
    cost = SCALES[scale]["cost"]
    by_name = {r.name: r for r in runs}
    lost = {p.name for r in runs if not r.finished(root) for p in _lost_inputs(r, by_name, root)}
    rows = [{"run": r.name, "command": r.command, "state": "to remake" if r.name in lost else "done"
             if r.finished(root) else ("resumable" if r.resumable(root) else "to run"),
             "estimate_s": cost.get(f"{r.command}/{r.kind}", cost.get(r.command, 1)),
             "spent_s": round(spent_seconds(r, root), 1)} for r in runs]
    return rows, sum(r["estimate_s"] for r in rows if r["state"] != "done")


def _resolved(options: dict, root: Path) -> dict:
    def one(v):
        if isinstance(v, list):
            return [one(x) for x in v]
        if isinstance(v, str) and v.startswith("@"):
            path = root / v[1:]
            if not path.is_file():
                raise ConfigError(f"{path} is missing: run the experiment's earlier runs first")
            return str(path)
        return v

    return {k: one(v) for k, v in options.items()}


POLL_SECONDS = 30.0  # how often a process waiting for another one's run looks again


def _inputs(run: Run, root: Path) -> list[Path]:
    """The files of other runs that ``run`` reads (its ``@RUN/FILE`` options)."""
    values = [x for v in run.options.values() for x in (v if isinstance(v, list) else [v])]
    return [root / v[1:] for v in values if isinstance(v, str) and v.startswith("@")]


def _needed_inputs(run: Run, root: Path) -> list[Path]:
    """The inputs ``run`` still reads: all of them, except for an unfinished attack, which reads
    only the checkpoints of models with rows still to compute (and the transfer source while a
    transfer row is missing) -- a resumed attack needs no weights of models it has finished."""
    paths = _inputs(run, root)
    if run.command != "attack":
        return paths
    from bionas.attack.run import checkpoints_done

    done = checkpoints_done(root / run.name)
    return [p for p in paths if p.resolve() not in done]


def _producer(path: Path, by_name: dict[str, Run], root: Path) -> Run | None:
    """The run of the plan whose folder holds ``path`` (an ``@RUN/FILE`` input), if any."""
    return by_name.get(path.relative_to(root).parts[0])


def _unready(run: Run, by_name: dict[str, Run], root: Path) -> list[Path]:
    """The inputs of ``run`` not ready yet: missing, or written by a run of the plan that has not
    finished -- a training in progress already has a ``checkpoint.pt``, of its last epoch."""
    def ready(path: Path) -> bool:
        producer = _producer(path, by_name, root)
        return path.is_file() and (producer is None or producer.finished(root))

    return [p for p in _needed_inputs(run, root) if not ready(p)]


class RunLock:
    """A claim on one run, so that several processes can share an experiment (one per core, or
    several machines on one file system): ``ROOT/.locks/RUN`` holds ``host pid``, and its holder
    touches it every ``REFRESH_SECONDS``. A lock is taken over when its process died on this host,
    or when nobody touched it for ``STALE_SECONDS`` (a process killed on another machine)."""

    REFRESH_SECONDS = 60.0
    STALE_SECONDS = 600.0

    def __init__(self, root: Path, name: str):
        self.path = root / ".locks" / name
        self.owner = f"{socket.gethostname()} {os.getpid()}"
        self._stop: threading.Event | None = None

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                if not self._stale():
                    return False
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(self.owner)
            self._stop = threading.Event()
            threading.Thread(target=self._refresh, args=(self._stop,), daemon=True).start()
            return True
        return False

    def _refresh(self, stop: threading.Event) -> None:
        while not stop.wait(self.REFRESH_SECONDS):
            try:
                os.utime(self.path)
            except FileNotFoundError:
                return

    def holder(self) -> str:
        try:
            return self.path.read_text().strip()
        except FileNotFoundError:
            return ""

    def _stale(self) -> bool:
        try:
            if time.time() - self.path.stat().st_mtime > self.STALE_SECONDS:
                return True  # its holder stopped refreshing it: gone, wherever it ran
        except FileNotFoundError:
            return True
        host, _, pid = self.holder().partition(" ")
        if host != socket.gethostname() or not pid.isdigit():
            return False
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def release(self) -> None:
        if self._stop is not None:
            self._stop.set()
        if self.holder() == self.owner:
            self.path.unlink(missing_ok=True)


def run_all(runs: list[Run], scale: str, root: Path, data_dir: str | None, device: str, wait: bool = True) -> None:
    """Make every run not finished yet, in order, each once across processes: a run another
    process holds, or one whose inputs another process is still making, is passed over and
    taken up again later; with nothing else to do, wait for the other process (``wait=False``:
    return, leaving those runs to it -- for a chain of commands whose next one has work)."""
    pending, number = list(runs), {r.name: i + 1 for i, r in enumerate(runs)}
    by_name = {r.name: r for r in runs}
    while pending:
        waiting, progressed = [], False
        for run in pending:
            if run.finished(root):
                log.info("done already: %s", run.name)
                progressed = True
                continue
            for producer in _lost_inputs(run, by_name, root):
                lock = RunLock(root, producer.name)
                if lock.acquire():  # else another process is making it again
                    try:
                        remake(producer, scale, root, data_dir, device)
                    finally:
                        lock.release()
            missing = _unready(run, by_name, root)
            lock = RunLock(root, run.name)
            if missing or not lock.acquire():
                if not missing:
                    log.info("%s is being made by another process (%s); later", run.name, lock.holder())
                waiting.append(run)
                continue
            try:
                log.info("run %d of %d: %s", number[run.name], len(runs), run.name)
                start = time.perf_counter()
                execute(run, scale, root, data_dir, device)
                log.info("%s: %.1f s", run.name, time.perf_counter() - start)
            finally:
                lock.release()
            progressed = True
        if waiting and not progressed:
            held = [r.name for r in waiting if RunLock(root, r.name).holder()]
            if not held:
                run = waiting[0]
                missing = _unready(run, by_name, root)[0]
                raise ConfigError(f"{run.name} needs {missing}, which no run of the experiment made; check "
                                  f"the earlier runs' logs")
            if not wait:
                log.info("left to other processes: %s", ", ".join(r.name for r in waiting))
                return
            log.info("waiting for other processes: %s (a claim nobody refreshes for %.0f min is taken over)",
                     ", ".join(held), RunLock.STALE_SECONDS / 60)
            time.sleep(POLL_SECONDS)
        pending = waiting


def _lost_inputs(run: Run, by_name: dict[str, Run], root: Path) -> list[Run]:
    """The finished runs of the plan whose files ``run`` reads are gone: checkpoints are kept
    beside a run's results on the machine that made it, not in git, so a fresh clone has a
    finished training's results but not the weights an attack needs."""
    lost = []
    for path in _needed_inputs(run, root):
        producer = _producer(path, by_name, root)
        if not path.is_file() and producer is not None and producer.finished(root) and producer not in lost:
            lost.append(producer)
    return lost


def _metrics(path: Path) -> dict:
    """The numbers a run's results file reports, less its timings (which differ run to run)."""
    if path.suffix != ".json":
        return {"text": path.read_text()}
    data = json.loads(path.read_text())
    return {k: v for k, v in data.items() if isinstance(v, (int, float)) and "seconds" not in k}


def remake(run: Run, scale: str, root: Path, data_dir: str | None, device: str) -> None:
    """Make a finished run again from the start (to restore a file it made that is gone), and
    compare its results with the first time's: a run is seeded, so on the same kind of machine
    it is bitwise the same; a difference is logged, and the first results are kept beside as
    ``NAME.previous.EXT``."""
    marker = root / run.name / run.marker
    first = marker.with_name(f"{marker.stem}.previous{marker.suffix}")
    log.info("%s is finished but a file another run reads is gone (checkpoints stay on the machine that "
             "made them): making it again", run.name)
    if first.exists():  # a remake killed before: the first results are set aside already
        marker.unlink()
    else:
        marker.rename(first)
    execute(run, scale, root, data_dir, device)
    before, after = _metrics(first), _metrics(marker)
    if before == after:
        log.info("%s made again: the same results as the first time", run.name)
        first.unlink()
    else:
        changed = ", ".join(f"{k} {before.get(k)} -> {after.get(k)}" for k in sorted(set(before) | set(after))
                            if before.get(k) != after.get(k))
        log.warning("%s made again differs from the first time (%s); the new run is the one used, the first "
                    "one's results are kept in %s", run.name, changed, first)


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
    resume = run.resumable(root)
    log.info("%s %s (%s)", "resuming" if resume else "running", run.name, run.command)
    if run.command == "search":
        from bionas.search import resolve_config, run_search as start
    elif run.command == "attack":
        from bionas.attack import resolve_config, run_attack as start
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
        info_path = root / r.name / "run_info.json"
        info = json.loads(info_path.read_text()) if info_path.is_file() else {}
        rows.append({**r.labels, "run": r.name, "test_acc": res["test_acc"], "test_loss": res.get("test_loss"),
                     "train_seconds": res.get("train_seconds"),
                     "parameters": info.get("parameters_without_auxiliary", info.get("parameters"))})
    return pd.DataFrame(rows)


def search_frame(runs: list[Run], root: Path) -> pd.DataFrame:
    """One row per finished search: its last epoch's validation accuracy and mixing entropy, and
    its cost (the sum of its epochs' wall seconds)."""
    rows = []
    for r in runs:
        if r.command != "search" or not r.finished(root):
            continue
        history = pd.read_csv(root / r.name / "search_log.csv")
        last = history.iloc[-1]
        rows.append({**r.labels, "run": r.name, "method": r.options.get("method"),
                     "space": r.options.get("space", "bionas"), "epochs": int(last["epoch"]),
                     "val_acc": float(last["val_acc"]), "search_seconds": float(history["seconds"].sum()),
                     "mixing_entropy": float(last["mixing_entropy"]) if "mixing_entropy" in history else math.nan})
    return pd.DataFrame(rows)


def _mean_sd(values: pd.Series, scale: float = 1.0, digits: int = 2) -> str:
    values = values.dropna() * scale
    if len(values) == 0:
        return "-"
    mean = f"{values.mean():.{digits}f}"
    return f"{mean} +- {values.std():.{digits}f}" if len(values) > 1 else mean


def _table1(runs: list[Run], root: Path, out: Path) -> str:
    from bionas.io import save_csv

    frame, searches = results_frame(runs, root), search_frame(runs, root)
    if frame.empty:
        return "no finished training runs yet\n"
    frame["variant"] = frame["variant"].replace({"mixed": "BioNAS-DARTS"})
    save_csv(frame, out / "runs.csv")
    save_csv(searches, out / "searches.csv")
    order = list(PAPER_ERROR)
    lines = ["Table 1 (CIFAR-10 test error, %): the paper's number, ours (mean +- sd over seeds)", "",
             "| model | paper | ours | seeds | parameters (M) |", "|---|---:|---:|---:|---:|"]
    for variant in [v for v in order if v in set(frame.variant)]:
        sub = frame[frame.variant == variant]
        lines.append(f"| {variant} | {PAPER_ERROR[variant]:.2f} | {_mean_sd(1 - sub['test_acc'], 100)} | {len(sub)} | "
                     f"{sub['parameters'].mean() / 1e6:.2f} |")
    lines += ["", "Table 3 (search): final validation accuracy of the supernet (%), cost, mixing entropy at "
              "the end (1 = the uniform start)", "",
              "| method | paper val | ours val | paper GPU-days | ours: CPU hours (sum of epochs) | entropy | seeds |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    names = {("darts", "bionas"): "BioNAS-DARTS", ("eg", "bionas"): "BioNAS-EG",
             ("darts", "bionas_hl_pc"): "BioNAS-DARTS-HL-PC"}
    for (method, space), sub in searches.groupby(["method", "space"], sort=False) if len(searches) else []:
        name = names.get((method, space), f"{method} on {space}")
        paper_val, paper_days = PAPER_SEARCH.get(name, (math.nan, math.nan))
        lines.append(f"| {name} | {paper_val:.2f} | {_mean_sd(sub['val_acc'], 100)} | {paper_days:.2f} | "
                     f"{_mean_sd(sub['search_seconds'], 1 / 3600)} | {_mean_sd(sub['mixing_entropy'], 1, 3)} | "
                     f"{len(sub)} |".replace("| nan |", "| - |"))
    _plot(frame, [v for v in order if v in set(frame.variant)], out / "accuracy.png",
          "Table 1 rows: test accuracy (bars: mean, dots: seeds)", highlight="BioNAS-DARTS")
    return "\n".join(lines) + "\n"


def _dynamics_table(runs: list[Run], root: Path, out: Path) -> str:
    """``bionas analyze`` on each seed's retrainings (figures per seed), and a table over seeds of
    each variant's whole-network statistics, with mixed against each single rule paired per seed
    (gradient variance as a log10 ratio: below 0 means mixed rules had the lower variance)."""
    from bionas.analyze import analyze
    from bionas.io import save_csv

    trains = [r for r in runs if r.command == "train" and r.finished(root)
              and (root / r.name / "dynamics.csv").is_file()]
    if not trains:
        return "no finished training runs with recorded dynamics yet\n"
    rows = []
    for seed in sorted({r.labels["seed"] for r in trains}):
        mine = [r for r in trains if r.labels["seed"] == seed]
        folder = analyze([root / r.name for r in mine], out / f"seed_{seed}",
                         labels=[r.labels["variant"] for r in mine])
        summary = pd.read_csv(folder / "summary.csv")
        summary = summary[summary["rule"] == "all"].assign(seed=seed)
        rows.append(summary)
    frame = pd.concat(rows, ignore_index=True).rename(columns={"run": "variant"})
    save_csv(frame, out / "runs.csv")
    stats = [("grad_variance_per_weight_mean", "gradient variance per weight (mean over windows)", "{:.2e}"),
             ("grad_variance_per_weight_last", "gradient variance per weight (last window)", "{:.2e}"),
             ("grad_snr_mean", "gradient signal-to-noise per batch (mean over windows)", "{:+.4f}"),
             ("update_angle_median_last_epoch", "update angle to backprop, last epoch (deg)", "{:.1f}"),
             ("weight_kurtosis_final", "weight kurtosis at the end", "{:.2f}")]
    lines = ["| variant | seeds | " + " | ".join(label for _, label, _ in stats) + " |",
             "|---|---:|" + "---:|" * len(stats)]
    order = ["mixed", *SINGLE_RULES]
    for variant in [v for v in order if v in set(frame.variant)]:
        sub = frame[frame.variant == variant]
        cells = []
        for column, _, fmt in stats:
            v = sub[column].dropna()
            spread = f" +- {fmt.replace('+', '').format(v.std())}" if len(v) > 1 else ""
            cells.append("-" if v.empty else fmt.format(v.mean()) + spread)
        lines.append(f"| {variant} | {len(sub)} | " + " | ".join(cells) + " |")
    lines += ["", "Signal-to-noise per batch: ||E g||^2 / tr(Sigma) of the whole model's gradient, per window of "
              "consecutive steps with the unbiased numerator ||mean g||^2 - tr(Sigma) / n; about 0 where a window "
              "does not resolve the gradient's mean, below 0 where consecutive gradients cancel more than "
              "independent draws would (an oscillating descent)."]
    lines += ["", "Mixed against each single rule, per seed: log10(variance mixed / variance single) "
              "(negative: mixed lower), over the whole run (mean over windows) and at its end (last window)", "",
              "| single rule | statistic | per seed | mean | mixed lower on every seed |", "|---|---|---|---:|---|"]
    for column, statistic in [("grad_variance_per_weight_mean", "mean over windows"),
                              ("grad_variance_per_weight_last", "last window")]:
        variance = frame.pivot_table(index="seed", columns="variant", values=column)
        for rule in [r for r in SINGLE_RULES if r in variance and "mixed" in variance]:
            ratio = np.log10(variance["mixed"] / variance[rule]).dropna()
            if ratio.empty:
                continue
            lines.append(f"| {rule} | {statistic} | {', '.join(f'{v:+.2f}' for v in ratio)} | {ratio.mean():+.2f} | "
                         f"{'yes' if (ratio < 0).all() else 'no'} |")
    return "\n".join(lines) + "\n"


def _robustness_table(runs: list[Run], root: Path, out: Path) -> str:
    """Table 4 over seeds: robust accuracy (%) per attack and model, mean +- sd, exact / rule
    gradient for the white-box rows of models with non-bp rules; the paper's numbers beside."""
    from bionas.io import save_csv

    names = {r.name: r.labels["variant"] for r in runs if r.command == "train"}
    names = {k: ("BioNAS-DARTS" if v == "mixed" else v) for k, v in names.items()}
    from bionas.attack.run import PARTIAL

    frames, unfinished = [], []
    for r in (r for r in runs if r.command == "attack"):
        path = root / r.name / ("results.csv" if r.finished(root) else PARTIAL)
        if path.is_file():  # an unfinished run's rows so far (each written as it completed)
            frames.append(pd.read_csv(path).assign(seed=r.labels["seed"]))
            unfinished += [] if r.finished(root) else [r.name]
    if not frames:
        return "no attack rows yet\n"
    frame = pd.concat(frames, ignore_index=True)
    frame["model"] = frame["model"].map(lambda m: names.get(m, m))
    save_csv(frame, out / "runs.csv")
    models = [m for m in ROBUST_MODELS if m in set(frame.model)]
    lines = ["| attack | " + " | ".join(f"{m} (paper)" for m in models) + " |", "|---|" + "---:|" * len(models)]
    from bionas.attack.run import table_rows

    for attack in table_rows(frame["attack"]):
        cells = []
        for m in models:
            sub = frame[(frame.model == m) & (frame.attack == attack)]
            by_mode = {g: _mean_sd(sub[sub.gradient == g]["robust_acc"], 100, 1) for g in dict.fromkeys(sub.gradient)}
            cell = " / ".join(by_mode[g] for g in ("exact", "rule") if g in by_mode) or " / ".join(by_mode.values())
            paper = PAPER_ROBUST.get(attack, (math.nan,) * 6)[ROBUST_MODELS.index(m)]
            cells.append(f"{cell or '-'} ({paper:.1f})".replace("(nan)", "(-)"))
        lines.append(f"| {attack} | " + " | ".join(cells) + " |")
    n = int(frame["n_images"].iloc[0])
    lines += ["", f"Robust accuracy (%) on {n} test images per seed, mean +- sd over "
              f"{frame['seed'].nunique()} seed(s); white-box cells of models with non-bp rules read "
              "`exact / rule` (attacked through the true gradient / through the models' own rules). The "
              "transfer examples are crafted by PGD on a ResNet-20 trained by backprop (same seed)."]
    if unfinished:
        lines += ["", f"Unfinished, its rows so far: {', '.join(unfinished)} (a cell without a number: not "
                  "attacked yet)."]
    return "\n".join(lines) + "\n"


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
    _plot(frame, order, out / "accuracy.png",
          "searched cell: mixed rules vs one rule, random rules, random cell (dots: seeds)")
    return "\n".join(lines) + "\n"


def _plot(frame: pd.DataFrame, order: list[str], path: Path, title: str, highlight: str = "mixed") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bionas.io import save_figure

    variants = [v for v in order if v in set(frame.variant)]
    fig, ax = plt.subplots(figsize=(1.2 * len(variants) + 2, 3.5))
    for i, v in enumerate(variants):
        acc = frame[frame.variant == v]["test_acc"].to_numpy()
        ax.scatter(np.full(len(acc), i), acc, color="black", s=14, zorder=3)
        ax.bar(i, acc.mean(), color="tab:blue" if v == highlight else "lightgrey")
    ax.set_xticks(range(len(variants)), variants, rotation=30, ha="right")
    ax.set_ylabel("test accuracy")
    ax.set_title(title)
    save_figure(fig, path)
    plt.close(fig)


def reproduce(experiment: str | list[str], scale: str, seeds: list[int], root: str | Path, data_dir: str | None = None,
              device: str = "auto", dry_run: bool = False, table_only: bool = False, wait: bool = True) -> Path:
    """Run what is left of ``experiment`` (a name, or several in order) at ``scale`` under
    ``root/scale`` and write its table (``table_only``: write it from the runs finished so far,
    running nothing)."""
    from bionas.io import check_output_dir, save_csv

    exp = plan(experiment, scale, seeds)
    root = check_output_dir(Path(root) / scale)
    rows, left = estimate(exp.runs, scale, root)
    if dry_run:
        for r in rows:
            print(f"{r['state']:>10}  {r['command']:<11} {r['run']:<28} ~{r['estimate_s'] / 60:.0f} min")
        unit = ("GPU-hours (one GPU)" if scale == "paper"
                else "CPU core-hours (two jobs at once on 2 cores: half the wall time)")
        print(f"{sum(r['state'] != 'done' for r in rows)} of {len(rows)} runs left, about {left / 3600:.1f} {unit}")
        spent = sum(r["spent_s"] for r in rows)
        print(f"spent so far: {spent / 3600:.1f} {unit.split(' (')[0]}, the epochs and attack rows the run folders "
              "record (a killed training's epochs are counted once it finishes)")
        return root
    if not table_only:
        run_all(exp.runs, scale, root, data_dir, device, wait)
    out = _write_table(exp, root, root / output_name(experiment))
    save_csv(pd.DataFrame(estimate(exp.runs, scale, root)[0]), out / "plan.csv")
    return out


def _write_table(exp: Experiment, root: Path, out: Path) -> Path:
    """Aggregate the saved runs of ``exp`` into ``out`` (also: rebuild a table without running)."""
    from bionas.io import atomic_open

    out.mkdir(parents=True, exist_ok=True)
    table = exp.aggregate(exp.runs, root, out)
    with atomic_open(out / "table.md") as fh:
        fh.write(table)
    return out


__all__ = ["reproduce", "plan", "EXPERIMENTS", "SCALES", "Run", "Experiment", "results_frame"]
