"""``bionas attack``: the robustness suite over trained checkpoints, honest about gradients.

For every checkpoint (and every gradient mode its rules call for) each attack of the suite runs
on the same images -- the checkpoint's test split, or a seeded class-balanced subset of ``n``
images -- and the run writes, atomically, to ``config.out``:

* ``results.csv`` -- one row per (model, attack, gradient mode): clean accuracy, robust accuracy,
  attack success rate (the share of correctly classified images the attack flips), number of
  images, seconds, and every attack parameter (as columns and as JSON);
* ``table.md`` -- the paper's Table 4 layout (attacks as rows, models as columns; white-box
  cells read ``exact / rule`` when both gradients ran), followed by any gradient-masking warning;
* ``config.yaml`` and ``run_info.json`` (versions, device, models, their rules, image count),
  written once every input has been checked and before the first attack;
* while running, ``partial_results.csv``: every (model, attack, gradient mode) row as it
  completes (removed at the end). ``--resume`` continues an interrupted run from it with the
  saved config, skipping the rows it holds: each attack runs in its own isolated random state,
  so the resumed rows are the ones an uninterrupted run computes. It loads only the checkpoints
  of models with rows still to compute (and the transfer source while a transfer row is
  missing), so a finished model's weights need not be kept.

Gradient modes: ``exact`` differentiates the true network (``bionas.rules.exact_gradients``),
``rule`` each layer's learning rule; ``auto`` runs both for models with a non-bp rule and
``exact`` for backprop models. Black-box attacks (Square, one-pixel) do not use gradients and
run once; the transfer attack crafts PGD examples on ``--source`` with exact gradients. A
white-box robust accuracy above the model's Square robust accuracy is reported as a sign of
gradient masking. Every attack runs inside :func:`~bionas.attack.model.isolated_random_state`,
so no other random stream (global RNGs, brSF draws, data order) changes.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
import yaml

import bionas
from bionas.attack.config import AttackConfig
from bionas.attack.model import AttackModel, gradient_mode, isolated_random_state
from bionas.attack.suite import Variant, variants
from bionas.data import STREAMED_DATASETS, balanced_subset, load_dataset
from bionas.configs.options import check
from bionas.errors import ConfigError
from bionas.io import atomic_open, check_output_dir, save_csv, save_json
from bionas.rules.base import FeedbackRule
from bionas.rules.convert import rule_layers
from bionas.engine import resolve_device
from bionas.train.model import Trained, load_trained

log = logging.getLogger(__name__)

PARAM_COLUMNS = ["eps", "alpha", "steps", "random_start", "n_restarts", "eot_iter", "loss", "n_queries", "p_init",
                 "pixels", "popsize", "members", "seed", "source"]


@dataclass
class Target:
    name: str
    path: Path
    trained: Trained
    model: AttackModel


@dataclass
class AttackResult:
    results: pd.DataFrame
    warnings: list[str]
    out: Path

    def summary(self) -> str:
        """What the command line prints at the end: the table."""
        return (self.out / "table.md").read_text().rstrip()


def checkpoint_path(text: str) -> Path:
    """A checkpoint file, or the ``checkpoint.pt`` of a run directory."""
    path = Path(text)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise ConfigError(f"checkpoint {text} not found: give a bionas train checkpoint.pt or its run directory")
    return path


def checkpoint_file(text: str) -> Path:
    """The file ``text`` names as a checkpoint (a file, or a run directory's ``checkpoint.pt``),
    whether or not it exists."""
    path = Path(text)
    return path if path.is_file() or path.suffix in (".pt", ".pth") else path / "checkpoint.pt"


def load_target(text: str, device: torch.device) -> Target:
    path = checkpoint_path(text)
    trained = load_trained(path, device)
    name = path.parent.name if path.name == "checkpoint.pt" else path.stem
    model = AttackModel(trained.model, trained.data.mean, trained.data.std).to(device)
    return Target(name, path, trained, model)


def gradients_for(model: AttackModel, choice: str) -> list[str]:
    if choice == "both" or (choice == "auto" and not model.all_bp):
        return ["exact", "rule"]
    return ["rule"] if choice == "rule" else ["exact"]


def random_feedback(model: AttackModel) -> bool:
    """Whether some layer's feedback changes from one forward pass to the next (brSF)."""
    return any(isinstance(layer.rule, FeedbackRule) and type(layer.rule).advance is not FeedbackRule.advance
               for _, layer in rule_layers(model.net))


def test_images(target: Target, config: AttackConfig, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The test split (or its seeded ``n``-image subset) as [0, 1] floats (N, C, H, W) and labels."""
    data = target.trained.data
    if data.name in STREAMED_DATASETS:
        raise ConfigError(f"attacks need the test split in memory; {data.name} is streamed (not supported yet)")
    data_dir = config.data_dir or target.trained.config.data_dir
    test = load_dataset(data.name, data_dir, "test")
    if config.n is not None and config.n < len(test):
        test = test.subset(balanced_subset(test.labels, config.n, config.seed))
    return test.images.to(device).float().div_(255.0), test.labels.to(device)


@torch.no_grad()
def predict(model: AttackModel, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([model(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


def effective_params(variant: Variant, model: AttackModel, gradient: str, config: AttackConfig) -> dict:
    """The variant's parameters for this model and mode (APGD averages over random feedback)."""
    params = dict(variant.params)
    if variant.label == "APGD" and gradient == "rule" and random_feedback(model):
        params["eot_iter"] = config.apgd_eot_iter
    return params


def attack_seed(seed: int, *key: str) -> int:
    """A seed for one (model, attack, gradient) row: the same in every process, whatever ran
    before it, so a resumed run recomputes exactly the rows an uninterrupted run computes."""
    import zlib

    return (seed * 1_000_003 + zlib.crc32("|".join(key).encode())) % 2**31


def craft(model: AttackModel, variant: Variant, params: dict, gradient: str | None, x: torch.Tensor,
          y: torch.Tensor, batch_size: int, on_batch=None, seed: int = 0) -> torch.Tensor:
    """Adversarial versions of ``x`` (batch by batch), with the random state left as it was.
    Each batch's random draws (PGD's random start, ...) come from ``seed`` and the batch index."""
    import random

    import numpy as np

    out = []
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        with isolated_random_state(model), gradient_mode(model, gradient or "exact"):
            torch.manual_seed(seed + i)
            np.random.seed((seed + i) % 2**32)
            random.seed(seed + i)
            out.append(variant.build(model, params)(xb, yb).detach())
        if on_batch is not None:
            on_batch()
    return torch.cat(out)


def transfer_examples(config: AttackConfig, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> torch.Tensor:
    from bionas.attack.suite import ATTACKS

    source = load_target(config.source, device)
    pgd = ATTACKS.get("pgd")(dataclasses.replace(config, pgd_steps=config.transfer_steps, pgd_random_start=True))[0]
    return craft(source.model, pgd, dict(pgd.params), "exact", x, y, config.batch_size,
                 seed=attack_seed(config.seed, "source", pgd.label))


PARTIAL = "partial_results.csv"


def expected_rows(config: AttackConfig, gradients: list[str], is_source: bool) -> set[tuple[str, str]]:
    """The (attack, gradient mode) rows a run computes for a model whose rules call for
    ``gradients``; ``is_source``: the model is the transfer source (no transfer row)."""
    rows = {("Clean", "none")}
    for v in variants(config):
        if v.kind == "transfer":
            if config.source and not is_source:
                rows.add((v.label, "source-exact"))
        else:
            rows |= {(v.label, g) for g in (gradients if v.kind == "white" else ["none"])}
    return rows


def outstanding(config: AttackConfig, models: dict[str, dict], done: list[dict]) -> tuple[list[str], bool]:
    """Of an unfinished run: the checkpoints (as ``config`` names them) with rows still to compute,
    and whether the transfer source is still needed. ``models`` is ``run_info.json``'s record
    of the run's models in checkpoint order (name, gradient modes); ``done`` the rows so far."""
    if len(models) != len(config.checkpoints):  # two checkpoints of one name: no record to go by
        return list(config.checkpoints), bool(config.source)
    finished = {(r["model"], r["attack"], r["gradient"]) for r in done}
    source = checkpoint_file(config.source).resolve() if config.source else None
    todo, transfer = [], False
    for text, (name, info) in zip(config.checkpoints, models.items()):
        is_source = checkpoint_file(text).resolve() == source
        missing = {(name, *row) for row in expected_rows(config, info["gradients"], is_source)} - finished
        if missing:
            todo.append(text)
            transfer |= any(gradient == "source-exact" for _, _, gradient in missing)
    return todo, transfer


def _saved(out: Path) -> tuple[AttackConfig, list[dict]]:
    """The config an attack run in ``out`` saved and the rows it has finished so far."""
    from bionas.configs import load_yaml_mapping
    from bionas.configs.options import apply_options

    saved = check(apply_options(AttackConfig(), load_yaml_mapping(out / "config.yaml", "attack config"),
                                str(out / "config.yaml"), "attack"))
    rows = pd.read_csv(out / PARTIAL, keep_default_na=False).to_dict("records") if (out / PARTIAL).is_file() else []
    return saved, rows


def checkpoints_done(out: str | Path) -> set[Path]:
    """The checkpoint files (resolved) the unfinished attack run in ``out`` no longer reads: those
    of models with every row computed, and the transfer source once no transfer row is missing
    (unless it is also a model still to attack). Empty when the run has not recorded its models."""
    out = Path(out)
    if not ((out / "config.yaml").is_file() and (out / "run_info.json").is_file()):
        return set()
    config, done = _saved(out)
    todo, transfer = outstanding(config, json.loads((out / "run_info.json").read_text())["models"], done)
    still = {checkpoint_file(t).resolve() for t in todo}
    files = {checkpoint_file(t).resolve() for t in config.checkpoints} - still
    if config.source and not transfer and checkpoint_file(config.source).resolve() not in still:
        files.add(checkpoint_file(config.source).resolve())
    return files


def _resumed(config: AttackConfig, out: Path, overrides: dict | None) -> tuple[AttackConfig, list[dict]]:
    """The saved config of the unfinished run in ``out`` and the rows it finished."""
    from bionas.configs.options import check_resume

    if (out / "results.csv").exists():
        raise ConfigError(f"{out} holds a finished attack run (results.csv); nothing to resume")
    if not (out / "config.yaml").is_file():
        raise ConfigError(f"nothing to resume: {out / 'config.yaml'} does not exist (run without --resume to start)")
    saved, rows = _saved(out)
    check_resume(saved, overrides, ("progress", "out", "device"), "attack")
    return dataclasses.replace(saved, out=config.out, progress=config.progress, device=config.device), rows


def run_attack(config: AttackConfig, resume: bool = False, overrides: dict | None = None) -> AttackResult:
    """Run the configured attacks on every checkpoint; returns the results table. ``resume``
    continues the unfinished run in ``config.out`` (only ``out``, ``progress`` and ``device`` are
    read from ``config``; ``overrides``, the command line's options, must agree with the saved run)."""
    from tqdm import tqdm

    out = check_output_dir(config.out)
    done: list[dict] = []
    if resume:
        config, done = _resumed(config, out, overrides)
        log.info("resuming %s: %d result rows kept", out, len(done))
    else:
        config = check(config)
        found = [n for n in ("results.csv", PARTIAL, "config.yaml") if (out / n).exists()]
        if found:
            raise ConfigError(f"{out} already holds an attack run ({', '.join(found)}); choose another --out, or "
                              f"pass --resume to continue it if it is unfinished")
    device = resolve_device(config.device)
    chosen = variants(config)
    if any(v.kind == "transfer" for v in chosen) and not config.source:
        log.warning("the transfer attack needs --source CHECKPOINT; skipping it")
        chosen = [v for v in chosen if v.kind != "transfer"]
    names, todo, need_source = None, config.checkpoints, bool(config.source)
    if resume and (out / "run_info.json").is_file():  # load only the models with rows still to compute
        models = json.loads((out / "run_info.json").read_text())["models"]
        todo, need_source = outstanding(config, models, done)
        names = list(models) if len(models) == len(config.checkpoints) else None
        if len(todo) < len(config.checkpoints):
            log.info("%d of %d model(s) have every row already: their checkpoints are not read",
                     len(config.checkpoints) - len(todo), len(config.checkpoints))
    targets = [load_target(c, device) for c in todo]
    names = names or [t.name for t in targets]
    datasets = {t.name: t.trained.data.name for t in targets}
    if config.source and need_source:
        source_data = load_trained(checkpoint_path(config.source)).data.name
        datasets[f"source {config.source}"] = source_data
    if len(set(datasets.values())) > 1:
        raise ConfigError("checkpoints of different datasets cannot share one attack run: "
                          + ", ".join(f"{k} on {v}" for k, v in datasets.items()) + "; attack them separately")
    x, y = test_images(targets[0], config, device) if targets else (torch.empty(0), torch.empty(0))
    if targets:
        log.info("attacking %d model(s) on %d %s test images: %s", len(targets), len(x),
                 targets[0].trained.data.name, ", ".join(v.label for v in chosen))
    if not resume:  # every input checked: record the run before the first attack
        with atomic_open(out / "config.yaml") as fh:
            yaml.safe_dump(config.to_dict(), fh, sort_keys=False)
        save_json({"bionas_version": bionas.__version__, "torch_version": torch.__version__, "device": str(device),
                   "dataset": targets[0].trained.data.name, "images": len(x),
                   "models": {t.name: {"checkpoint": str(t.path), "rules": sorted(t.model.rule_names),
                                       "gradients": gradients_for(t.model, config.gradient),
                                       "random_feedback": random_feedback(t.model)} for t in targets}},
                  out / "run_info.json")
    finished = {(r["model"], r["attack"], r["gradient"]) for r in done}
    rows = list(done)

    def record(row: dict) -> None:  # every row on disk as soon as it exists
        rows.append(row)
        save_csv(pd.DataFrame(rows), out / PARTIAL)

    transfer_x = None
    source_path = checkpoint_file(config.source).resolve() if config.source else None
    if any(v.kind == "transfer" for v in chosen) and any((t.name, v.label, "source-exact") not in finished
                                                         for t in targets for v in chosen if v.kind == "transfer"
                                                         if t.path.resolve() != source_path):
        start = time.perf_counter()
        transfer_x = transfer_examples(config, x, y, device)
        transfer_seconds = time.perf_counter() - start

    batches = -(-len(x) // config.batch_size)
    for target in targets:
        model = target.model
        start = time.perf_counter()
        clean = predict(model, x, config.batch_size) == y
        clean_seconds = time.perf_counter() - start
        base = {"model": target.name, "checkpoint": str(target.path),
                "rules": "+".join(sorted(model.rule_names)) or "bp", "clean_acc": float(clean.float().mean()),
                "n_images": len(x)}
        if (target.name, "Clean", "none") not in finished:
            record({**base, "attack": "Clean", "gradient": "none", "robust_acc": base["clean_acc"],
                    "success_rate": 0.0, "seconds": clean_seconds, "params": "{}"})
        modes = gradients_for(model, config.gradient)
        work = sum(len(modes) if v.kind == "white" else 1 for v in chosen if v.kind != "transfer") * batches
        bar = tqdm(total=work, desc=target.name, leave=False, disable=None if config.progress else True)
        for variant in chosen:
            if variant.kind == "transfer":
                if target.path.resolve() == source_path:  # crafted on this model: white-box, not transfer
                    log.info("%s is the transfer source: no transfer row (it would be a white-box PGD on itself)",
                             target.name)
                elif (target.name, variant.label, "source-exact") not in finished:
                    robust = predict(model, transfer_x, config.batch_size) == y
                    record(_row(base, variant.label, "source-exact", clean, robust, transfer_seconds,
                                variant.params))
                continue
            for gradient in (modes if variant.kind == "white" else [None]):
                if (target.name, variant.label, gradient or "none") in finished:
                    bar.update(batches)
                    continue
                params = effective_params(variant, model, gradient or "exact", config)
                bar.set_postfix(attack=variant.label, gradient=gradient or "-")
                start = time.perf_counter()
                adv = craft(model, variant, params, gradient, x, y, config.batch_size, on_batch=lambda: bar.update(1),
                            seed=attack_seed(config.seed, target.name, variant.label, gradient or "none"))
                robust = predict(model, adv, config.batch_size) == y
                seconds = time.perf_counter() - start
                record(_row(base, variant.label, gradient or "none", clean, robust, seconds, params))
                log.info("%s %s (%s gradient): robust accuracy %.3f (clean %.3f), %.1f s", target.name,
                         variant.label, gradient or "no", rows[-1]["robust_acc"], base["clean_acc"], seconds)
        bar.close()

    results = _in_run_order(pd.DataFrame(rows), names)
    warnings = masking_warnings(results)
    for w in warnings:
        log.warning(w)
    info = json.loads((out / "run_info.json").read_text())
    save_json({**info, "warnings": warnings}, out / "run_info.json")
    save_csv(results, out / "results.csv")
    with atomic_open(out / "table.md") as fh:
        fh.write(markdown_table(results, warnings))
    (out / "partial_results.csv").unlink(missing_ok=True)
    return AttackResult(results, warnings, out)


def _in_run_order(results: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """Rows grouped by model in the order of the checkpoints (a resumed run appends its rows
    after those it kept), each model's rows in the order they were computed."""
    order = {name: i for i, name in enumerate(names)}
    return results.sort_values("model", key=lambda m: m.map(order), kind="stable").reset_index(drop=True)


def _row(base: dict, attack: str, gradient: str, clean: torch.Tensor, robust: torch.Tensor, seconds: float,
         params: dict) -> dict:
    flipped = clean & ~robust
    row = {**base, "attack": attack, "gradient": gradient, "robust_acc": float(robust.float().mean()),
           "success_rate": float(flipped.sum()) / max(int(clean.sum()), 1), "seconds": seconds,
           "params": json.dumps(params, sort_keys=True)}
    row.update({k: params.get(k) for k in PARAM_COLUMNS})
    return row


# white-box attacks that maximise the classification loss; TPGD maximises the KL divergence from
# the clean prediction (TRADES) and is weaker by design, so its accuracy says nothing of masking
MISCLASSIFYING_ATTACKS = ("FGSM", "PGD", "APGD")


def masking_warnings(results: pd.DataFrame) -> list[str]:
    """One line per (model, white-box attack, gradient) whose robust accuracy exceeds Square's by
    more than sampling noise (two binomial standard errors of Square's accuracy on ``n_images``)."""
    warnings = []
    for model, group in results.groupby("model", sort=False):
        square = group[group["attack"] == "Square"]
        if square.empty:
            continue
        black = float(square["robust_acc"].iloc[0])
        noise = 2 * math.sqrt(max(black * (1 - black), 1e-12) / float(square["n_images"].iloc[0]))
        white = group[group["attack"].isin(MISCLASSIFYING_ATTACKS)]
        for _, r in white[white["robust_acc"] > black + noise].iterrows():
            warnings.append(f"possible gradient masking: {model} keeps {r['robust_acc']:.1%} under {r['attack']} "
                            f"with {r['gradient']} gradients but only {black:.1%} under the black-box Square attack")
    return warnings


def table_rows(labels) -> list[str]:
    """The distinct row labels in table order: Clean, then each attack's rows in registry order (the
    rows a default config gives every attack), then any other label in order of appearance."""
    from bionas.attack.suite import ATTACKS, variants

    ranking = ["Clean", *(v.label for v in variants(AttackConfig(attacks=list(ATTACKS))))]
    labels = list(dict.fromkeys(labels))
    return sorted(labels, key=lambda a: (ranking.index(a), 0) if a in ranking else (len(ranking), labels.index(a)))


def markdown_table(results: pd.DataFrame, warnings: list[str]) -> str:
    """Attacks as rows, models as columns (accuracy in %); white-box cells ``exact / rule``."""
    models = list(dict.fromkeys(results["model"]))
    lines = ["| Attack | " + " | ".join(models) + " |", "|---|" + "---:|" * len(models)]
    for attack in table_rows(results["attack"]):
        cells = []
        for model in models:
            sub = results[(results["model"] == model) & (results["attack"] == attack)]
            by_mode = dict(zip(sub["gradient"], sub["robust_acc"]))
            if not by_mode:
                cells.append("-")
            elif "exact" in by_mode and "rule" in by_mode:
                cells.append(f"{100 * by_mode['exact']:.1f} / {100 * by_mode['rule']:.1f}")
            else:
                cells.append(f"{100 * next(iter(by_mode.values())):.1f}")
        lines.append(f"| {attack} | " + " | ".join(cells) + " |")
    n = int(results["n_images"].iloc[0]) if len(results) else 0
    text = "\n".join(lines) + (f"\n\nRobust accuracy (%) on {n} test images. White-box cells of models with "
                               f"non-bp rules read `exact / rule`: attacked through the true gradient / through "
                               f"the models' own learning rules. Black-box attacks (OPk, Square) use no gradient.\n")
    if (results["attack"] == "Transfer").any():
        text += ("Transfer: PGD examples crafted on the source model with exact gradients; the source "
                 "itself has no transfer cell (it would be a white-box attack on itself).\n")
    if warnings:
        text += "\n" + "\n".join(f"* {w}" for w in warnings) + "\n"
    return text
