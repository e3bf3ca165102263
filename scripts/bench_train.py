"""Training throughput (images/s) of an evaluation network per learning rule, relative to bp.

The same network (a genotype's cell network with one rule on every weighted edge, or a ResNet
baseline converted to one rule) is trained on real CIFAR-10 batches with the full training step
of ``bionas train``: augmented batch, forward with the auxiliary head and drop path, loss,
backward through the rules, clipping, SGD. Rules alternate within each round so machine noise
hits them alike; the table reports the median images/s over the rounds and the ratio to ``bp``
measured in the same run. ``--preset cifar`` times the paper's full CIFAR network (36 channels,
20 cells, batch 96) and adds the hours 600 epochs of 50,000 images would take at that speed --
meaningful on a GPU only.

    python scripts/bench_train.py                                    # CPU: a small cell network
    python scripts/bench_train.py --model resnet20                   # CPU: the ResNet-20 baseline
    python scripts/bench_train.py --device cuda --preset cifar --out results/bench_train_cuda.csv
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bionas import rules  # noqa: E402
from bionas.data import TRAIN_AUGMENTATION, BatchLoader, load_dataset, resolve_data_dir  # noqa: E402
from bionas.io import save_csv  # noqa: E402
from bionas.train import build_network, resolve_config, training_genotype  # noqa: E402
from bionas.train.model import DataShape, WithAuxiliary  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FEEDBACK_RULES = [n for n in rules.RULES if issubclass(rules.RULES.get(n), rules.FeedbackRule)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--genotype", default="darts_v2")
    parser.add_argument("--model", default="darts", help="darts (the genotype's cell network), resnet20, resnet56")
    parser.add_argument("--preset", default=None, help="cifar: the paper's full CIFAR network and batch")
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rules", nargs="+", default=FEEDBACK_RULES)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per rule and round")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", default="auto", help="auto (bf16 on CUDA), bf16, off")
    parser.add_argument("--contiguous", action="store_true", help="NCHW tensors instead of channels-last")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default=str(REPO / "results" / "bench_train.csv"))
    args = parser.parse_args()

    device = torch.device(args.device)
    base = {"model": args.model, "device": args.device, "amp": args.amp, "channels_last": not args.contiguous}
    if args.model == "darts":
        base["genotype"] = args.genotype
    if args.preset == "cifar":
        config = resolve_config(None, None, {**base, "base_preset": "cifar"})
    else:
        config = resolve_config(None, None, {**base, "channels": args.channels, "layers": args.layers,
                                              "batch_size": args.batch_size})
    root = resolve_data_dir(args.data_dir)
    if root is None:
        raise SystemExit("CIFAR-10 is needed: pass --data-dir DIR or set BIONAS_DATA")
    data = load_dataset("cifar10", root, "train", per_class=max(20, config.batch_size // 10 * 4), seed=0)
    shape = DataShape("cifar10", 3, 32, 10, tuple(data.mean), tuple(data.std))
    augment = dataclasses.replace(TRAIN_AUGMENTATION["cifar10"], cutout=config.cutout)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    use_bf16 = config.amp == "bf16" or (config.amp == "auto" and device.type == "cuda")

    runs = {}
    for rule in args.rules:
        c = dataclasses.replace(config, rule=rule)
        net = build_network(c, shape, training_genotype(c)).to(device, memory_format=memory_format)
        if hasattr(net, "drop_prob"):
            net.drop_prob = c.drop_path / 2
        model = WithAuxiliary(net).train()
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=c.weight_decay)
        loader = BatchLoader(data, c.batch_size, augment=augment, seed=0, drop_last=True, device=device,
                             memory_format=memory_format)
        runs[rule] = (c, model, opt, loader)

    def step(c, model, opt, x, y):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            logits, aux = model(x)
        loss = torch.nn.functional.cross_entropy(logits.float(), y)
        if aux is not None:
            loss = loss + c.auxiliary_weight * torch.nn.functional.cross_entropy(aux.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if c.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), c.grad_clip)
        opt.step()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    batches = {rule: iter(()) for rule in args.rules}

    def next_batch(rule):
        try:
            return next(batches[rule])
        except StopIteration:
            batches[rule] = iter(runs[rule][3])
            return next(batches[rule])

    for rule in args.rules:  # warm-up: kernels chosen, caches filled
        for _ in range(2):
            step(*runs[rule][:3], *next_batch(rule))
    speeds = {rule: [] for rule in args.rules}
    for _ in range(args.rounds):
        for rule in args.rules:
            c, model, opt, _ = runs[rule]
            xs = [next_batch(rule) for _ in range(args.steps)]
            sync()
            start = time.perf_counter()
            for x, y in xs:
                step(c, model, opt, x, y)
            sync()
            speeds[rule].append(args.steps * c.batch_size / (time.perf_counter() - start))

    bp = statistics.median(speeds["bp"]) if "bp" in speeds else None
    rows = []
    for rule in args.rules:
        ips = statistics.median(speeds[rule])
        row = {"model": args.model if args.model != "darts" else f"darts:{args.genotype}", "rule": rule,
               "channels": config.channels if args.model == "darts" else None,
               "layers": config.layers if args.model == "darts" else None, "batch_size": config.batch_size,
               "device": str(device), "amp_bf16": use_bf16, "channels_last": config.channels_last,
               "threads": torch.get_num_threads(),
               "images_per_s": ips, "relative_to_bp": ips / bp if bp else None}
        if args.preset == "cifar":
            row["hours_600_epochs"] = 600 * 50_000 / ips / 3600
        rows.append(row)
    table = pd.DataFrame(rows)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    save_csv(table, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
