#!/usr/bin/env bash
# Late-phase SAM: SGD for 175 epochs then SAM to 200, against SGD and SAM throughout;
# ResNet-18 on CIFAR-10, 3 seeds (Zhou et al., ICLR 2025; recipe late-sam-cifar10-resnet18,
# `sharp train --list-recipes`).
#
# Published: Zhou et al.'s Fig. 1 (WRN-16-8, switch at epoch 175 of 200): a few epochs of
# SAM at the end reach the test error and the flatness of SAM from the start, both better
# than SGD's.
# Expected outcome: in the summary table the late-SAM run's final test accuracy within about
# 0.1–0.2 points of full SAM's, both a few tenths above SGD's; its final λ₁ close to full
# SAM's and well below SGD's. `sharp plot` of a late run shows λ₁ falling after epoch 175.
# Cost: 9 runs of 200 epochs (SGD, SAM, and SGD with 25 epochs of SAM); about 3 GPU-hours on
# one H200 in bf16, 4–6 in fp32 (estimated; `benchmarks/gpu_check.sh` measures the rates).
#
#   DATA_DIR=~/data examples/paper_late_sam.sh      CIFAR-10 in ~/data/cifar-10-batches-py
#   SMOKE=1 examples/paper_late_sam.sh              a CPU smoke run of every command (below)
#
# Variables: DATA_DIR (default data), OUT (default examples-out/paper-late-sam), SEEDS
# (default "0 1 2"), EXTRA (flags added to every run, e.g. EXTRA="--precision bf16").
# SMOKE=1: --train-size 512 --test-size 64 and one epoch, given as --steps 8 of batches of 64
# so that the late run can switch within it (--sam-start counts steps with --steps: step 4),
# a ResNet-18 of base width 2, λ₁ of 8 examples (3 Lanczos steps) at the first and last step.
# Runs are started with --resume: running the script again continues interrupted runs.
set -euo pipefail
DATA_DIR=${DATA_DIR:-data}
OUT=${OUT:-examples-out/paper-late-sam}
SEEDS=${SEEDS:-0 1 2}
FLAGS=(--recipe late-sam-cifar10-resnet18 --data-dir "$DATA_DIR" --resume --quiet
       --reports-dir "$OUT/reports" --checkpoints-dir "$OUT/checkpoints")
LATE=(--sam-start 175)  # the recipe's own switch, in epochs
if [[ ${SMOKE:-0} == 1 ]]; then
  FLAGS+=(--train-size 512 --test-size 64 --steps 8 --width 2 --batch-size 64
          --sharpness-samples 8 --sharpness-iters 3 --sharpness-every 8 --eval-every 8)
  LATE=(--sam-start 4)
fi
FLAGS+=(${EXTRA:-})
for seed in $SEEDS; do
  sharp train "${FLAGS[@]}" --optimizer sgd --seed "$seed" --run-name "sgd-seed$seed"
  sharp train "${FLAGS[@]}" --sam-start 0 --seed "$seed" --run-name "sam-seed$seed"
  sharp train "${FLAGS[@]}" "${LATE[@]}" --seed "$seed" --run-name "late-sam-seed$seed"
done
sharp summarize "$OUT/reports" --out "$OUT/summary.csv" --format markdown
