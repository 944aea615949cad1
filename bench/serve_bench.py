"""`prorank serve` under load, against Reranker.predict on the same pairs, in one run.

    python -m bench.serve_bench --clients 1,8,32 --requests 64 --docs 20 --doc-tokens 200 \
        --max-length 512 [--before DIR]

Every side answers the same rerank requests (one query and --docs documents each, texts
from the bundled data as in bench/predict_bench.py) with the same model (the bundled tiny
model by default, or a random Qwen2.5-0.5B-shaped one with --qwen05b):

* direct: Reranker.predict per request, one after the other, in this process, once with
  the Reranker's defaults and once on the server's path (whole prompts, no packing), each
  after an untimed pass so that every shape is compiled;
* after: `prorank serve` from this tree as a subprocess; for each --clients count N, N
  threads share the --requests requests (httpx on /v2/rerank, raw_scores), after one untimed
  pass; then head-of-line blocking (a 2-document request sent while a 1,000-document one
  is being scored: its latency, and the large one's), and memory (four ~9.4 MB requests of
  nine 1 MB documents at once: the peak RSS growth over idle, from /proc VmHWM);
* before (with --before DIR, a checkout of an earlier commit, e.g. `git archive`): the
  same server measurements on that code.

Latency is per request (send to answer); throughput is pairs per second over the timed pass.
The server's scores are checked against the direct ones.
"""

from __future__ import annotations

import argparse
import json
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
    parser.add_argument("--clients", default="1,8,32", help="comma-separated client counts (default 1,8,32)")
    parser.add_argument("--requests", type=int, default=64, help="requests per timed pass (default 64)")
    parser.add_argument("--docs", type=int, default=20, help="documents per request (default 20)")
    parser.add_argument("--doc-tokens", type=int, default=200, help="mean document length in tokens (default 200)")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--max-batch-tokens", type=int, default=16384)
    parser.add_argument("--max-batch-rows", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--steps-per-octave", type=int, default=1)
    parser.add_argument("--qwen05b", action="store_true", help="a random Qwen2.5-0.5B-shaped model instead")
    parser.add_argument("--layers", type=int, default=None, help="with --qwen05b: fewer layers (default 24)")
    parser.add_argument("--cache", default="runs/bench/qwen25-05b-random")
    parser.add_argument("--before", default=None, help="source tree of the server to compare with")
    parser.add_argument("--skip-memory", action="store_true", help="no four-huge-requests memory case")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def percentile(values, q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values), q))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vm_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


class Server:
    """`prorank serve` from source tree `tree` as a subprocess."""

    def __init__(self, tree: Path, model: str, args):
        import httpx

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, PYTHONPATH=str(tree))
        cmd = [sys.executable, "-m", "launch.cli", "serve", "--model", model, "--port", str(self.port),
               "--max-length", str(args.max_length), "--max-batch-tokens", str(args.max_batch_tokens),
               "--max-batch-rows", str(args.max_batch_rows), "--max-wait-ms", str(args.max_wait_ms),
               "--steps-per-octave", str(args.steps_per_octave), "--dtype", "float32", "--log-level", "warning"]
        started = time.perf_counter()
        self.proc = subprocess.Popen(cmd, cwd=tree, env=env)
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited with {self.proc.returncode}")
            try:
                if httpx.get(self.url + "/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        self.startup_s = time.perf_counter() - started
        self.shapes = httpx.get(self.url + "/info", timeout=10).json()["batch_shapes"]

    def stop(self) -> int:
        self.proc.terminate()
        return self.proc.wait(120)


def post(http, q, d):
    import numpy as np

    t = time.perf_counter()
    r = http.post("/v2/rerank", json={"query": q, "documents": d, "raw_scores": True})
    r.raise_for_status()
    got = np.zeros(len(d), np.float32)
    for x in r.json()["results"]:
        got[x["index"]] = x["relevance_score"]
    return time.perf_counter() - t, got


def load_pass(url: str, requests, clients: int):
    """(pairs/s, p50 s, p99 s, answers by request index) with `clients` threads sharing the requests."""
    import httpx

    out, lock = {}, threading.Lock()

    def client(c):
        with httpx.Client(base_url=url, timeout=3600) as http:
            for i in range(c, len(requests), clients):
                item = post(http, *requests[i])
                with lock:
                    out[i] = item

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as ex:
        list(ex.map(client, range(clients)))
    total = time.perf_counter() - start
    lat = [s for s, _ in out.values()]
    pairs = sum(len(d) for _, d in requests)
    return pairs / total, percentile(lat, 50), percentile(lat, 99), {i: got for i, (_, got) in out.items()}


def head_of_line(url: str, big, small) -> tuple[float, float]:
    """Seconds of a small request sent while a large one is being scored, and of the large one."""
    import httpx

    times = {}

    def send(name, q, d):
        with httpx.Client(base_url=url, timeout=3600) as http:
            times[name] = post(http, q, d)[0]

    def batches_run() -> float:
        text = httpx.get(url + "/metrics", timeout=30).text
        return float(next(line.split()[-1] for line in text.splitlines() if line.startswith("prorank_batch_pairs_count")))

    before = batches_run()
    big_thread = threading.Thread(target=send, args=("big", *big))
    big_thread.start()
    while batches_run() == before:  # until the large request's first batch has run
        time.sleep(0.01)
    send("small", *small)
    big_thread.join()
    return times["small"], times["big"]


def huge_requests_peak_mib(server: Server, query: str) -> float:
    """Peak RSS growth over idle (MiB) while four ~9.4 MB requests are answered at once."""
    import httpx

    docs = [f"document {i}: " + ("plants grow in the light of the sun and the rain " * 22_000)[:1_040_000]
            for i in range(9)]
    body = json.dumps({"query": query, "documents": docs, "raw_scores": True})
    idle = vm_kib(server.proc.pid, "VmRSS")
    Path(f"/proc/{server.proc.pid}/clear_refs").write_text("5")

    def send(_):
        with httpx.Client(base_url=server.url, timeout=3600) as http:
            r = http.post("/v2/rerank", content=body, headers={"content-type": "application/json"})
            return r.status_code

    with ThreadPoolExecutor(4) as ex:
        codes = list(ex.map(send, range(4)))
    assert all(c == 200 for c in codes), codes
    return (vm_kib(server.proc.pid, "VmHWM") - idle) / 1024


def measure_server(name: str, tree: Path, model: str, args, requests, expected, big, small) -> dict:
    import numpy as np

    server = Server(tree, model, args)
    try:
        load_pass(server.url, requests, 1)  # untimed: every shape has run once
        rows = {}
        for clients in [int(c) for c in args.clients.split(",")]:
            rate, p50, p99, answers = load_pass(server.url, requests, clients)
            diff = max(float(np.max(np.abs(answers[i] - expected[i]))) for i in answers)
            rows[clients] = (rate, p50, p99, diff)
        hol = head_of_line(server.url, big, small)
        memory = None if args.skip_memory else huge_requests_peak_mib(server, requests[0][0])
    finally:
        code = server.stop()
    side = {"name": name, "startup": server.startup_s, "shapes": server.shapes, "rows": rows, "hol": hol,
            "memory": memory, "exit": code}
    print(f"measured: {side}", flush=True)
    return side


def direct_pass(reranker, requests) -> tuple[float, float, float, list]:
    [reranker.predict([q] * len(d), d) for q, d in requests]  # untimed: compiles
    lat, out = [], []
    start = time.perf_counter()
    for q, d in requests:
        t = time.perf_counter()
        out.append(reranker.predict([q] * len(d), d))
        lat.append(time.perf_counter() - t)
    total = time.perf_counter() - start
    pairs = sum(len(d) for _, d in requests)
    return pairs / total, percentile(lat, 50), percentile(lat, 99), out


def main(argv=None) -> None:
    args = parse_args(argv)
    from bench.common import machine_line, qwen25_05b_config, random_hf_folder
    from bench.predict_bench import make_pairs
    from prorank_jax import hf
    from prorank_jax.data import bundled_tokenizer_dir
    from scoring.reranker import Reranker

    if args.qwen05b:
        config = qwen25_05b_config(args.layers)
        folder = Path(args.cache + (f"-{args.layers}l" if args.layers else ""))
        random_hf_folder(folder, config, seed=args.seed)
        hf.copy_tokenizer_files(bundled_tokenizer_dir(), folder)
        model, label = str(folder.resolve()), f"random Qwen2.5-0.5B shape, {config.num_hidden_layers} layers"
    else:
        model, label = "bundled_warm_start", "the bundled tiny model (bundled_warm_start)"

    common = dict(dtype="float32", max_length=args.max_length, show_progress=False,
                  steps_per_octave=args.steps_per_octave)
    reranker = Reranker.from_pretrained(model, **common)
    qs, docs = make_pairs(reranker.tokenizer, args.requests * args.docs, args.doc_tokens, args.seed,
                          docs_per_query=args.docs)
    requests = [(qs[i * args.docs], docs[i * args.docs:(i + 1) * args.docs]) for i in range(args.requests)]
    big_q, big_docs = make_pairs(reranker.tokenizer, 1000, args.doc_tokens, args.seed + 1, docs_per_query=1000)
    big, small = (big_q[0], big_docs), (requests[0][0], requests[0][1][:2])

    direct_default = direct_pass(reranker, requests)
    server_path = Reranker.from_pretrained(model, reuse_prefix=False, pack_tokens=False, **common)
    direct_whole = direct_pass(server_path, requests)
    expected = direct_whole[3]
    del reranker, server_path

    sides = [measure_server("after (this tree)", ROOT, model, args, requests, expected, big, small)]
    if args.before:
        sides.append(measure_server(f"before ({args.before})", Path(args.before).resolve(), model, args, requests,
                                    expected, big, small))

    print(f"machine: {machine_line()}; load average at end {os.getloadavg()[0]:.1f}")
    print(f"model: {label}, float32; {args.requests} requests x {args.docs} documents (~{args.doc_tokens} "
          f"tokens), max_length {args.max_length}, max_batch_tokens {args.max_batch_tokens}")
    print("| side | clients | pairs/s | p50 s | p99 s | max score diff |")
    print("|---|---|---|---|---|---|")
    print(f"| Reranker.predict, defaults, sequential | 1 | {direct_default[0]:.1f} | {direct_default[1]:.3f} | "
          f"{direct_default[2]:.3f} | |")
    print(f"| Reranker.predict, whole prompts (the server's path), sequential | 1 | {direct_whole[0]:.1f} | "
          f"{direct_whole[1]:.3f} | {direct_whole[2]:.3f} | |")
    for side in sides:
        for clients, (rate, p50, p99, diff) in side["rows"].items():
            print(f"| serve {side['name']} | {clients} | {rate:.1f} | {p50:.3f} | {p99:.3f} | {diff:.1e} |")
    print()
    print("| side | start-up to /health 200 s (shapes) | 2-doc request behind a 1,000-doc one s | the 1,000-doc "
          "request s | peak RSS growth, 4 x 9.4 MB at once, MiB | exit code after SIGTERM |")
    print("|---|---|---|---|---|---|")
    for side in sides:
        memory = "-" if side["memory"] is None else f"{side['memory']:.0f}"
        print(f"| serve {side['name']} | {side['startup']:.0f} ({side['shapes']}) | {side['hol'][0]:.2f} | "
              f"{side['hol'][1]:.2f} | {memory} | {side['exit']} |")


if __name__ == "__main__":
    main()
