#!/usr/bin/env bash
# The GPU check (about 12 minutes on one CUDA GPU): ResNet-18 on CIFAR-shaped data, 50 SAM
# steps with λ₁ tracked, a top-5 spectrum of the checkpoint; step time, HVP time and peak
# memory, in one process and under torchrun --nproc-per-node 1 with nccl. Then one epoch of
# the recipe eigensam-cifar100-resnet18 for sgd, sam and eigen-sam in fp32 and bf16:
# images per second, epoch time, peak memory ($GPU_CHECK_OUT/epoch/recipe-epoch.csv). Then
# the 26M GPT of benchmarks/gpt.py: its top-5 without a budget and within 100, 20, 14 and 10
# vectors, products, time per product and peak memory ($GPU_CHECK_OUT/gpt/gpt-budgets.csv).
# Then the same GPT sharded by FSDP2 in one nccl process: a training step against a
# finite-difference product, and a short Lanczos ($GPU_CHECK_OUT/fsdp2.json). Then the
# trainer callbacks on an FSDP2 model, which accelerate does not shard on the CPU: the Hugging
# Face Trainer with accelerate's FSDP version 2, and Lightning's ModelParallelStrategy (also
# run on 2 CPU processes by tests/integrations/test_lightning.py); each prints one JSON line,
# "pass" when its rows equal one unsharded process's to 1e-6 ($GPU_CHECK_OUT/*-fsdp2.json).
#   benchmarks/gpu_check.sh [--data-dir DIR] [other flags of benchmarks/gpu_check.py]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${GPU_CHECK_OUT:-gpu-check-out}
rm -rf "$OUT"
echo "== one process"
timeout 300 "$PY" benchmarks/gpu_check.py --out "$OUT/single" "$@"
echo "== torchrun --nproc-per-node 1 (nccl)"
timeout 300 "$PY" -m torch.distributed.run --standalone --nproc-per-node 1 \
    benchmarks/gpu_check.py --out "$OUT/torchrun" "$@"
echo "== one epoch of eigensam-cifar100-resnet18: sgd, sam, eigen-sam in fp32 and bf16"
timeout 420 "$PY" benchmarks/gpu_check.py --only-epoch --out "$OUT/epoch" "$@"
echo "== the 26M GPT's top-5 within memory budgets of 100, 20, 14 (1.5 GB) and 10 vectors"
timeout 300 "$PY" benchmarks/gpu_check.py --only-gpt --out "$OUT/gpt" "$@"
echo "== the 26M GPT sharded by FSDP2 (nccl, one process): finite-difference products"
mkdir -p "$OUT"
timeout 300 "$PY" -m torch.distributed.run --standalone --nproc-per-node 1 \
    benchmarks/bench_fsdp.py --device cuda --sequences 16 --max-iter 20 | tee "$OUT/fsdp2.json"
echo "== the callbacks on FSDP2 models (one nccl process): HF Trainer (fsdp_version 2), Lightning"
for trainer in hf lightning; do
    args=("$OUT/$trainer-fsdp2"); [ "$trainer" = lightning ] && args+=(cuda 1)
    mkdir -p "$OUT/$trainer-fsdp2"
    timeout 300 "$PY" -m torch.distributed.run --standalone --nproc-per-node 1 \
        -m "tests.integrations.${trainer}_fsdp_fit" "${args[@]}" | grep '^{"trainer"' \
        | tee "$OUT/$trainer-fsdp2.json" || echo "== $trainer under FSDP2: FAILED (output above)"
done
