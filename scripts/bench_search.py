"""Time and memory of one search step (architecture + weights) per search configuration.

A configuration is ``SPACE/ORDER[/HESSIAN][/kK][/ckpt]``: ``darts/first``, ``bionas/second/exact``,
``bionas/second/finite_difference``, ``bionas/first/k4`` (PC-DARTS partial channels, K = 4),
``bionas/first/k4/ckpt`` (cells recomputed in the backward: ``checkpoint_cells``).
Each supernet is built at the same channels, cells and batch size and driven by the DARTS
strategy on real CIFAR-10 batches; configurations alternate
within each round so that machine noise hits them alike, and the table reports median step
times and their ratio to the first configuration (``darts/first``: the 8 original DARTS ops,
all backprop, first order). Memory is, on a GPU, the peak
allocated during a step above what was allocated before it; on a CPU (no allocator statistics)
the bytes of the tensors autograd saves for the backward of a weight step, i.e. the activation
memory, counted once per storage. The question asked of the numbers: does the cost grow no
faster than the number of candidates per edge?

    python scripts/bench_search.py                                  # CPU, writes results/bench_search.csv
    python scripts/bench_search.py --configs darts/first bionas/second/finite_difference bionas/second/exact
    python scripts/bench_search.py --device cuda --batch 64 --out results/bench_search_cuda.csv
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bionas.data import BatchLoader, load_dataset  # noqa: E402
from bionas.io import save_csv  # noqa: E402
from bionas.space import SupernetShape, load_space  # noqa: E402
from bionas.search.config import SearchConfig  # noqa: E402
from bionas.search.darts import DartsStrategy  # noqa: E402
from bionas.ops import has_weights  # noqa: E402
from bionas.search.supernet import Supernet  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def activation_bytes(model, x, y) -> int:
    """Bytes autograd keeps for the backward of one training forward (each storage once)."""
    seen: dict[int, int] = {}

    def pack(t):
        if isinstance(t, torch.Tensor) and t.device.type != "meta":
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    model.train()
    weights = tuple(w.detach() for w in model.mixing_weights())
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.cross_entropy(model(x, weights), y)
    del loss
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    return sum(n for ptr, n in seen.items() if ptr not in params)  # activations, not weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["darts/first", "bionas/first"],
                        help="SPACE/ORDER[/HESSIAN] per configuration; ratios are to the first")
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--cells", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-channels-last", action="store_true")
    parser.add_argument("--amp", choices=["off", "bf16"], default="off", help="bf16 autocast around each step")
    parser.add_argument("--epoch-images", type=int, default=25_000,
                        help="weight-half images per search epoch, for the implied cost of --epochs (CIFAR-10: 25,000)")
    parser.add_argument("--epochs", type=int, default=50, help="search epochs for the implied cost (paper: 50)")
    parser.add_argument("--data-dir", default=os.environ.get("BIONAS_DATA"), help="CIFAR-10 (default: $BIONAS_DATA)")
    parser.add_argument("--out", default=str(REPO / "results" / "bench_search.csv"))
    args = parser.parse_args()

    device = torch.device(args.device)
    data = load_dataset("cifar10", args.data_dir, "train", per_class=max(1, 2 * args.batch // 10 + 1), seed=0)
    fmt = torch.channels_last if not args.no_channels_last else torch.contiguous_format
    batches = iter(BatchLoader(data, args.batch, seed=0, device=device, drop_last=True, memory_format=fmt))
    train, val = next(batches), next(batches)

    from contextlib import nullcontext

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16) if args.amp == "bf16" else nullcontext()

    runs = {}
    for name in args.configs:
        space_name, order, *extra = name.split("/")
        space = load_space(space_name)
        shape = SupernetShape(channels=args.channels, cells=args.cells, nodes=space.supernet.nodes)
        k = next((int(part[1:]) for part in extra if part.startswith("k")), 1)
        checkpoint = "ckpt" in extra
        hessian = [part for part in extra if not part.startswith("k") and part != "ckpt"]
        model = Supernet(space, 3, 10, seed=0, shape=shape, partial_channels=k,
                         checkpoint_cells=checkpoint).to(device, memory_format=fmt)
        options = {"order": order, **({"hessian": hessian[0]} if hessian else {})}
        strategy = DartsStrategy(model, SearchConfig(epochs=1, strategy_options={"darts": options}))
        with autocast():
            strategy.step(train, val, 0)  # warm-up: allocator, oneDNN/cuDNN kernel choice
        runs[name] = dict(space=space, model=model, strategy=strategy, times=[])
        print(f"built {name}: {len(space)} candidates per edge, "
              f"{sum(p.numel() for p in model.weight_parameters()) / 1e6:.2f} M weights", flush=True)

    for r in range(args.rounds):
        for name, run in runs.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                before = torch.cuda.memory_allocated()
            start = time.perf_counter()
            with autocast():
                run["strategy"].step(train, val, r + 1)
            if device.type == "cuda":
                torch.cuda.synchronize()
                run["memory"] = torch.cuda.max_memory_allocated() - before
            run["times"].append(time.perf_counter() - start)
            print(f"round {r + 1}: {name} {run['times'][-1]:.3f} s", flush=True)

    rows = []
    for name, run in runs.items():
        if device.type != "cuda":
            run["memory"] = activation_bytes(run["model"], *train)
        weighted = sum(1 for c in run["space"].candidates if has_weights(c.op))
        rows.append({
            "config": name, "space": run["space"].name, "candidates": len(run["space"]),
            "weighted_candidates": weighted,
            "weights_M": sum(p.numel() for p in run["model"].weight_parameters()) / 1e6,
            "step_s": statistics.median(run["times"]),
            "memory_MB": run["memory"] / 2**20,
            "memory_kind": "cuda peak during step" if device.type == "cuda" else "saved activations (weight step)",
        })
    table = pd.DataFrame(rows)
    b = table.iloc[0]
    table["candidates_ratio"] = table["candidates"] / b["candidates"]
    table["weighted_ratio"] = table["weighted_candidates"] / b["weighted_candidates"]
    table["time_ratio"] = table["step_s"] / b["step_s"]
    table["memory_ratio"] = table["memory_MB"] / b["memory_MB"]
    steps = -(-args.epoch_images // args.batch)
    table["epoch_s"] = table["step_s"] * steps  # implied: steps of one epoch at this batch
    table["implied_gpu_days"] = table["epoch_s"] * args.epochs / 86_400  # of --epochs epochs on this device
    for key, value in {"device": str(device), "channels": args.channels, "cells": args.cells, "batch": args.batch,
                       "rounds": args.rounds, "amp": args.amp, "channels_last": not args.no_channels_last,
                       "threads": torch.get_num_threads()}.items():
        table[key] = value
    save_csv(table, args.out)
    cols = ["config", "candidates", "weighted_candidates", "weights_M", "step_s", "time_ratio", "candidates_ratio",
            "weighted_ratio", "memory_MB", "memory_ratio", "epoch_s", "implied_gpu_days"]
    print(table[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
