"""`prorank serve` against Reranker.predict in one process: throughput and p50/p99 latency.

    python -m bench.serve_bench --requests 24 --docs 8 --doc-tokens 48 --clients 4 --max-length 128

Both sides answer the same rerank requests (one query, --docs documents each, texts from the
bundled data as in bench/predict_bench.py) with the same random Qwen2.5-0.5B-shaped model:

* direct: Reranker.predict per request, one after the other, in this process
  (the Reranker's defaults: shared-prefix reuse and packed tokens on CPU), after one
  untimed pass over all requests so that every shape is compiled;
* server: `prorank serve` as a subprocess (its start-up time to /health 200 and its compile
  count are reported), --clients threads each sending its share of the requests with httpx
  to /v2/rerank (raw_scores, so the comparison sees the raw logit differences), after the
  same untimed pass.

Latency is per request (seconds from send to answer); throughput is pairs per second over
the whole timed pass. The server's scores are checked against the direct ones.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--docs", type=int, default=8, help="documents per request (default 8)")
    parser.add_argument("--doc-tokens", type=int, default=48, help="mean document length in tokens (default 48)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent HTTP clients (default 4)")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--max-batch-tokens", type=int, default=4096)
    parser.add_argument("--max-batch-rows", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--steps-per-octave", type=int, default=1)
    parser.add_argument("--layers", type=int, default=None, help="fewer layers for a quick run (default 24)")
    parser.add_argument("--cache", default="runs/bench/qwen25-05b-random")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def percentile(values, q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values), q))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None) -> None:
    args = parse_args(argv)
    import httpx
    import numpy as np

    from bench.common import machine_line, qwen25_05b_config, random_hf_folder
    from bench.predict_bench import make_pairs
    from prorank_jax import hf
    from prorank_jax.data import bundled_tokenizer_dir
    from scoring.reranker import Reranker

    config = qwen25_05b_config(args.layers)
    folder = Path(args.cache + (f"-{args.layers}l" if args.layers else ""))
    random_hf_folder(folder, config, seed=args.seed)
    hf.copy_tokenizer_files(bundled_tokenizer_dir(), folder)

    reranker = Reranker.from_pretrained(folder, dtype="float32", max_length=args.max_length, show_progress=False,
                                        steps_per_octave=args.steps_per_octave)
    qs, docs = make_pairs(reranker.tokenizer, args.requests * args.docs, args.doc_tokens, args.seed,
                          docs_per_query=args.docs)
    requests = [(qs[i * args.docs], docs[i * args.docs:(i + 1) * args.docs]) for i in range(args.requests)]
    pairs = args.requests * args.docs

    # ---------------------------------------------------------------- direct
    start = time.perf_counter()
    expected = [reranker.predict([q] * len(d), d) for q, d in requests]
    direct_warm = time.perf_counter() - start
    latencies = []
    start = time.perf_counter()
    for q, d in requests:
        t = time.perf_counter()
        reranker.predict([q] * len(d), d)
        latencies.append(time.perf_counter() - t)
    direct_total = time.perf_counter() - start
    direct = (pairs / direct_total, percentile(latencies, 50), percentile(latencies, 99))
    del reranker

    # ---------------------------------------------------------------- server
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "launch.cli", "serve", "--model", str(folder), "--port", str(port),
           "--max-length", str(args.max_length), "--max-batch-tokens", str(args.max_batch_tokens),
           "--max-batch-rows", str(args.max_batch_rows), "--max-wait-ms", str(args.max_wait_ms),
           "--steps-per-octave", str(args.steps_per_octave), "--dtype", "float32", "--log-level", "warning"]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
    try:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"server exited with {proc.returncode}")
            try:
                if httpx.get(url + "/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        startup = time.perf_counter() - started
        info = httpx.get(url + "/info", timeout=10).json()

        def send(http, i):
            q, d = requests[i]
            t = time.perf_counter()
            r = http.post("/v2/rerank", json={"query": q, "documents": d, "raw_scores": True})
            r.raise_for_status()
            results = r.json()["results"]
            got = np.zeros(len(d), np.float32)
            for x in results:
                got[x["index"]] = x["relevance_score"]
            return i, time.perf_counter() - t, got

        def run_pass():
            out, lock = [], threading.Lock()

            def client(c):
                with httpx.Client(base_url=url, timeout=600) as http:
                    for i in range(c, args.requests, args.clients):
                        item = send(http, i)
                        with lock:
                            out.append(item)

            start = time.perf_counter()
            with ThreadPoolExecutor(args.clients) as ex:
                list(ex.map(client, range(args.clients)))
            return out, time.perf_counter() - start

        run_pass()  # untimed, as on the direct side
        results, server_total = run_pass()
        diff = max(float(np.max(np.abs(got - expected[i]))) for i, _, got in results)
        lat = [s for _, s, _ in results]
        server = (pairs / server_total, percentile(lat, 50), percentile(lat, 99))
        metrics = httpx.get(url + "/metrics", timeout=10).text
    finally:
        proc.terminate()
        code = proc.wait(120)

    merged = next((line.split()[-1] for line in metrics.splitlines() if line.startswith("prorank_merged_batches_total")),
                  "?")
    compiles = [line for line in metrics.splitlines() if line.startswith("prorank_compiles_total")]
    print(f"machine: {machine_line()}; load average at end {os.getloadavg()[0]:.1f}")
    print(f"model: Qwen2.5-0.5B shape, {config.num_hidden_layers} layers, random weights, float32; "
          f"{args.requests} requests x {args.docs} documents (~{args.doc_tokens} tokens), max_length {args.max_length}")
    print(f"server start-up to /health 200: {startup:.1f} s ({info['batch_shapes']} batch shapes, "
          f"warm-up {info['warmup_seconds']:.1f} s); {'; '.join(compiles)}; merged batches {merged}; "
          f"exit code after SIGTERM {code}")
    print(f"direct first pass (compiles included): {direct_warm:.1f} s")
    print("| side | pairs/s | p50 latency s | p99 latency s |")
    print("|---|---|---|---|")
    print(f"| Reranker.predict, one process, sequential | {direct[0]:.2f} | {direct[1]:.3f} | {direct[2]:.3f} |")
    print(f"| prorank serve, {args.clients} HTTP clients | {server[0]:.2f} | {server[1]:.3f} | {server[2]:.3f} |")
    print(f"server / direct throughput: {server[0] / direct[0]:.2f}x; max |server - direct| score {diff:.2e}")


if __name__ == "__main__":
    main()
