#!/usr/bin/env bash
# Run one `prorank` process on this host, as one of N processes of a multi-host GPU job.
#
# Usage:
#   launch/multi_gpu.sh [options] [--] PRORANK_COMMAND [ARGS...]
#
# Options (each falls back to the environment variable in brackets):
#   --coordinator HOST:PORT   address of process 0, reachable from every host  [PRORANK_COORDINATOR]
#   --num-processes N         number of hosts (one process per host)          [PRORANK_NUM_PROCESSES, default 1]
#   --process-id I            this host's index, 0 .. N-1                      [PRORANK_PROCESS_ID]
#   --python PY               interpreter with prorank installed               [PRORANK_PYTHON, default: python3]
#   --print                   print the environment and command, run nothing
#   -h, --help                this text
#
# One process per host sees all of that host's GPUs (set CUDA_VISIBLE_DEVICES to restrict).
# With N = 1 (one 8-GPU host) no coordinator is needed: it is just
#   launch/multi_gpu.sh train-grpo --config grpo_qwen25_05b
# With N > 1 run the same line on every host, changing only --process-id:
#   launch/multi_gpu.sh --coordinator 10.0.0.1:1234 --num-processes 2 --process-id 0 train-grpo --config ...
#   launch/multi_gpu.sh --coordinator 10.0.0.1:1234 --num-processes 2 --process-id 1 train-grpo --config ...
# prorank reads PRORANK_COORDINATOR / PRORANK_NUM_PROCESSES / PRORANK_PROCESS_ID and calls
# jax.distributed.initialize before anything else (launch/runner.py). The command runs from
# the repository this script belongs to, so relative config and data paths resolve there.
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

coordinator="${PRORANK_COORDINATOR:-}"
num_processes="${PRORANK_NUM_PROCESSES:-}"
process_id="${PRORANK_PROCESS_ID:-}"
python="${PRORANK_PYTHON:-python3}"
print_only=0

if [[ $# -eq 0 ]]; then
  usage >&2
  exit 2
fi
while [[ $# -gt 0 ]]; do
  case "$1" in
    --coordinator) coordinator="${2:?--coordinator needs HOST:PORT}"; shift 2 ;;
    --num-processes) num_processes="${2:?--num-processes needs a number}"; shift 2 ;;
    --process-id) process_id="${2:?--process-id needs a number}"; shift 2 ;;
    --python) python="${2:?--python needs an interpreter}"; shift 2 ;;
    --print) print_only=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    -*) echo "multi_gpu.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) break ;;
  esac
done
if [[ $# -eq 0 ]]; then
  echo "multi_gpu.sh: no prorank command given (e.g. train-grpo --config grpo_qwen25_05b)" >&2
  exit 2
fi
# A coordinator or process id without a process count would silently run independent
# 1-process jobs into the same out_dir, one per host.
if [[ -z "$num_processes" && ( -n "$coordinator" || -n "$process_id" ) ]]; then
  echo "multi_gpu.sh: --coordinator / --process-id (or PRORANK_COORDINATOR / PRORANK_PROCESS_ID) given without" \
       "--num-processes N (or PRORANK_NUM_PROCESSES): say how many processes the job has" >&2
  exit 2
fi
num_processes="${num_processes:-1}"
if ! [[ "$num_processes" =~ ^[1-9][0-9]*$ ]]; then
  echo "multi_gpu.sh: --num-processes / PRORANK_NUM_PROCESSES must be a positive integer, got '$num_processes'" >&2
  exit 2
fi

env_vars=()
if (( num_processes > 1 )); then
  if [[ -z "$coordinator" ]]; then
    echo "multi_gpu.sh: $num_processes processes need --coordinator HOST:PORT (or PRORANK_COORDINATOR)" >&2
    exit 2
  fi
  if ! [[ "$process_id" =~ ^[0-9]+$ ]] || (( process_id >= num_processes )); then
    echo "multi_gpu.sh: --process-id / PRORANK_PROCESS_ID must be 0 .. $((num_processes - 1)), got '$process_id'" >&2
    exit 2
  fi
  env_vars=(PRORANK_COORDINATOR="$coordinator" PRORANK_NUM_PROCESSES="$num_processes" PRORANK_PROCESS_ID="$process_id")
fi

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cmd=("$python" -m launch.cli "$@")
if (( print_only )); then
  echo "cd $(printf '%q' "$repo")"
  # A single process must not inherit a stale multi-process setting from the shell.
  echo "unset PRORANK_COORDINATOR PRORANK_NUM_PROCESSES PRORANK_PROCESS_ID PRORANK_DISTRIBUTED"
  for v in "${env_vars[@]+"${env_vars[@]}"}"; do echo "export $v"; done
  printf '%q ' "${cmd[@]}"; echo
  exit 0
fi
cd "$repo"
unset PRORANK_COORDINATOR PRORANK_NUM_PROCESSES PRORANK_PROCESS_ID PRORANK_DISTRIBUTED
exec env "${env_vars[@]+"${env_vars[@]}"}" "${cmd[@]}"
