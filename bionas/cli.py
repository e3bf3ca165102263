"""``bionas`` command line: parses arguments, builds a config, calls the library.

Every command is also callable from Python; nothing here holds logic of its own. Errors that are
the user's to fix (:class:`bionas.errors.BionasError`) print one line and exit with status 2.
"""
from __future__ import annotations

import argparse
import logging
import sys

from bionas import __version__
from bionas.errors import BionasError

def _add_data_options(p: argparse.ArgumentParser, default_dataset: str = "auto") -> None:
    p.add_argument("--dataset", default=default_dataset,
                   help="cifar10, cifar100, digits, or auto (cifar10 when a data directory is known, "
                        "else scikit-learn's digits); default: %(default)s")
    p.add_argument("--data-dir", default=None, help="dataset directory (default: $BIONAS_DATA)")


def _add_run_options(p: argparse.ArgumentParser, out: str) -> None:
    p.add_argument("--out", default=out, help="output directory (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")


def _add_config_options(p: argparse.ArgumentParser, set_help: str, resume_help: str | None = None) -> None:
    """--config, --set (and --resume), --no-progress: the layering every run command shares."""
    p.add_argument("--config", default=None, metavar="YAML", help="options from a YAML file (e.g. a run's config.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=set_help)
    if resume_help:
        p.add_argument("--resume", action="store_true", help=resume_help)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bionas",
        description="Neural-architecture search over (operation, learning rule) pairs.",
    )
    parser.add_argument("--version", action="version", version=f"bionas {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("quickstart", help="train a small network per learning rule (and one mixing them all)",
                       description="Train one small network per learning rule, plus one that mixes every "
                                   "rule, briefly on real data; writes results.csv and loss_curves.png.")
    _add_data_options(p)
    _add_run_options(p, "runs/quickstart")
    p.add_argument("--rules", nargs="+", default=None, metavar="RULE",
                   help="rules to train ('mixed' = all in one network); default: every feedback rule + mixed")
    p.add_argument("--steps", type=int, default=150, help="SGD steps per network (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--train-per-class", type=int, default=500, help="training images per class (default: %(default)s)")
    p.add_argument("--test-per-class", type=int, default=100, help="test images per class (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(handler=_quickstart)

    p = sub.add_parser("search", help="search a cell over (op, rule) pairs: DARTS or EG-NAS (CMA-ES)",
                       description="Search a cell whose edges choose an (operation, learning rule) pair. "
                                   "Options resolve as: paper defaults < --preset < --config < flags and --set. "
                                   "Writes genotype.json, the plots, logs and a checkpoint per epoch to --out.")
    p.add_argument("--method", default=None, help="search strategy: darts (default) or eg")
    p.add_argument("--space", default=None, help="search space name in search_spaces/ or a YAML path (default: bionas)")
    p.add_argument("--dataset", default=None, help="cifar10, cifar100, digits, or auto (default: auto)")
    p.add_argument("--data-dir", default=None, help="dataset directory (default: $BIONAS_DATA)")
    p.add_argument("--out", default=None, help="output directory (default: runs/search)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: 0)")
    p.add_argument("--epochs", type=int, default=None, help="search epochs (default: 50)")
    p.add_argument("--batch-size", type=int, default=None, help="default: 256")
    p.add_argument("--channels", type=int, default=None, help="supernet initial channels (default: the space's)")
    p.add_argument("--cells", type=int, default=None, help="supernet cells (default: the space's)")
    p.add_argument("--order", choices=["first", "second"], default=None, help="DARTS gradient order (default: first)")
    p.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:1, ... (default: auto)")
    p.add_argument("--preset", default=None, help="named preset from bionas/configs/search.yaml, e.g. smoke")
    _add_config_options(p, set_help="any config field, e.g. --set lr=0.05 --set arch_gradient=exact (repeatable)",
                        resume_help="continue the run saved in --out")
    p.set_defaults(handler=_search)

    p = sub.add_parser("train", help="retrain a genotype's cell network, or a single-rule ResNet baseline",
                       description="Train the DARTS evaluation network of a genotype (every edge keeps its "
                                   "learning rule) or a ResNet baseline with one rule. Options resolve as: the "
                                   "paper's recipe for the model and dataset < --preset < --config < flags and --set. "
                                   "Data-parallel under torchrun (torchrun --nproc_per_node N -m bionas train ...). "
                                   "Writes train_log.csv, curves.png, results.json and a checkpoint per epoch to --out.")
    p.add_argument("--genotype", default=None, metavar="NAME|FILE",
                   help="registered genotype (darts_v1, darts_v2) or a genotype file (a search's genotype.json)")
    p.add_argument("--model", default=None, help="resnet20 or resnet56 for a single-rule baseline (default: the "
                                                 "cell network of --genotype)")
    p.add_argument("--rule", default=None, help="one learning rule on every weighted layer or edge (bp, fa, usf, ...)")
    p.add_argument("--rules", choices=["random"], default=None,
                   help="random: each weighted edge draws its rule among those --space allows (seeded by --seed)")
    p.add_argument("--space", default=None, help="search space for --rules random (default: bionas)")
    p.add_argument("--dataset", default=None,
                   help="cifar10, cifar100, imagenet16-120, imagenet, digits, or auto (default: auto)")
    p.add_argument("--data-dir", default=None, help="dataset directory (default: $BIONAS_DATA)")
    p.add_argument("--out", default=None, help="output directory (default: runs/train)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: 0)")
    p.add_argument("--epochs", type=int, default=None, help="default: the recipe's (600 for CIFAR)")
    p.add_argument("--batch-size", type=int, default=None, help="global batch size (default: the recipe's)")
    p.add_argument("--lr", type=float, default=None, help="initial learning rate (default: the recipe's)")
    p.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:1, ... (default: auto)")
    p.add_argument("--preset", default=None, help="named preset from bionas/configs/train.yaml, e.g. smoke")
    _add_config_options(p, set_help="any config field, e.g. --set channels=16 --set drop_path=0.3 (repeatable)",
                        resume_help="continue the run saved in --out")
    p.set_defaults(handler=_train)

    p = sub.add_parser("attack", help="adversarial robustness of trained checkpoints (torchattacks)",
                       description="Attack trained checkpoints with FGSM, PGD, TPGD, APGD, Square, one-pixel and "
                                   "transfer attacks on their test split; white-box attacks through the exact "
                                   "gradient and/or the models' own learning rules. Writes results.csv and table.md.")
    p.add_argument("--checkpoint", nargs="+", default=None, metavar="CKPT",
                   help="bionas train checkpoint files or run directories")
    p.add_argument("--suite", default="quick", help="quick or full (bionas/configs/attack.yaml; default: quick)")
    p.add_argument("--attacks", nargs="+", default=None, metavar="ATTACK",
                   help="instead of the suite's: fgsm pgd tpgd apgd square onepixel transfer")
    p.add_argument("--gradient", choices=["auto", "exact", "rule", "both"], default=None,
                   help="white-box gradient: exact, the rules' own, or both (auto: both for non-bp models)")
    p.add_argument("--source", default=None, metavar="CKPT", help="checkpoint the transfer attack crafts on")
    p.add_argument("--n", type=int, default=None, help="seeded class-balanced subset of the test split (default: all)")
    p.add_argument("--eps", type=float, default=None, help="L-inf budget on [0, 1] images (default: 8/255)")
    p.add_argument("--alpha", type=float, default=None, help="step size (default: 2/255)")
    p.add_argument("--data-dir", default=None, help="dataset directory (default: the checkpoint's, or $BIONAS_DATA)")
    p.add_argument("--out", default=None, help="output directory (default: runs/attack)")
    p.add_argument("--seed", type=int, default=None, help="seed of the subset and of the attacks (default: 0)")
    p.add_argument("--batch-size", type=int, default=None, help="images per attack batch (default: 250)")
    p.add_argument("--device", default=None, help="auto, cpu, cuda, ... (default: auto)")
    _add_config_options(p, set_help="any config field, e.g. --set square_queries=5000 --set apgd_eot_iter=10")
    p.set_defaults(handler=_attack)

    p = sub.add_parser("hebbian", help="a Hebbian CNN trained without labels, read out by a linear classifier",
                       description="The 3-layer SoftHebb-style network of the Hebbian-CNN paper: one epoch of "
                                   "local Hebbian learning (no labels), then a linear classifier on the frozen "
                                   "features; or the same network by backprop. Setups: bionas/configs/hebbian.yaml.")
    p.add_argument("--setup", default="hard_wta_bcm_surround",
                   help="softhebb, hard_wta_instar, hard_wta_bcm, hard_wta_bcm_surround, backprop or random_features "
                        "(default: hard_wta_bcm_surround)")
    _add_data_options(p, default_dataset="cifar10")
    p.add_argument("--per-class", type=int, default=None, help="training images per class (default: all)")
    p.add_argument("--test-per-class", type=int, default=None, help="test images per class (default: all)")
    p.add_argument("--epochs", type=int, default=None, help="classifier (or backprop) epochs (default: 20)")
    _add_run_options(p, out="runs/hebbian")
    p.add_argument("--device", default=None, help="auto, cpu, cuda, ... (default: auto)")
    _add_config_options(p, set_help="any config field, e.g. --set hebbian_epochs=2 --set whiten=false (repeatable)",
                        resume_help="continue the run saved in --out (its hebbian layers, or the backprop epochs done)")
    p.set_defaults(handler=_hebbian)

    p = sub.add_parser("rules", help="list the registered learning rules")
    p.set_defaults(handler=_list_rules)
    p = sub.add_parser("ops", help="list the registered operations")
    p.set_defaults(handler=_list_ops)
    return parser


def _first_line(obj) -> str:
    return (obj.__doc__ or "").strip().splitlines()[0] if obj.__doc__ else ""


def _list_rules(args) -> int:
    from bionas import rules
    from bionas.rules.convert import rule_options

    print(f"{'rule':<6} {'kind':<9} {'options':<22} description")
    for name in rules.RULES:
        cls = rules.RULES.get(name)
        options = ", ".join(f"{k}={v!r}" for k, v in rule_options(cls).items()) or "-"
        print(f"{name:<6} {cls.kind:<9} {options:<22} {_first_line(cls)}")
    return 0


def _list_ops(args) -> int:
    from bionas import ops

    print(f"{'op':<13} {'params@C=16':>11}  description")
    for name in ops.OPS:
        n = sum(p.numel() for p in ops.create_op(name, 16, 1).parameters())
        print(f"{name:<13} {n:>11}  {_first_line(ops.OPS.get(name))}")
    return 0


def _quickstart(args) -> int:
    from bionas.quickstart import QuickstartConfig, run_quickstart

    config = QuickstartConfig(dataset=args.dataset, data_dir=args.data_dir, steps=args.steps,
                              batch_size=args.batch_size, lr=args.lr, channels=args.channels,
                              train_per_class=args.train_per_class, test_per_class=args.test_per_class,
                              seed=args.seed, out=args.out, progress=not args.no_progress)
    if args.rules:
        config.rules = args.rules
    results = run_quickstart(config)
    cols = ["network", "first_loss", "last_loss", "test_acc", "mean_alignment_deg", "seconds"]
    print(results[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"wrote {args.out}/results.csv, curves.csv, loss_curves.png, config.json")
    return 0


def _search(args) -> int:
    from bionas.search import SearchConfig, resolve_config, run_search
    from bionas.search.config import parse_assignment

    flags = {"method": args.method, "space": args.space, "dataset": args.dataset, "data_dir": args.data_dir,
             "out": args.out, "seed": args.seed, "epochs": args.epochs, "batch_size": args.batch_size,
             "channels": args.channels, "cells": args.cells, "order": args.order, "device": args.device}
    overrides = {k: v for k, v in flags.items() if v is not None}
    overrides.update(parse_assignment(text) for text in args.set)
    if args.no_progress:
        overrides["progress"] = False
    if args.resume:
        # the run's own config.yaml rules; flags may only repeat it (checked by run_search)
        out = overrides.get("out", SearchConfig.out)
        config = SearchConfig(out=out, progress=not args.no_progress)
        result = run_search(config, resume=True, overrides=overrides)
    else:
        config = resolve_config(args.preset, args.config, overrides)
        result = run_search(config)
    history = result.history
    if len(history):
        last = history.iloc[-1]
        print(f"searched {len(history)} epochs: final train acc {last['train_acc']:.3f}, "
              f"val acc {last['val_acc']:.3f}, {history['seconds'].sum():.0f} s in all")
    print(f"genotype: {result.genotype.to_darts_literal()}")
    print(f"wrote {result.out}/: {', '.join(sorted(p.name for p in result.out.iterdir() if p.is_file()))}")
    return 0


def _train(args) -> int:
    from bionas.configs.options import parse_assignment
    from bionas.train import TrainConfig, resolve_config, run_train

    flags = {"genotype": args.genotype, "model": args.model, "rule": args.rule, "space": args.space,
             "dataset": args.dataset, "data_dir": args.data_dir, "out": args.out, "seed": args.seed,
             "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "device": args.device}
    overrides = {k: v for k, v in flags.items() if v is not None}
    if args.rules == "random":
        overrides["random_rules"] = True
    overrides.update(parse_assignment(text) for text in args.set)
    if args.no_progress:
        overrides["progress"] = False
    if args.resume:
        config = TrainConfig(out=overrides.get("out", TrainConfig.out), progress=not args.no_progress,
                             device=overrides.get("device", TrainConfig.device))
        result = run_train(config, resume=True, overrides=overrides)
    else:
        result = run_train(resolve_config(args.preset, args.config, overrides))
    from bionas.train.distributed import from_environment

    if from_environment().main:
        history = result.history
        if len(history):
            print(f"trained {len(history)} epochs in {history['seconds'].sum():.0f} s: final train acc "
                  f"{history['train_acc'].iloc[-1]:.3f}, test acc {result.test_acc:.4f}")
        print(f"wrote {result.out}/: {', '.join(sorted(p.name for p in result.out.iterdir() if p.is_file()))}")
    return 0


def _attack(args) -> int:
    from bionas.attack import resolve_config, run_attack
    from bionas.configs.options import parse_assignment

    flags = {"checkpoints": args.checkpoint, "attacks": args.attacks, "gradient": args.gradient,
             "source": args.source, "n": args.n, "eps": args.eps, "alpha": args.alpha, "data_dir": args.data_dir,
             "out": args.out, "seed": args.seed, "batch_size": args.batch_size, "device": args.device}
    overrides = {k: v for k, v in flags.items() if v is not None}
    overrides.update(parse_assignment(text) for text in args.set)
    if args.no_progress:
        overrides["progress"] = False
    result = run_attack(resolve_config(args.suite, args.config, overrides))
    print(open(result.out / "table.md").read().rstrip())
    print(f"wrote {result.out}/: {', '.join(sorted(p.name for p in result.out.iterdir() if p.is_file()))}")
    return 0


def _hebbian(args) -> int:
    from bionas.configs.options import parse_assignment
    from bionas.hebbian import resolve_config, run_hebbian

    flags = {"dataset": args.dataset, "data_dir": args.data_dir, "per_class": args.per_class,
             "test_per_class": args.test_per_class, "out": args.out, "seed": args.seed, "device": args.device}
    overrides = {k: v for k, v in flags.items() if v is not None}
    if args.epochs is not None:
        overrides["classifier_epochs" if args.setup != "backprop" else "backprop_epochs"] = args.epochs
    overrides.update(parse_assignment(text) for text in args.set)
    if args.no_progress:
        overrides["progress"] = False
    result = run_hebbian(resolve_config(args.setup, args.config, overrides), resume=args.resume)
    r = result.results
    print(f"{r['setup']}: test acc {r['test_acc']:.4f} (best epoch {r['best_epoch']}: {r['best_test_acc']:.4f}) "
          f"on {r['test_images']} test images, {r['wall_seconds']:.0f} s")
    print(f"wrote {result.out}/: {', '.join(sorted(p.name for p in result.out.iterdir() if p.is_file()))}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return args.handler(args)
    except BionasError as err:
        print(f"bionas: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
