#!/usr/bin/env bash
# Regenerate the figures of the docs from the examples: each docs/figures/NAME.png is drawn
# by one script of examples/, run in a fresh folder under $WORK, then copied here.
#
#   docs/figures.sh                      every figure (about 45 minutes on 2 CPU cores)
#   docs/figures.sh adaptive-edge-adam   one of them (the quickest: 1–2 minutes)
#   docs/figures.sh --list               the figures, their scripts and the files they copy
#
# Variables: WORK (default examples-out/figures), OMP_NUM_THREADS (default 1: the figures in
# the docs were drawn with one thread; at the edge of stability another thread count gives
# a different, statistically similar trajectory). Needs `sharp` on PATH (pip install -e .).
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-examples-out/figures}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

# name | example script | the file it draws, relative to the script's OUT folder
FIGURES="
adaptive-edge-adam   | adaptive_edge.sh      | adam/preconditioned.png
central-flow-gd      | central_flow.sh       | reports/gd-lr0.3/flow.png
blocks-gpt2          | gpt2_blocks.sh        | reports/gpt2-blocks/blocks.png
sharpness-gd-sweep   | gd_step_size_sweep.sh | sharpness.png
sharpness-late-phase | late_phase_sam.sh     | sharpness.png
"

row() {  # the figure's row, or an error naming the known figures
  local found
  found=$(awk -F'|' -v n="$1" '{key = $1; gsub(/ /, "", key)} key == n' <<< "$FIGURES")
  if [[ -z $found ]]; then
    echo "unknown figure '$1'; expected one of:$(awk -F'|' 'NF {printf " %s", $1}' <<< "$FIGURES" | tr -s ' ')" >&2
    exit 2
  fi
  echo "$found"
}

draw() {
  local name=$1 script drawn out
  IFS='|' read -r _ script drawn <<< "$(row "$name")"
  script=$(echo $script) drawn=$(echo $drawn)  # trim
  out="$WORK/$name"
  rm -rf "$out"  # the examples name their runs: a fresh folder, never a resumed one
  echo "== $name: examples/$script (OUT=$out)"
  OUT="$out" bash "examples/$script"
  cp "$out/$drawn" "docs/figures/$name.png"
  echo "wrote docs/figures/$name.png"
}

if [[ ${1:-} == --list ]]; then
  awk -F'|' 'NF {gsub(/ +/, " "); print}' <<< "$FIGURES"
  exit 0
fi
names=("$@")
if [[ ${#names[@]} -eq 0 ]]; then
  mapfile -t names < <(awk -F'|' 'NF {gsub(/ /, "", $1); print $1}' <<< "$FIGURES")
fi
for name in "${names[@]}"; do row "$name" > /dev/null; done  # check every name first
for name in "${names[@]}"; do draw "$name"; done
