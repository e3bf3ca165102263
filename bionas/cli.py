"""``bionas`` command line: parses arguments, builds a config, calls the library.

Each run command is a config dataclass plus a ``run_*`` function. Its flags are generated from
the dataclass fields that declare one (``option(..., flag="--lr")``), with the field's help text
and default; every other field is set with ``--set KEY=VALUE``. Options layer as defaults <
``--preset`` < ``--config`` < flags and ``--set``. Errors that are the user's to fix
(:class:`bionas.errors.BionasError`) print one line and exit with status 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import sys
import typing

from bionas import __version__
from bionas.errors import BionasError

# command: (module, config class, run function, default preset, help, extra flags: flag -> (option key, argparse kw))
COMMANDS = {
    "search": ("bionas.search", "SearchConfig", "run_search", None,
               "search a cell over (op, rule) pairs: DARTS or EG-NAS (CMA-ES); writes genotype.json, plots, logs",
               {"--order": ("strategy_options.darts.order", {"choices": ["first", "second"],
                                                            "help": "DARTS gradient order"})}),
    "train": ("bionas.train", "TrainConfig", "run_train", None,
              "retrain a genotype's cell network (each edge keeps its rule) or a single-rule ResNet baseline; "
              "data-parallel under torchrun",
              {"--rules": ("random_rules", {"choices": ["random"], "help": "random: each weighted edge draws its "
                                                                         "rule among those --space allows"})}),
    "attack": ("bionas.attack", "AttackConfig", "run_attack", "quick",
               "adversarial robustness of trained checkpoints (torchattacks): FGSM, PGD, TPGD, APGD, Square, "
               "one-pixel, transfer",
               {"--checkpoint": ("checkpoints", {"nargs": "+", "help": "bionas train checkpoints or run directories"}),
                "--attacks": ("attacks", {"nargs": "+", "help": "instead of the preset's attacks"})}),
    "hebbian": ("bionas.hebbian", "HebbianConfig", "run_hebbian", "hard_wta_bcm_surround",
                "a Hebbian CNN learning without labels, read out by a linear classifier (or trained by backprop)",
                {"--epochs": ("epochs", {"type": int, "help": "classifier epochs (backprop preset: its epochs)"})}),
    "quickstart": ("bionas.quickstart", "QuickstartConfig", "run_quickstart", None,
                   "train a small network per learning rule (and one mixing them all)",
                   {"--rules": ("rules", {"nargs": "+", "help": "rules to train ('mixed' = all in one network)"})}),
}
RESUMABLE = {"search", "train", "hebbian"}
PRESETS = {"search", "train", "attack", "hebbian"}


def _flags(parser: argparse.ArgumentParser, config_type: type) -> None:
    """One flag per field that declares one; its type, help text and default from the field."""
    hints = typing.get_type_hints(config_type)
    for f in dataclasses.fields(config_type):
        if f.metadata.get("flag"):
            tp = next((t for t in typing.get_args(hints[f.name]) if t is not type(None)), hints[f.name])
            default = f.default if f.default is not dataclasses.MISSING else None
            parser.add_argument(f.metadata["flag"], dest=f"opt_{f.name}", type=tp, default=None, metavar=f.name.upper(),
                                help=f"{f.metadata['help']} (default: {default})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bionas", description="Neural-architecture search over "
                                     "(operation, learning rule) pairs.")
    parser.add_argument("--version", action="version", version=f"bionas {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    from bionas import configs

    for name, (module, cls, _, preset, help_text, extra) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(handler=_run, extra=extra)
        _flags(p, getattr(importlib.import_module(module), cls))
        for flag, (key, kw) in extra.items():
            p.add_argument(flag, dest=f"extra_{key}", default=None, **kw)
        if name in PRESETS:
            names = ", ".join(configs.presets(name))
            p.add_argument("--preset", *(["--suite"] if name == "attack" else []), default=preset,
                           help=f"named preset of bionas/configs/{name}.yaml: {names} (default: {preset})")
        p.add_argument("--config", metavar="YAML", help="options from a YAML file (e.g. a run's config.yaml)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="any config field, e.g. --set lr=0.05 or --set rule_options.usf.scale=1.0 (repeatable)")
        if name in RESUMABLE:
            p.add_argument("--resume", action="store_true", help="continue the run saved in --out")
        p.add_argument("--no-progress", action="store_true", help="no progress bars")
    for name, handler, text in (("rules", _list_rules, "list the learning rules"), ("ops", _list_ops, "list the ops")):
        sub.add_parser(name, help=text).set_defaults(handler=handler)
    return parser


def _overrides(args) -> dict:
    from bionas.configs.options import parse_assignment

    out = {k[4:]: v for k, v in vars(args).items() if k.startswith("opt_") and v is not None}
    for key, _ in args.extra.values():
        value = getattr(args, f"extra_{key}")
        if value is not None:
            out[key] = value == "random" if key == "random_rules" else value
    out.update(parse_assignment(text) for text in args.set)
    if args.no_progress:
        out["progress"] = False
    return out


def _run(args) -> int:
    from bionas.configs.options import resolve

    module, cls, run, _, _, _ = COMMANDS[args.command]
    module = importlib.import_module(module)
    config_type, run = getattr(module, cls), getattr(module, run)
    overrides = _overrides(args)
    if args.command == "hebbian" and "epochs" in overrides:  # one flag for the epochs that the preset trains
        learning = resolve(config_type, "hebbian", args.preset, args.config, {}).learning
        overrides["backprop_epochs" if learning == "backprop" else "classifier_epochs"] = overrides.pop("epochs")
    if getattr(args, "resume", False) and args.command != "hebbian":
        # the run's saved config rules; the command line may only repeat it (checked by the run)
        known = {f.name for f in dataclasses.fields(config_type)}
        stub = config_type(**{k: v for k, v in overrides.items() if k in known and k in ("out", "progress", "device")})
        result = run(stub, resume=True, overrides=overrides)
    else:
        config = resolve(config_type, args.command, getattr(args, "preset", None), args.config, overrides)
        result = run(config, resume=True) if getattr(args, "resume", False) else run(config)
    if result.summary():
        print(result.summary())
        print(f"wrote {result.out}/: {', '.join(sorted(p.name for p in result.out.iterdir() if p.is_file()))}")
    return 0


def _first_line(obj) -> str:
    return (obj.__doc__ or "").strip().splitlines()[0] if obj.__doc__ else ""


def _list_rules(args) -> int:
    from bionas import rules
    from bionas.rules.convert import rule_options

    print(f"{'rule':<8} {'kind':<9} {'options':<22} description")
    for name in rules.RULES:
        cls = rules.RULES.get(name)
        options = ", ".join(f"{k}={v!r}" for k, v in rule_options(cls).items()) or "-"
        print(f"{name:<8} {cls.kind:<9} {options:<22} {_first_line(cls)}")
    return 0


def _list_ops(args) -> int:
    from bionas import ops

    print(f"{'op':<13} {'params@C=16':>11}  description")
    for name in ops.OPS:
        n = sum(p.numel() for p in ops.create_op(name, 16, 1).parameters())
        print(f"{name:<13} {n:>11}  {_first_line(ops.OPS.get(name))}")
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
