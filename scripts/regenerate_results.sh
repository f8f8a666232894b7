#!/usr/bin/env bash
# Re-make every result file that follows from the cost model (run after changing it), from the
# repository root; each output starts with the command that made it. Measurements (results/bench,
# results/gpu) are not re-made here: see their READMEs.
set -euo pipefail
run() {  # run OUT CMD...: "$ CMD" then its output, written to OUT in one piece
  local out=$1; shift
  { echo "\$ $*"; "$@"; } >"$out.tmp" 2>&1 && mv "$out.tmp" "$out"
}
run results/validation/summary.txt autotune validate cost_models/data/published_runs_dev.csv \
  --out results/validation/preds_dev.csv --report results/validation
mkdir -p results/validation/unseen
run results/validation/unseen/summary.txt autotune validate \
  cost_models/data/published_runs_unseen.csv --out results/validation/unseen/preds.csv \
  --report results/validation/unseen
run results/validation/moe_load_factor.txt python -m cost_models.load_factor \
  cost_models/data/published_runs_dev.csv \
  zoo-qwen3-235b-s16k-forced:zoo-qwen3-235b-s16k-dropless \
  zoo-qwen3-235b-s32k-forced:zoo-qwen3-235b-s32k-dropless \
  zoo-qwen3-235b-s64k-forced:zoo-qwen3-235b-s64k-dropless \
  zoo-qwen3-235b-s128k-forced:zoo-qwen3-235b-s128k-dropless
run results/plans/500b_10000_dgx-h100.txt autotune --model 500b --gpus 10000 \
  --out results/plans/500b_10000_dgx-h100.json --plot results/plans/500b_10000
run results/plans/500b_9984_dgx-h100.txt autotune --model 500b --gpus 9984 \
  --out results/plans/500b_9984_dgx-h100.json
run results/plans/deepseek-v3_2048_dgx-h100.txt autotune --model deepseek-v3 --gpus 2048 \
  --out results/plans/deepseek-v3_2048_dgx-h100.json
run results/gpu/kernel_fit.txt python -m cost_models.kernel_fit results/gpu
python scripts/bench_search.py --out results/search/bench_search.txt
tail -n 3 results/validation/summary.txt results/gpu/kernel_fit.txt
