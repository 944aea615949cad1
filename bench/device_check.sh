#!/usr/bin/env bash
# One GPU check in one go (issue 13): parity (float32 / bf16 on the device vs CPU float32),
# Reranker pairs/s, stage-2 step tokens/s + MFU, GRPO samples/s; one table, also written
# to bench/device_check.md. Under 10 minutes on one GPU.
#
# Install the CUDA jaxlib first (same jax version as requirements.txt):
#     pip install "jax[cuda12]==0.10.2"
# (TPU: pip install "jax[tpu]==0.10.2" -f https://storage.googleapis.com/jax-releases/libtpu_releases.html)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHONPATH=. timeout 600 python bench/device_check.py --out bench/device_check.md "$@"
