#!/usr/bin/env bash
# The search cost at the paper's size on a GPU (BioNAS appendix 7.1: 16 channels, 5 cells, batch
# 256), for the device tool's lent machine: one prepared run of a few minutes. For the bionas
# space with full channels (K=1), PC-DARTS' partial channels (K=4) with and without recomputed
# cells (checkpoint_cells), fp32 and bf16 autocast:
# seconds per step and per epoch, peak memory, and the implied GPU-days of a 50-epoch search
# (the paper reports 1.37 GPU-days on an A100). Writes results/gpu_bench/*.csv.
#
#   bash scripts/gpu_search_bench.sh            # needs CUDA and $BIONAS_DATA (CIFAR-10)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-results/gpu_bench}
mkdir -p "$out"
python=${PYTHON:-.venv/bin/python}
for amp in off bf16; do
  "$python" scripts/bench_search.py --device cuda --channels 16 --cells 5 --batch 256 --rounds 3 --amp "$amp" \
    --configs darts/first bionas/first bionas/first/k4 bionas/first/k4/ckpt bionas/second/exact/k4 \
    --out "$out/search_$amp.csv"
done
