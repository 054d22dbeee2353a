#!/usr/bin/env bash
# Eigen-SAM against SAM and SGD: ResNet-18 on CIFAR-100, 200 epochs, 3 seeds
# (Luo et al., NeurIPS 2024; recipe eigensam-cifar100-resnet18, `sharp train --list-recipes`).
#
# Published: the official training log reports test accuracy 78.51% for Eigen-SAM against
# 78.07% for SAM (ρ 0.1, α 0.2, v refreshed every 100 steps by 5 power steps in eval mode).
# Expected outcome: in the summary table Eigen-SAM's final test accuracy is about 78.5% and
# above SAM's (~78.1%) by a few tenths, both above SGD's; final λ₁ of SAM and Eigen-SAM well
# below SGD's, Eigen-SAM's the lowest. SAM runs at the recipe's ρ = 0.1 (and no α, v).
# Cost: 9 runs of 200 epochs; about 4 GPU-hours on one H200 in bf16, 6–8 in fp32 (estimated
# from the FLOPs; `benchmarks/gpu_check.sh` measures the images per second of each optimizer).
#
#   DATA_DIR=~/data examples/paper_eigensam.sh      CIFAR-100 in ~/data/cifar-100-python
#   SMOKE=1 examples/paper_eigensam.sh              a CPU smoke run of every command (below)
#
# Variables: DATA_DIR (default data), OUT (default examples-out/paper-eigensam), SEEDS
# (default "0 1 2"), EXTRA (flags added to every run, e.g. EXTRA="--precision bf16").
# SMOKE=1: --train-size 512 --test-size 64 --epochs 1 with a ResNet-18 of base width 2,
# batches of 64 (8 steps), 2 power steps, λ₁ of 8 examples (3 Lanczos steps) at the first and
# last step: only that the batch runs end to end (seconds a run on one CPU core).
# Runs are started with --resume: running the script again continues interrupted runs.
set -euo pipefail
DATA_DIR=${DATA_DIR:-data}
OUT=${OUT:-examples-out/paper-eigensam}
SEEDS=${SEEDS:-0 1 2}
FLAGS=(--recipe eigensam-cifar100-resnet18 --data-dir "$DATA_DIR" --resume --quiet
       --reports-dir "$OUT/reports" --checkpoints-dir "$OUT/checkpoints")
if [[ ${SMOKE:-0} == 1 ]]; then
  FLAGS+=(--train-size 512 --test-size 64 --epochs 1 --width 2 --batch-size 64 --eig-iters 2
          --sharpness-samples 8 --sharpness-iters 3 --sharpness-every 8 --eval-every 8)
fi
FLAGS+=(${EXTRA:-})
for seed in $SEEDS; do
  sharp train "${FLAGS[@]}" --optimizer sgd --seed "$seed" --run-name "sgd-seed$seed"
  sharp train "${FLAGS[@]}" --optimizer sam --seed "$seed" --run-name "sam-seed$seed"
  sharp train "${FLAGS[@]}" --seed "$seed" --run-name "eigen-sam-seed$seed"
done
sharp summarize "$OUT/reports" --out "$OUT/summary.csv" --format markdown
