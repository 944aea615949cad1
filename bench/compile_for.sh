#!/usr/bin/env bash
# Compile the bundled Qwen2.5 configs for TPU topologies on this (CPU) machine and keep each
# report: bench/RESULTS.md ("Compiled for TPU") is made from the compile_report.json files.
#   bench/compile_for.sh OUT_ROOT "v5e-8 v4-8" "grpo_qwen25_05b score_qwen25_05b" [0.5b|1.5b] [OVERRIDES...]
# OVERRIDES (e.g. mesh.data=1 mesh.fsdp=8) go to every run and into the report folders' names.
# Needs the TPU compiler: pip install -r requirements-tpu-aot.txt
set -u
out_root=${1:?OUT_ROOT}; topologies=${2:-"v5e-8 v4-8 v5p-8 v6e-8"}
configs=${3:-"score_qwen25_05b grpo_qwen25_05b"}; size=${4:-0.5b}
shift $(( $# < 4 ? $# : 4 )); overrides=("$@")
suffix=""; for override in "${overrides[@]}"; do suffix+="-${override//[^A-Za-z0-9=.]/_}"; done
model="launch/configs/models/qwen2.5-${size}-instruct"
for topology in $topologies; do
  for config in $configs; do
    command=${config%%_*}; command=${command/grpo/train-grpo}; command=${command/score/train-score}
    out="$out_root/${config}-${size}-${topology}${suffix}"
    mkdir -p "$out"
    echo "== $command --config $config --compile-for $topology model.path=null model.config=$model ${overrides[*]}" | tee "$out/log.txt"
    python -m launch.cli "$command" --config "$config" --compile-for "$topology" model.path=null \
        "model.config=$model" "out_dir=$out" "${overrides[@]}" >> "$out/log.txt" 2>&1
    echo "exit $?" | tee -a "$out/log.txt"
  done
done
