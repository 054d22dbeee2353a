#!/usr/bin/env bash
# The central flow of full-batch GD (Cohen, Damian, Talwalkar, Kolter & Lee, ICLR 2025,
# "Understanding Optimization in Deep Learning with Central Flows") on sharpcli's default
# run, beside what GD did.
#
# Expected outcome: GD's λ₁ rises to 2/η and hovers above it; the central flow's λ₁ rises
# along the same path and is then held at 2/η, while the stable (gradient) flow's keeps
# rising. The central flow's predicted loss L + ½⟨H, Σ⟩ follows GD's loss averaged over 20
# steps, and the central flow stays closer to GD's weights than gradient flow does.
# `sharp flow` prints these three comparisons; flow.png draws them (docs/guides/flow.md).
# The training flags --eval-every 1 --checkpoint-every 10 --sharpness-every 10 only log more
# often: the trajectory is the default run's, bit for bit.
# Runtime: about 15 minutes per step size on one CPU core (the flows; training takes seconds).
set -euo pipefail
OUT=${OUT:-examples-out/central-flow}
for lr in ${LRS:-0.3}; do
  sharp train --lr "$lr" --steps 1000 --run-name "gd-lr$lr" --quiet \
    --eval-every 1 --checkpoint-every 10 --sharpness-every 10 \
    --reports-dir "$OUT/reports" --checkpoints-dir "$OUT/checkpoints"
  sharp flow "$OUT/reports/gd-lr$lr"
  sharp plot "$OUT/reports/gd-lr$lr" --only flow
done
