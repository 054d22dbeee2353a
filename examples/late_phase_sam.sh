#!/usr/bin/env bash
# Late-phase SAM (Zhou et al. 2024): switching to SAM for the last part of training gives most
# of SAM's flatness. Full-batch here, so that each phase has a clean edge of stability.
#
# Expected outcome: GD ends at λ₁ ≈ 2/η ≈ 6.7–7.2; full SAM ends at the SAM edge, about 4.5–5
# (well below 2/η, Long & Bartlett 2024); the late-phase run tracks GD up to step 1000, then
# its λ₁ falls within about 100 steps to SAM's level — its final λ₁ in the summary table is
# close to full SAM's, far below GD's. `sharp eos` on the late-phase run says "at-edge": at
# the GD edge before the switch and at the SAM edge after it. sharpness.png shows all three.
# Runtime: about 5 minutes on a 2-core CPU.
set -euo pipefail
OUT=${OUT:-examples-out/late-phase}
COMMON=(--lr 0.3 --steps 1600 --quiet --reports-dir "$OUT/reports" --checkpoints-dir "$OUT/checkpoints")
sharp train --optimizer gd --run-name gd "${COMMON[@]}"
sharp train --optimizer sam --rho 0.05 --run-name sam "${COMMON[@]}"
sharp train --optimizer sam --rho 0.05 --sam-start 1000 --run-name late-sam "${COMMON[@]}"
sharp summarize "$OUT/reports" --out "$OUT/summary.csv"
sharp plot "$OUT"/reports/{gd,sam,late-sam} --out "$OUT"
sharp eos "$OUT"/reports/{gd,sam,late-sam}
