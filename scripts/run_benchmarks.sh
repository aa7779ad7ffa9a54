#!/usr/bin/env bash
# The benchmarks quoted in docs/benchmarks.md, one after another on a quiet machine (nothing else
# running), each printing its figures into outputs/bench/<name>.log.
#   bash scripts/run_benchmarks.sh <a trained checkpoint of the default model>
set -euo pipefail
cd "$(dirname "$0")/.."
ckpt=${1:?usage: bash scripts/run_benchmarks.sh <checkpoint>}
out=outputs/bench
mkdir -p "$out"
py=${PYTHON:-.venv/bin/python}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
run() { name=$1; shift; echo "== $name: $*"; "$py" "$@" > "$out/$name.log" 2>&1; tail -n 20 "$out/$name.log"; }
run predict_three scripts/bench_predict.py --rows 1200 --naive-rows 200 --precision 32
run predict_three_auto scripts/bench_predict.py --rows 1200 --naive-rows 200 --precision auto
run predict_random_joint scripts/bench_predict.py --joint --rows 1200 --naive-rows 200 --precision 32
run predict_random_joint_auto scripts/bench_predict.py --joint --rows 1200 --naive-rows 200 --precision auto
run predict_joint scripts/bench_predict.py --models "joint=$ckpt" --rows 1200 --naive-rows 200 --precision 32
run predict_joint_auto scripts/bench_predict.py --models "joint=$ckpt" --rows 1200 --naive-rows 200 --precision auto
run precision scripts/bench_precision.py --model "$ckpt" --rows 3084 --rounds 1
run precision_minilm scripts/bench_precision.py --rows 300
run step scripts/bench_step.py --steps 8 --rounds 2 "" "trainer.precision=bf16-mixed"
run eval scripts/bench_eval.py "$ckpt" --threads 1
# MPNet (python -m empathy.download all-mpnet-base-v2 first); skipped when it is not installed.
if "$py" -c "from empathy.encoders import resolve_path; resolve_path('cache:all-mpnet-base-v2')" 2>/dev/null; then
  run precision_mpnet scripts/bench_precision.py --encoder mpnet --rows 300
  run step_mpnet scripts/bench_step.py --steps 4 --rounds 1 "" "encoder=mpnet"
fi
