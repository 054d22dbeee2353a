#!/usr/bin/env bash
# Adam at the edge of stability (Cohen et al. 2022) and batch sharpness for SGD (Andreyev &
# Beneventano 2024), on the embedded MNIST-1D with the default tanh MLP and MSE loss.
#
# Expected outcome: full-batch Adam (β₁ = 0.9) at η = 1e-3 and 3e-3: the preconditioned
# sharpness λ₁(P⁻¹H) rises within a few hundred steps to the adaptive edge 38/η (38000 and
# 12667) and hovers there, median ratio within about 1% of 1, while the raw λ₁ levels off
# at 23–30, far from anything 2/η says; `sharp eos` says at-edge for both (edge: adaptive).
# Minibatch SGD (batch 50, η = 0.3) with --batch-sharpness: on this small MSE problem the
# batch sharpness stays near half of 2/η ≈ 6.7 and below the full-batch λ₁ (≈ 0.8 × 2/η),
# so `sharp eos` (edge: batch) says below-edge; see the README for the numbers.
# preconditioned.png shows λ₁(P⁻¹H) against 38/η with the raw λ₁ beside it.
# Runtime: 1–2 minutes on a 2-core CPU.
set -euo pipefail
OUT=${OUT:-examples-out/adaptive-edge}
COMMON=(--steps 2000 --quiet --reports-dir "$OUT/reports" --checkpoints-dir "$OUT/checkpoints"
        --checkpoint-every 1000)
for lr in 0.001 0.003; do
    sharp train --optimizer adam --lr "$lr" --sharpness-every 40 --eval-every 40 \
        --run-name "adam-lr$lr" "${COMMON[@]}"
done
sharp train --optimizer sgd --batch-size 50 --lr 0.3 --batch-sharpness --sharpness-every 100 \
    --eval-every 100 --run-name sgd-bs50 "${COMMON[@]}"
sharp eos "$OUT"/reports/{adam-lr0.001,adam-lr0.003,sgd-bs50}
sharp plot "$OUT"/reports/adam-lr0.00{1,3} --out "$OUT/adam"
sharp plot "$OUT"/reports/sgd-bs50 --only sharpness
