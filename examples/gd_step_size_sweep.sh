#!/usr/bin/env bash
# Step-size sweep for full-batch GD (Cohen et al. 2021, "Gradient descent on neural networks
# typically occurs at the edge of stability").
#
# Expected outcome: for every step size η, the sharpness λ₁ rises during training
# (progressive sharpening) until it reaches about 2/η, then hovers there while the loss keeps
# decreasing. `sharp eos` prints verdict "at-edge" for each run (exit 0 with --strict), and
# the figure sharpness.png shows three curves flattening at three different heights 2/η.
# Runtime: about 1–2 minutes per run on a 2-core CPU.
set -euo pipefail
OUT=${OUT:-examples-out/gd-sweep}
for lr in 0.15 0.2 0.3; do
  sharp train --lr "$lr" --steps 1000 --run-name "gd-lr$lr" --quiet \
    --reports-dir "$OUT/reports" --checkpoints-dir "$OUT/checkpoints"
done
sharp plot "$OUT"/reports/gd-lr* --out "$OUT"
sharp eos "$OUT"/reports/gd-lr* --strict
