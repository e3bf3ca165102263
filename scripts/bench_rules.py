"""Forward+backward time of each learning rule's layers relative to plain torch layers.

For every shape below, each rule's converted module and the plain torch module run forward +
backward (input gradient included) in interleaved rounds within one process; the table gives
each rule's median time divided by the plain module's median time from the same run. The ``bp``
column is a control: it runs the plain forward through the rule-aware layer, so its distance
from 1.0 shows the measurement noise. Target: every feedback rule within 1.15x of plain backprop.

    python scripts/bench_rules.py                      # CPU, writes results/bench_rules.csv
    python scripts/bench_rules.py --device cuda --out results/bench_rules_cuda.csv
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bionas import rules  # noqa: E402
from bionas.models import TinyNet  # noqa: E402
from bionas.io import save_csv  # noqa: E402

# name: (module factory, input shape). Search-supernet sizes: 16 channels at 32x32 in the first
# stage, 64 at 8x8 in the last, a 256->10 classifier; the TinyNet row is a whole network.
SHAPES = {
    "conv3x3 64->64, 32x32, batch 64": (lambda: nn.Conv2d(64, 64, 3, padding=1, bias=False), (64, 64, 32, 32)),
    "depthwise dil5x5 64, 32x32, batch 64": (
        lambda: nn.Conv2d(64, 64, 5, padding=4, dilation=2, groups=64, bias=False), (64, 64, 32, 32)),
    "conv1x1 64->64 stride 2, batch 64": (lambda: nn.Conv2d(64, 64, 1, stride=2, bias=False), (64, 64, 32, 32)),
    "search stage 1: depthwise 3x3 16, 32x32, batch 64": (
        lambda: nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), (64, 16, 32, 32)),
    "search stage 3: depthwise 3x3 64, 8x8, batch 64": (
        lambda: nn.Conv2d(64, 64, 3, padding=1, groups=64, bias=False), (64, 64, 8, 8)),
    "search stage 3: pointwise 64->64, 8x8, batch 64": (
        lambda: nn.Conv2d(64, 64, 1, bias=False), (64, 64, 8, 8)),
    "linear 1024->1024, batch 256": (lambda: nn.Linear(1024, 1024), (256, 1024)),
    "linear 1024->1024, batch 1024": (lambda: nn.Linear(1024, 1024), (1024, 1024)),
    "classifier: linear 256->10, batch 64": (lambda: nn.Linear(256, 10), (64, 256)),
    "whole TinyNet (C=16), 32x32, batch 64": (lambda: TinyNet(3, 10, 16), (64, 3, 32, 32)),
}


def run_layer(layer: nn.Module, x: torch.Tensor, iters: int) -> None:
    grad = None
    for _ in range(iters):
        x.grad = None
        y = layer(x)
        if grad is None:
            grad = torch.randn_like(y)
        y.backward(grad)
    if x.device.type == "cuda":
        torch.cuda.synchronize()


def bench(device: str, rounds: int, iters: int) -> pd.DataFrame:
    rows = []
    for shape, (factory, in_shape) in SHAPES.items():
        torch.manual_seed(0)
        base = factory().to(device)
        variants = {"plain": base}
        for rule in rules.RULES:
            variants[rule] = rules.convert(factory().to(device), rule, seed=0).train()
        x = torch.randn(in_shape, device=device, requires_grad=True)
        times = {name: [] for name in variants}
        for name, layer in variants.items():  # warm-up
            run_layer(layer, x, 2)
        for _ in range(rounds):
            for name, layer in variants.items():  # interleaved, so drift hits all alike
                if device == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                run_layer(layer, x, iters)
                times[name].append((time.perf_counter() - start) / iters)
        plain = statistics.median(times["plain"])
        for name in variants:
            med = statistics.median(times[name])
            rows.append({"shape": shape, "layer": name, "median_ms": 1e3 * med, "ratio_to_plain": med / plain})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--out", default="results/bench_rules.csv")
    args = parser.parse_args()
    frame = bench(args.device, args.rounds, args.iters)
    save_csv(frame, args.out)
    table = frame.pivot(index="shape", columns="layer", values="ratio_to_plain")[["plain"] + list(rules.RULES)]
    print(f"forward+backward time / plain torch layer, median of {args.rounds} rounds x {args.iters} iters, "
          f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(table.to_markdown(floatfmt=".3f") if _has_tabulate() else table.round(3).to_string())
    worst = frame[frame.layer != "plain"].ratio_to_plain.max()
    print(f"worst rule/plain ratio: {worst:.3f} (target <= 1.15)")


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    main()
