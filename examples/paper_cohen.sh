#!/usr/bin/env bash
# Full-batch GD at the edge of stability: fc-tanh (two hidden layers of 200 tanh units) on the
# first 5000 CIFAR-10 images with the MSE loss, three step sizes, 3 seeds (Cohen et al.,
# ICLR 2021; recipe cohen-cifar5k-fc-tanh, `sharp train --list-recipes`).
#
# Published: Cohen et al.'s Fig. 1: λ₁ rises (progressive sharpening) until it reaches 2/η,
# then hovers just above it while the loss keeps falling, non-monotonically. Each run stops at
# 99% training accuracy (their --acc_goal 0.99) or after 100,000 steps.
# Expected outcome: `sharp eos --strict` at the end says at-edge for all 9 runs, with edges
# 2/η = 200, 100 and 50 and median ratios a few per cent above 1; the smaller η, the later λ₁
# reaches its (higher) edge. The summary table gives the final λ₁ per step size.
# Cost: 9 runs of at most 100,000 full-batch steps on 5000 images with λ₁ every 50 steps;
# about 0.5 GPU-hours on one H200 (estimated: a step is ~1–2 ms, mostly Python).
#
#   DATA_DIR=~/data examples/paper_cohen.sh         CIFAR-10 in ~/data/cifar-10-batches-py
#   SMOKE=1 examples/paper_cohen.sh                 a CPU smoke run of every command (below)
#
# Variables: DATA_DIR (default data), OUT (default examples-out/paper-cohen), SEEDS (default
# "0 1 2"), LRS (default "0.01 0.02 0.04"; 0.01 is the authors' README example), EXTRA (flags
# added to every run).
# SMOKE=1: --train-size 512 --test-size 64 --epochs 1 (one full-batch step), λ₁ at both steps
# by 3 Lanczos steps, and no --strict: nothing reaches an edge in one step.
# Runs are started with --resume: running the script again continues interrupted runs.
set -euo pipefail
DATA_DIR=${DATA_DIR:-data}
OUT=${OUT:-examples-out/paper-cohen}
SEEDS=${SEEDS:-0 1 2}
LRS=${LRS:-0.01 0.02 0.04}
FLAGS=(--recipe cohen-cifar5k-fc-tanh --data-dir "$DATA_DIR" --resume --quiet
       --reports-dir "$OUT/reports" --checkpoints-dir "$OUT/checkpoints")
STRICT=(--strict)
if [[ ${SMOKE:-0} == 1 ]]; then
  FLAGS+=(--train-size 512 --test-size 64 --epochs 1 --sharpness-every 1 --eval-every 1
          --sharpness-iters 3)
  STRICT=(--band 0.1)  # the default band: a verdict without the exit code
fi
FLAGS+=(${EXTRA:-})
for seed in $SEEDS; do
  for lr in $LRS; do
    sharp train "${FLAGS[@]}" --lr "$lr" --seed "$seed" --run-name "gd-lr$lr-seed$seed"
  done
done
sharp summarize "$OUT/reports" --out "$OUT/summary.csv" --format markdown
sharp eos "$OUT"/reports/gd-* "${STRICT[@]}"
