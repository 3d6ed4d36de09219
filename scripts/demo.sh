#!/usr/bin/env bash
# The main job end to end on the built-in default data, on a fresh machine:
#   install -> train MoSAiC on the synthetic benchmark -> evaluate -> export ONNX/fp16/INT8 (+ accuracy gate)
#   -> serve a spool of real BigEarthNet v2 tiles once -> profile every precision.
# Everything lands in runs/demo (override with DEMO_OUT=...). Extra arguments go to `mosaic-edge train`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
OUT=${DEMO_OUT:-runs/demo}
rm -rf "$OUT/export" "$OUT/spool" "$OUT/profile"

mosaic-edge train --out "$OUT" "$@"
mosaic-edge evaluate "$OUT/model.pt" --split test
mosaic-edge export "$OUT/model.pt" --out "$OUT/export" --fp16 --int8 --eval-data tests/data/benv2-mini

python scripts/benv2_to_spool.py tests/data/benv2-mini "$OUT/spool"
mosaic-edge serve --model "$OUT/export" --spool "$OUT/spool" --runner ort --once
echo "results: $(ls "$OUT/spool/results" | wc -l) files in $OUT/spool/results, failed: $(ls "$OUT/spool/failed" | wc -l)"

mosaic-edge profile "$OUT/export" --runner ort --precision fp32,fp16,int8 --batch 1,8 --iterations 20 \
    --out "$OUT/profile"
echo "demo done: $OUT (model.pt, export/report.md, spool/results, profile/profile.json)"
