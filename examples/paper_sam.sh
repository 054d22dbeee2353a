#!/usr/bin/env bash
# SAM against SGD: WRN-28-10 on CIFAR-10, 200 epochs, label smoothing 0.1, crop, flip and
# Cutout, 3 seeds (Foret et al., ICLR 2021; recipe sam-cifar10-wrn28-10, with the training
# settings of davda54/sam's example; `sharp train --list-recipes`).
#
# Published: davda54/sam's README, with these settings on the smaller WRN-16-8, gives test
# error 2.86% for SAM against 3.20% for SGD; Foret et al.'s Table 1 reports WRN-28-10.
# Expected outcome: SAM's final test error (100 − final test acc in the summary) about 0.3–0.4
# points below SGD's, near or below 3%; SAM's final λ₁ several times lower than SGD's.
# Differences from the source: a cosine schedule instead of davda54's step decay (sharpcli has
# no step schedule), WRN-28-10 instead of WRN-16-8 (sharpcli's WRN has a fixed depth and widening).
# Cost: 6 runs of 200 epochs of a 36M-parameter network; about 15 GPU-hours on one H200 in
# bf16, 25–30 in fp32 (estimated from the FLOPs, ~10× ResNet-18's per image; `benchmarks/
# gpu_check.sh` measures ResNet-18's images per second).
#
#   DATA_DIR=~/data examples/paper_sam.sh           CIFAR-10 in ~/data/cifar-10-batches-py
#   SMOKE=1 examples/paper_sam.sh                   a CPU smoke run of every command (below)
#
# Variables: DATA_DIR (default data), OUT (default examples-out/paper-sam), SEEDS (default
# "0 1 2"), EXTRA (flags added to every run, e.g. EXTRA="--precision bf16").
# SMOKE=1: --train-size 512 --test-size 64 --epochs 1 with a WRN-28-10 of base width 1
# (10/20/40 channels), batches of 64 (8 steps), λ₁ of 8 examples (3 Lanczos steps) at the
# first and last step: only that the batch runs end to end (about 10 s a run on one CPU core).
# Runs are started with --resume: running the script again continues interrupted runs.
set -euo pipefail
DATA_DIR=${DATA_DIR:-data}
OUT=${OUT:-examples-out/paper-sam}
SEEDS=${SEEDS:-0 1 2}
FLAGS=(--recipe sam-cifar10-wrn28-10 --data-dir "$DATA_DIR" --resume --quiet
       --reports-dir "$OUT/reports" --checkpoints-dir "$OUT/checkpoints")
if [[ ${SMOKE:-0} == 1 ]]; then
  FLAGS+=(--train-size 512 --test-size 64 --epochs 1 --width 1 --batch-size 64
          --sharpness-samples 8 --sharpness-iters 3 --sharpness-every 8 --eval-every 8)
fi
FLAGS+=(${EXTRA:-})
for seed in $SEEDS; do
  sharp train "${FLAGS[@]}" --optimizer sgd --seed "$seed" --run-name "sgd-seed$seed"
  sharp train "${FLAGS[@]}" --seed "$seed" --run-name "sam-seed$seed"
done
sharp summarize "$OUT/reports" --out "$OUT/summary.csv" --format markdown
