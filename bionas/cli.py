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
import inspect
import logging
import os
import sys
import typing

from bionas import __version__
from bionas.configs.options import choices_of, parse_assignment, resolve, split_optional
from bionas.errors import BionasError, ConfigError

# command: (module, config class, run function, default preset, help, extra flags: flag -> (option key, argparse kw))
COMMANDS = {
    "search": ("bionas.search", "SearchConfig", "run_search", None, "search a cell over (op, rule) pairs: DARTS or "
               "EG-NAS (CMA-ES)", {"--order": ("strategy_options.darts.order", {"choices": ["first", "second"]})}),
    "train": ("bionas.train", "TrainConfig", "run_train", None, "retrain a genotype's cell network (each edge keeps "
              "its rule) or a single-rule ResNet; data-parallel under torchrun",
              {"--rules": ("random_rules", {"choices": ["random"], "help": "random: each weighted edge draws its "
                                                                         "rule among those --space allows"})}),
    "attack": ("bionas.attack", "AttackConfig", "run_attack", "quick", "adversarial robustness of trained "
               "checkpoints (torchattacks)", {}),
    "hebbian": ("bionas.hebbian", "HebbianConfig", "run_hebbian", "hard_wta_bcm_surround", "a Hebbian CNN learning "
                "without labels, read out linearly (or trained by backprop)", {}),
    "quickstart": ("bionas.quickstart", "QuickstartConfig", "run_quickstart", None, "train a small network per "
                   "learning rule (and one mixing them all)", {}),
}


def _flags(parser: argparse.ArgumentParser, config_type: type) -> None:
    """One flag per field that declares one; its type, help text and default from the field
    (a list field takes one or more values, a bool field is a switch that turns it on)."""
    hints = typing.get_type_hints(config_type)
    own = set(vars(config_type).get("__annotations__", {}))  # the command's own fields first, shared ones after
    for f in sorted(dataclasses.fields(config_type), key=lambda f: f.name not in own):
        if f.metadata.get("flag"):
            tp = split_optional(hints[f.name])[0]  # int | None -> int
            many = typing.get_origin(tp) is list
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            choices = f"; one of: {', '.join(map(str, choices_of(f)))}" if choices_of(f) else ""
            if tp is bool:  # a switch: the flag turns it on
                parser.add_argument(f.metadata["flag"], dest=f"opt_{f.name}", action="store_const", const=True,
                                    default=None, help=f"{f.metadata['help']} (default: off)")
                continue
            parser.add_argument(f.metadata["flag"], dest=f"opt_{f.name}", type=typing.get_args(tp)[0] if many else tp,
                                nargs="+" if many else None, metavar=f.name.upper(),
                                help=f"{f.metadata['help']} (default: {default}{choices})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bionas", description="NAS over (operation, learning rule) pairs.")
    parser.add_argument("--version", action="version", version=f"bionas {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    from bionas import configs

    for name, (module, cls, run, preset, help_text, extra) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(handler=_run, extra=extra)
        module = importlib.import_module(module)
        _flags(p, getattr(module, cls))
        for flag, (key, kw) in extra.items():
            p.add_argument(flag, dest=f"extra_{key}", default=None, **kw)
        if (configs.CONFIG_DIR / f"{name}.yaml").is_file():
            names = ", ".join(configs.presets(name))
            p.add_argument("--preset", *(["--suite"] if name == "attack" else []), default=preset,
                           help=f"named preset of bionas/configs/{name}.yaml: {names} (default: {preset})")
        p.add_argument("--config", metavar="YAML", help="options from a YAML file (e.g. a run's config.yaml)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="any config field, e.g. --set lr=0.05 or --set rule_options.usf.scale=1.0 (repeatable)")
        if "resume" in inspect.signature(getattr(module, run)).parameters:
            p.add_argument("--resume", action="store_true", help="continue the run saved in --out")
        p.add_argument("--no-progress", action="store_true", help="no progress bars")
        p.add_argument("--threads", type=int, metavar="N",
                       help="CPU threads for torch (default: torch's, or OMP_NUM_THREADS; on a busy machine "
                            "1 is often much faster)")
    for name, handler, text in (("rules", _list_rules, "list the learning rules"), ("ops", _list_ops, "list the ops")):
        sub.add_parser(name, help=text).set_defaults(handler=handler)
    text = "learning-dynamics figures (gradient variance, weight histograms, alignment) of runs made with --dynamics"
    p = sub.add_parser("analyze", help=text, description=text)
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="output folders of bionas train/search runs")
    p.add_argument("--out", default="runs/analysis", help="where the figures and summary.csv go (default: %(default)s)")
    p.add_argument("--labels", nargs="+", help="one name per run for the legends (default: the folder names)")
    p.set_defaults(handler=_analyze)
    text = "the paper's claims as runs and a table (finished runs are skipped, killed ones resumed)"
    p = sub.add_parser("reproduce", help=text, description=text)
    p.add_argument("experiment", metavar="EXPERIMENT", nargs="+",
                   help="mixed_vs_single (claims 1-2: Tables 1 and 5), table1 (Tables 1 and 3), dynamics (claim 4: "
                        "Figures 3-6), robustness (Table 4), or all (every one); several names run in the order "
                        "given, shared runs made once")
    p.add_argument("--scale", default="smoke", help="smoke, mini or paper (default: %(default)s)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="default: 0 1 2")
    p.add_argument("--root", default="runs/reproduce", help="runs go to ROOT/SCALE/ (default: %(default)s)")
    p.add_argument("--data-dir", help="dataset directory (default: $BIONAS_DATA)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dry-run", action="store_true", help="list the runs, their state and estimated cost")
    p.add_argument("--table-only", action="store_true", help="write the tables from the runs finished so far; "
                   "run nothing")
    p.add_argument("--no-wait", action="store_true", help="when every run left is another process's, write the "
                   "tables and exit instead of waiting for it (to go on to a next command)")
    p.set_defaults(handler=_reproduce)
    return parser


def _reproduce(args) -> int:
    from bionas.reproduce import reproduce

    out = reproduce(args.experiment, args.scale, args.seeds, args.root, args.data_dir, args.device, args.dry_run,
                    args.table_only, wait=not args.no_wait)
    if not args.dry_run:
        print((out / "table.md").read_text().rstrip())
        print(f"wrote {out}/: {', '.join(_listing(out))}")
    return 0


def _analyze(args) -> int:
    from bionas.analyze import analyze
    from bionas.io import check_output_dir

    out = analyze(args.runs, check_output_dir(args.out), args.labels)
    print(f"wrote {out}/: {', '.join(_listing(out))}")
    return 0


def _overrides(args) -> dict:
    out = {k[4:]: v for k, v in vars(args).items() if k.startswith("opt_") and v is not None}
    out.update({k: (v == "random" if k == "random_rules" else v) for k, _ in args.extra.values()
                if (v := getattr(args, f"extra_{k}")) is not None})
    out.update(parse_assignment(text) for text in args.set)
    if args.no_progress:
        out["progress"] = False
    return out


def _run(args) -> int:
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be at least 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    module, cls, run, _, _, _ = COMMANDS[args.command]
    module = importlib.import_module(module)
    config_type, run = getattr(module, cls), getattr(module, run)
    overrides = _overrides(args)
    if getattr(args, "resume", False) and args.command != "hebbian":
        # the run's saved config rules; the command line may only repeat it (checked by the run)
        known = {f.name for f in dataclasses.fields(config_type)}
        stub = config_type(**{k: v for k, v in overrides.items() if k in known and k in ("out", "progress", "device")})
        result = run(stub, resume=True, overrides=overrides)
    else:
        config = resolve(config_type, args.command, getattr(args, "preset", None), args.config, overrides)
        result = run(config, resume=True) if getattr(args, "resume", False) else run(config)
    if result.summary():  # empty on the ranks of a data-parallel run other than 0
        print(result.summary())
        print(f"wrote {result.out}/: {', '.join(_listing(result.out))}")
    return 0


def _listing(out) -> list[str]:
    """The files of a run folder, without hidden ones (temporaries of interrupted writes)."""
    return sorted(p.name for p in out.iterdir() if p.is_file() and not p.name.startswith("."))


def _list_rules(args) -> int:
    from bionas.rules import RULES
    from bionas.rules.convert import rule_options

    from bionas.rules import MODIFIERS
    from bionas.rules.modifiers import modifier_options

    def line(name, kind, cls, options):
        text = ", ".join(f"{k}={v!r}" for k, v in options.items()) or "no options"
        return f"{name:<8} {kind:<9} {(cls.__doc__ or '-').strip().splitlines()[0]} [options: {text}]"

    for name in RULES:
        cls = RULES.get(name)
        print(line(name, cls.kind, cls, rule_options(cls)))
    print("modifiers, added to any rule as RULE+MODIFIER (e.g. usf+bcm_lr, oja+dale):")
    for name in MODIFIERS:
        cls = MODIFIERS.get(name)
        print(line(name, "modifier", cls, modifier_options(cls)))
    return 0


def _list_ops(args) -> int:
    from bionas import ops

    for name in ops.OPS:
        n = sum(p.numel() for p in ops.create_op(name, 16, 1).parameters())
        print(f"{name:<13} {n:>6} weights at C=16  {(ops.OPS.get(name).__doc__ or '-').strip().splitlines()[0]}")
    return 0


def _default_out(command: str) -> str | None:
    """The ``out`` default of a run command's config (None for the other commands)."""
    if command not in COMMANDS:
        return None
    module, cls = COMMANDS[command][:2]
    fields = {f.name: f for f in dataclasses.fields(getattr(importlib.import_module(module), cls))}
    return fields["out"].default if "out" in fields else None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.INFO
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 speaks for all
        level = max(level, logging.WARNING)
    logging.basicConfig(level=level,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return args.handler(args)
    except BionasError as err:
        print(f"bionas: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        out = getattr(args, "opt_out", None) or getattr(args, "out", None) or _default_out(args.command)
        kept = out is not None and os.path.isfile(os.path.join(out, "checkpoint.pt"))
        where = (f"the last checkpoint in {out} is kept; continue with the same command and --resume" if kept
                 else "nothing to resume")
        print(f"bionas: interrupted; {where}", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
