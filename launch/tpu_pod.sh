#!/usr/bin/env bash
# Run the same `prorank` command on every worker of an EXISTING Cloud TPU VM (or pod slice).
#
# Usage:
#   launch/tpu_pod.sh --name TPU_NAME --zone ZONE [options] [--] PRORANK_COMMAND [ARGS...]
#
# Options (each falls back to the environment variable in brackets):
#   --name NAME         the TPU VM / pod slice, as in `gcloud compute tpus tpu-vm list`  [TPU_NAME]
#   --zone ZONE         its zone, e.g. us-central2-b                                     [TPU_ZONE]
#   --project PROJECT   Google Cloud project (default: gcloud's configured one)          [TPU_PROJECT]
#   --repo PATH         the prorank-jax checkout on the workers (same path on each)     [PRORANK_REPO, default ~/prorank-jax]
#   --python PY         interpreter on the workers with prorank installed               [PRORANK_PYTHON, default python3]
#   --log FILE          run in the background on each worker (nohup), output to FILE (relative to --repo)
#   --print             print the gcloud command, run nothing
#   -h, --help          this text
#
# It runs, through `gcloud compute tpus tpu-vm ssh NAME --zone ZONE --worker=all --command ...`:
#   cd REPO && PRORANK_DISTRIBUTED=auto PY -m launch.cli PRORANK_COMMAND ARGS...
# PRORANK_DISTRIBUTED=auto makes prorank call jax.distributed.initialize(), which discovers the
# pod's hosts on its own; on a single-host slice (v4-8, v5e-8) it is one process.
# This script creates, copies and installs nothing: the TPU VM, the checkout (with its venv)
# and the data must already be on every worker, at the same paths.
#
# Example (stage 1 of Qwen2.5-0.5B on a v4-8):
#   launch/tpu_pod.sh --name my-v4-8 --zone us-central2-b -- train-grpo --config grpo_qwen25_05b
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

name="${TPU_NAME:-}"
zone="${TPU_ZONE:-}"
project="${TPU_PROJECT:-}"
repo="${PRORANK_REPO:-~/prorank-jax}"
python="${PRORANK_PYTHON:-python3}"
log=""
print_only=0

if [[ $# -eq 0 ]]; then
  usage >&2
  exit 2
fi
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) name="${2:?--name needs a TPU name}"; shift 2 ;;
    --zone) zone="${2:?--zone needs a zone}"; shift 2 ;;
    --project) project="${2:?--project needs a project id}"; shift 2 ;;
    --repo) repo="${2:?--repo needs a path}"; shift 2 ;;
    --python) python="${2:?--python needs an interpreter}"; shift 2 ;;
    --log) log="${2:?--log needs a file name}"; shift 2 ;;
    --print) print_only=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    -*) echo "tpu_pod.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) break ;;
  esac
done
if [[ -z "$name" || -z "$zone" ]]; then
  echo "tpu_pod.sh: --name and --zone (or TPU_NAME and TPU_ZONE) are required (see --help)" >&2
  exit 2
fi
if [[ $# -eq 0 ]]; then
  echo "tpu_pod.sh: no prorank command given (e.g. train-grpo --config grpo_qwen25_05b)" >&2
  exit 2
fi

# The remote command, every argument quoted for the workers' shell. A leading ~ in the repo
# path is left unquoted so the workers expand it to their own home directory.
if [[ "$repo" == "~" ]]; then
  remote_repo="~"
elif [[ "$repo" == "~/"* ]]; then
  remote_repo="~/$(printf '%q' "${repo:2}")"
else
  remote_repo="$(printf '%q' "$repo")"
fi
prorank_cmd="PRORANK_DISTRIBUTED=auto $(printf '%q ' "$python" -m launch.cli "$@")"
if [[ -n "$log" ]]; then
  remote="cd $remote_repo && nohup env $prorank_cmd> $(printf '%q' "$log") 2>&1 < /dev/null &"
else
  remote="cd $remote_repo && $prorank_cmd"
fi

gcloud_cmd=(gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" --worker=all --command "$remote")
if [[ -n "$project" ]]; then
  gcloud_cmd+=(--project "$project")
fi
if (( print_only )); then
  printf '%q ' "${gcloud_cmd[@]}"; echo
  exit 0
fi
if ! command -v gcloud > /dev/null 2>&1; then
  echo "tpu_pod.sh: gcloud not found; install the Google Cloud CLI (https://cloud.google.com/sdk)" >&2
  exit 127
fi
exec "${gcloud_cmd[@]}"
