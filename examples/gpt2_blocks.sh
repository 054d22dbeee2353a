#!/usr/bin/env bash
# Blockwise Hessian spectra of a GPT-2, as Zhang et al. (NeurIPS 2024, "Why Transformers Need
# Adam: A Hessian Perspective") compare them: a one-layer GPT-2 (Hugging Face transformers,
# `pip install transformers`) trained 300 Adam steps on a copying task
# (examples/gpt2_blocks.py, measured by sharpcli.Tracker), then the top eigenvalues and the
# spectral density of each block the gpt2 preset names — the token embedding, the query, key
# and value thirds of the fused c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj — and blocks.png,
# their densities side by side.
#
# Expected outcome: the blocks' spectra differ by orders of magnitude, the query and key
# blocks' far below the value's and the MLP's: the heterogeneity Zhang et al. find in
# transformers and not in CNNs. Runtime: a few minutes on a 2-core CPU.
set -euo pipefail
OUT=${OUT:-examples-out/gpt2-blocks}
python examples/gpt2_blocks.py "$OUT"
sharp spectrum "$OUT/checkpoints/gpt2-blocks/step-00000300.pt" \
    --model-factory examples.gpt2_blocks:make_model --data examples.gpt2_blocks:batches \
    --loss model --blocks gpt2 --top-k 2 --density --density-runs 2 --density-iters 40
sharp plot "$OUT/reports/gpt2-blocks" --only blocks
