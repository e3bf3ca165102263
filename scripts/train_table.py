"""Retrain several models under one short, equal budget on real CIFAR-10 and tabulate test accuracy.

Every run is ``bionas train`` (through the library) with ``--preset short`` by default: the
same 5,000 training images (500 per class), the same 10 epochs and batch of 64, evaluated on
the whole 10,000-image test split; each model keeps its own paper preset's optimiser (cell networks:
lr 0.025 cosine, auxiliary head, cutout, drop path; ResNets: lr 0.1 step schedule, whose
milestones a 10-epoch run never reaches). Cell networks are built at the preset's 16 channels
and 8 cells. The default list is the table in results/README.md: the DARTS V2 genotype, a
genotype from the smoke search, and ResNet-20 with bp, fa, usf, brsf and frsf.

    python scripts/train_table.py                                   # writes results/train_table/
    python scripts/train_table.py --preset smoke --out /tmp/table   # a minute-long rehearsal

Each run's directory keeps its config, logs, curves and results (the checkpoints are left out of
git by results/.gitignore); ``table.csv`` and ``table.md`` collect the final test accuracies.
A finished run is not repeated: rerunning the script after an interruption trains only what is
missing (an interrupted run resumes from its checkpoint).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bionas.io import atomic_open, save_csv  # noqa: E402
from bionas.train import TrainConfig, resolve_config, run_train  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SEARCHED = REPO / "results" / "smoke_search_cifar10" / "genotype.json"


def default_runs(searched: Path) -> list[tuple[str, dict]]:
    runs = [("darts_v2 (bp)", {"genotype": "darts_v2"}),
            ("searched smoke genotype (mixed)", {"genotype": str(searched)})]
    runs += [(f"resnet20 {rule}", {"model": "resnet20", "rule": rule}) for rule in ("bp", "fa", "usf", "brsf", "frsf")]
    return runs


def slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name).strip("_")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="short")
    parser.add_argument("--searched", default=str(SEARCHED), help="genotype file of a search")
    parser.add_argument("--data-dir", default=None, help="CIFAR-10 (default: $BIONAS_DATA)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(REPO / "results" / "train_table"))
    args = parser.parse_args()

    out = Path(args.out)
    rows = []
    for name, options in default_runs(Path(args.searched)):
        run_dir = out / slug(name)
        if not (run_dir / "results.json").is_file():
            overrides = {**options, "dataset": "cifar10", "seed": args.seed, "out": str(run_dir), "progress": False}
            if args.data_dir:
                overrides["data_dir"] = args.data_dir
            start = time.perf_counter()
            if (run_dir / "checkpoint.pt").is_file():
                run_train(TrainConfig(out=str(run_dir), progress=False), resume=True)
            else:
                run_train(resolve_config(args.preset, None, overrides))
            print(f"{name}: {time.perf_counter() - start:.0f} s", flush=True)
        result = json.loads((run_dir / "results.json").read_text())
        info = json.loads((run_dir / "run_info.json").read_text())
        log = pd.read_csv(run_dir / "train_log.csv")
        rows.append({"model": name, "rules": "+".join(sorted(info["rule_counts"])),
                     "parameters": info["parameters_without_auxiliary"], "epochs": result["epochs"],
                     "train_images": info["train_images"], "test_images": result["test_images"],
                     "final_train_acc": float(log["train_acc"].iloc[-1]), "test_acc": result["test_acc"],
                     "train_seconds": result["train_seconds"], "run": run_dir.name})
    table = pd.DataFrame(rows)
    save_csv(table, out / "table.csv")
    with atomic_open(out / "table.md") as fh:
        fh.write(f"Preset `{args.preset}`, seed {args.seed}; command: `python scripts/train_table.py"
                 f"{'' if args.preset == 'short' else ' --preset ' + args.preset}`\n\n")
        fh.write("| model | rules | params | epochs | train images | test images | final train acc | test acc "
                 "| seconds |\n")
        fh.write("|---|---|---:|---:|---:|---:|---:|---:|---:|\n")
        for r in rows:
            fh.write(f"| {r['model']} | {r['rules']} | {r['parameters']:,} | {r['epochs']} | {r['train_images']:,} | "
                     f"{r['test_images']:,} | {r['final_train_acc']:.3f} | {r['test_acc']:.4f} | "
                     f"{r['train_seconds']:.0f} |\n")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"wrote {out}/table.csv and table.md")


if __name__ == "__main__":
    main()
