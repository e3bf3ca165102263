"""The robustness table: `bionas attack --preset full` on the retrained models.

Attacks ResNet-20 bp, fa and usf and the searched smoke genotype, as retrained by
``scripts/train_table.py`` (run first if its checkpoints are missing), on 500 real CIFAR-10 test
images (50 per class, seed 0), with the transfer attack crafted on ResNet-20 bp. White-box
attacks run through the exact gradient and through the rules' own feedback.

    python scripts/attack_table.py                       # writes results/attack_table/
    python scripts/attack_table.py --n 100 --out /tmp/attack
"""
from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bionas.attack import resolve_config, run_attack  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TRAINED = REPO / "results" / "train_table"
MODELS = ["resnet20_bp", "resnet20_fa", "resnet20_usf", "searched_smoke_genotype__mixed"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--preset", "--suite", default="full")
    parser.add_argument("--out", default=str(REPO / "results" / "attack_table"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not all((TRAINED / m / "checkpoint.pt").is_file() for m in MODELS):
        subprocess.run([sys.executable, str(REPO / "scripts" / "train_table.py")], check=True)
    config = resolve_config(args.preset, None, {"checkpoints": [str(TRAINED / m) for m in MODELS], "n": args.n,
                                               "source": str(TRAINED / "resnet20_bp"), "out": args.out,
                                               "progress": False})
    result = run_attack(config)
    print((result.out / "table.md").read_text())


if __name__ == "__main__":
    main()
