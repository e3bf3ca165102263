"""Does ``torch.compile`` speed up a supernet step? Eager against compiled, one process.

A 3-cell, 8-channel supernet over none / max pool / skip (usf) / sep conv (fa, brsf), batch 16,
forward + backward of the cross-entropy; prints the first call's time (compilation) and the
mean of the next ``--steps`` calls for each. Synthetic inputs: only the time is of interest.

    OMP_NUM_THREADS=1 python scripts/bench_compile.py
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bionas.search.supernet import Supernet  # noqa: E402
from bionas.space import SupernetShape, space_from_dict  # noqa: E402

SPACE = {"name": "small", "candidates": {"none": [], "max_pool_3x3": [], "skip_connect": ["usf"],
                                         "sep_conv_3x3": ["fa", "brsf"]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    net = Supernet(space_from_dict(SPACE), 3, 10, seed=0,
                   shape=SupernetShape(channels=8, cells=3, nodes=4)).to(args.device)
    x = torch.randn(16, 3, 32, 32, device=args.device)
    y = torch.randint(0, 10, (16,), device=args.device)

    def step(model) -> None:
        F.cross_entropy(model(x), y).backward()

    for name, model in (("eager", net), ("compiled", torch.compile(net))):
        start = time.perf_counter()
        step(model)
        first = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(args.steps):
            step(model)
        print(f"{name}: first call {first:.1f} s, then {(time.perf_counter() - start) / args.steps:.3f} s per step")


if __name__ == "__main__":
    main()
