"""`prorank serve`: the real server as a subprocess on 127.0.0.1, talked to over HTTP with the
official Cohere SDK and httpx, its scores checked against Reranker.predict in this process.

One server (bundled tiny model, max_length 48 so that documents get truncated, one padded
length and rows 1..8: 4 shapes to compile) serves every test but the SIGTERM one, which
gets a second server started alongside it (long --max-wait-ms so a request is reliably in
flight when the signal comes).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cohere
import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from prorank_jax.data import bundled_tokenizer_dir
from prorank_jax.pretrained import bundled_warm_start_dir
from scoring.dynamic_batcher import plan_token_batches, serving_ladder
from scoring.reranker import Reranker, top_k_order
from scoring.server import encode_pairs

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "test-key-123"
MAX_LENGTH = 48
SERVER_ARGS = ["--max-length", str(MAX_LENGTH), "--steps-per-octave", "1", "--max-batch-rows", "8",
               "--max-batch-tokens", "1024", "--max-documents", "40", "--max-request-bytes", "20000"]
ATOL = 1e-5
STARTUP_TIMEOUT_S = 300
QUERY = "how do plants make food?"
DOCUMENTS = [
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "The mitochondria is the powerhouse of the cell; it produces ATP through respiration.",
    "",
    "Grüße aus Köln — 日本語のテキスト, emoji 🌱🌞 and accents: café, naïve.",
    "Plants make food from sunlight, water and carbon dioxide. " * 6,  # cut by max_length
    "The quick brown fox jumps over the lazy dog.",
]
INSTRUCTION = "find passages that answer the question"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(self, tmp: Path, extra_args: list[str], name: str):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        key_file = tmp / f"{name}.key"
        key_file.write_text(API_KEY + "\n")
        self.log = open(tmp / f"{name}.log", "w+")
        env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
        # The server must compile its shapes itself: /metrics counts those compiles, and the
        # test session's shared cache (tests/conftest.py) would turn them into cache loads.
        env.pop("JAX_COMPILATION_CACHE_DIR", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "launch.cli", "serve", "--model", "bundled_warm_start", "--port", str(self.port),
             "--api-key-file", str(key_file), "--log-level", "warning", *extra_args],
            cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"server exited with {self.proc.returncode} during start-up:\n{self.output()}")
            try:
                if httpx.get(self.url + "/health", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        pytest.fail(f"server not ready after {STARTUP_TIMEOUT_S} s:\n{self.output()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        self.log.close()


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    main = ServerProcess(tmp, [*SERVER_ARGS, "--max-wait-ms", "20"], "main")
    # Rows 1 only: one shape; a single request waits up to 3 s for company, so it is in
    # flight when the SIGTERM test signals.
    draining = ServerProcess(tmp, ["--max-length", str(MAX_LENGTH), "--steps-per-octave", "1",
                                   "--max-batch-rows", "1", "--max-wait-ms", "3000"], "draining")
    try:
        main.wait_ready()
        draining.wait_ready()
        yield main, draining
    finally:
        main.stop()
        draining.stop()


@pytest.fixture(scope="module")
def server(servers):
    return servers[0]


@pytest.fixture(scope="module")
def reference():
    return Reranker.from_pretrained(bundled_warm_start_dir(), tokenizer=bundled_tokenizer_dir(), max_length=MAX_LENGTH,
                                    dtype="float32", batch_size=8, steps_per_octave=1, show_progress=False,
                                    reuse_prefix=False, pack_tokens=False)


def auth() -> dict:
    return {"Authorization": f"Bearer {API_KEY}"}


def metric_samples(url: str) -> dict[tuple, float]:
    text = httpx.get(url + "/metrics", timeout=10).text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def expected_order(scores: np.ndarray, top_n: int | None = None) -> list[int]:
    return [int(i) for i in top_k_order(scores, top_n or len(scores))]


# ----------------------------------------------------------------------------- pure planning
def test_ladder_plans_cover_every_pair_once_within_budget():
    ladder = serving_ladder(79, 300, max_batch_tokens=1024, max_rows=16, steps_per_octave=2)
    shapes = set(ladder.shapes)
    assert ladder.lengths == (96, 128, 192, 256, 304)
    assert all(rows * length <= 1024 for rows, length in shapes)
    rng = np.random.RandomState(0)
    lengths = rng.randint(79, 301, size=137)
    batches = plan_token_batches(lengths, ladder)
    seen = np.concatenate([b.indices for b in batches])
    assert sorted(seen.tolist()) == list(range(137))
    for b in batches:
        assert (b.rows, b.length) in shapes and len(b.indices) <= b.rows
        assert lengths[b.indices].max() <= b.length
    with pytest.raises(ValueError, match="max_batch_tokens=200"):
        serving_ladder(79, 300, max_batch_tokens=200, max_rows=16, steps_per_octave=2)


# ----------------------------------------------------------------------------- scores
def test_cohere_sdk_v2_matches_predict(server, reference):
    client = cohere.ClientV2(api_key=API_KEY, base_url=server.url, timeout=60)
    expected = reference.predict([QUERY] * len(DOCUMENTS), DOCUMENTS, normalize=True)
    full = client.rerank(model="tiny", query=QUERY, documents=DOCUMENTS)
    assert [r.index for r in full.results] == expected_order(expected)
    np.testing.assert_allclose([r.relevance_score for r in full.results], expected[expected_order(expected)],
                               atol=ATOL, rtol=0)
    assert full.meta.api_version.version == "2"
    encoded = reference.prompt.encode_batch([QUERY] * len(DOCUMENTS), DOCUMENTS)
    cut = sum(e.document_truncated for e in encoded)
    assert cut >= 1 and full.meta.truncated_documents == cut and len(full.meta.warnings) == 1
    assert f"{cut} of {len(DOCUMENTS)} documents were truncated" in full.meta.warnings[0]
    top = client.rerank(model="tiny", query=QUERY, documents=DOCUMENTS, top_n=2)
    assert [r.index for r in top.results] == expected_order(expected, 2)


def test_cohere_sdk_v1_object_documents_and_return_documents(server, reference):
    client = cohere.Client(api_key=API_KEY, base_url=server.url, timeout=60)
    documents = [{"text": d} if i % 2 else d for i, d in enumerate(DOCUMENTS)]
    expected = reference.predict([QUERY] * len(DOCUMENTS), DOCUMENTS, normalize=True)
    response = client.rerank(query=QUERY, documents=documents, top_n=3, return_documents=True, model="tiny")
    order = expected_order(expected, 3)
    assert [r.index for r in response.results] == order
    assert [r.document.text for r in response.results] == [DOCUMENTS[i] for i in order]
    np.testing.assert_allclose([r.relevance_score for r in response.results], expected[order], atol=ATOL, rtol=0)


def test_httpx_instruction_raw_scores_and_tei_shape(server, reference):
    raw = reference.predict([QUERY] * len(DOCUMENTS), DOCUMENTS, instruction=INSTRUCTION)
    with httpx.Client(base_url=server.url, headers=auth(), timeout=60) as http:
        r = http.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS, "instruction": INSTRUCTION,
                                          "raw_scores": True, "return_documents": True})
        assert r.status_code == 200, r.text
        body = r.json()
        assert [x["index"] for x in body["results"]] == expected_order(raw)
        np.testing.assert_allclose([x["relevance_score"] for x in body["results"]], raw[expected_order(raw)],
                                   atol=ATOL, rtol=0)
        assert body["usage"]["total_tokens"] == sum(
            len(e) for e in reference.prompt.encode_batch([QUERY] * len(DOCUMENTS), DOCUMENTS, instruction=INSTRUCTION))
        assert int(r.headers["X-Truncated-Documents"]) == body["meta"]["truncated_documents"] >= 1

        normalized = reference.predict([QUERY] * len(DOCUMENTS), DOCUMENTS, normalize=True)
        tei = http.post("/rerank", json={"query": QUERY, "texts": DOCUMENTS, "truncate": True, "return_text": True})
        assert tei.status_code == 200, tei.text
        assert [x["index"] for x in tei.json()] == expected_order(normalized)
        assert [x["text"] for x in tei.json()] == [DOCUMENTS[i] for i in expected_order(normalized)]
        np.testing.assert_allclose([x["score"] for x in tei.json()], normalized[expected_order(normalized)],
                                   atol=ATOL, rtol=0)
        tei_raw = http.post("/rerank", json={"query": QUERY, "texts": DOCUMENTS[:4], "raw_scores": True, "truncate": True}).json()
        raw_plain = reference.predict([QUERY] * 4, DOCUMENTS[:4])
        assert [x["index"] for x in tei_raw] == expected_order(raw_plain) and "text" not in tei_raw[0]
        np.testing.assert_allclose([x["score"] for x in tei_raw], raw_plain[expected_order(raw_plain)],
                                   atol=ATOL, rtol=0)


def test_max_tokens_per_doc_cuts_the_document_piece(server, reference):
    """Reference: a document text whose piece re-encodes to exactly the kept ids."""
    prompt, doc = reference.prompt, DOCUMENTS[0]
    ids = prompt._encode_many(["document: " + doc])[0]
    tok = reference.tokenizer
    for n in range(len(ids) - 1, 3, -1):
        text = tok.decode(ids[:n])
        if text.startswith("document: ") and prompt._encode_many([text])[0] == ids[:n]:
            break
    else:
        pytest.fail("no cut of the document re-encodes to its own ids")
    kept = text[len("document: "):]
    expected = reference.predict([QUERY, QUERY], [kept, DOCUMENTS[5]], normalize=True)
    with httpx.Client(base_url=server.url, headers=auth(), timeout=60) as http:
        body = http.post("/v2/rerank", json={"query": QUERY, "documents": [doc, DOCUMENTS[5]],
                                             "max_tokens_per_doc": n}).json()
    got = {x["index"]: x["relevance_score"] for x in body["results"]}
    np.testing.assert_allclose([got[0], got[1]], expected, atol=ATOL, rtol=0)
    long_other = len(prompt._encode_many(["document: " + DOCUMENTS[5]])[0]) > n
    assert body["meta"]["truncated_documents"] == 1 + long_other
    pairs = encode_pairs(prompt, QUERY, [doc], max_tokens_per_doc=n)
    assert pairs[0].document_truncated


# ----------------------------------------------------------------------------- bad input
BAD = [
    # (path, json body or raw bytes, headers, status, text the message must hold)
    ("/v2/rerank", b'{"query": "q", "documents": ["a"', None, 400, "malformed JSON"),
    ("/v2/rerank", {"documents": ["a"]}, None, 422, "query: field required"),
    ("/v2/rerank", {"query": "q"}, None, 422, "documents: field required"),
    ("/v2/rerank", {"query": "q", "documents": []}, None, 422, "documents: List should have at least 1 item"),
    ("/v2/rerank", {"query": "q", "documents": ["a", 5]}, None, 422, "documents[1]"),
    ("/v1/rerank", {"query": "q", "documents": [{"title": "a"}]}, None, 422, "documents[0]"),
    ("/v2/rerank", {"query": "q", "documents": ["a"], "top_n": 0}, None, 422, "top_n:"),
    ("/v2/rerank", {"query": "  ", "documents": ["a"]}, None, 422, "query:"),
    ("/v2/rerank", {"query": 3, "documents": ["a"]}, None, 422, "query:"),
    ("/v2/rerank", {"query": "q", "documents": ["a"], "max_tokens_per_doc": 0}, None, 422, "max_tokens_per_doc:"),
    ("/rerank", {"query": "q", "texts": "a"}, None, 422, "texts:"),
    ("/rerank", {"query": "q", "texts": ["a"], "truncation_direction": "Left"}, None, 422, "truncation_direction:"),
    ("/rerank", {"query": "q", "texts": ["short", DOCUMENTS[4]]}, None, 413, "texts[1]"),
    ("/v2/rerank", {"query": "q", "documents": ["a"] * 41}, None, 413, "documents: 41 documents"),
    ("/v2/rerank", {"query": "q", "documents": ["a" * 30000]}, None, 413, "--max-request-bytes"),
    ("/v2/rerank", {"query": "q", "documents": ["a"]}, {"Authorization": "Bearer wrong"}, 401, "Authorization"),
    ("/v2/rerank", {"query": "q", "documents": ["a"]}, {}, 401, "Authorization"),
]


def test_bad_inputs_get_their_status_and_name_the_field(server, reference):
    with httpx.Client(base_url=server.url, timeout=60) as http:
        for path, body, headers, status, needle in BAD:
            kwargs = {"content": body, "headers": {"content-type": "application/json"}} if isinstance(body, bytes) \
                else {"json": body}
            kwargs.setdefault("headers", {}).update(auth() if headers is None else headers)
            r = http.post(path, **kwargs)
            assert r.status_code == status, (path, body, r.status_code, r.text)
            message = r.json()["message"]
            assert needle in message, (path, body, message)
        # still serving, and right
        r = http.post("/v2/rerank", json={"query": QUERY, "documents": DOCUMENTS[:3]}, headers=auth())
        assert r.status_code == 200
        expected = reference.predict([QUERY] * 3, DOCUMENTS[:3], normalize=True)
        np.testing.assert_allclose(sorted(x["relevance_score"] for x in r.json()["results"]), sorted(expected),
                                   atol=ATOL, rtol=0)
    samples = metric_samples(server.url)
    for kind in ("json", "validation", "too_large", "unauthorized"):
        assert samples[("prorank_errors_total", (("kind", kind),))] >= 1, kind


# ----------------------------------------------------------------------------- concurrency
def test_concurrent_clients_each_get_their_own_scores(server, reference):
    pool = DOCUMENTS + [f"document number {i} about {w}" for i, w in enumerate(
        ["leaves", "roots", "sugar", "light", "water", "cells", "soil", "chlorophyll", "oxygen", "seeds"])]
    queries = [QUERY, "what is ATP?", "unicode 🌍 query", "fox"]
    rng = np.random.RandomState(0)
    requests = [[(queries[rng.randint(len(queries))], [pool[j] for j in rng.choice(len(pool), rng.randint(1, 13),
                                                                                replace=False)])
                 for _ in range(20)] for _ in range(32)]
    pairs = sorted({(q, d) for client in requests for q, docs in client for d in docs})
    values = reference.predict([q for q, _ in pairs], [d for _, d in pairs])
    expected = dict(zip(pairs, values))
    before = metric_samples(server.url)
    disconnected = threading.Event()

    def client(jobs):
        with httpx.Client(base_url=server.url, headers=auth(), timeout=120) as http:
            for q, docs in jobs:
                r = http.post("/v1/rerank", json={"query": q, "documents": docs, "raw_scores": True})
                assert r.status_code == 200, r.text
                results = r.json()["results"]
                assert sorted(x["index"] for x in results) == list(range(len(docs)))  # nothing lost or doubled
                got = np.array([x["relevance_score"] for x in sorted(results, key=lambda x: x["index"])])
                np.testing.assert_allclose(got, [expected[(q, d)] for d in docs], atol=ATOL, rtol=0)
        return len(jobs)

    def leaver():
        # A client that sends a full request and hangs up at once, while the others run.
        for _ in range(5):
            with socket.create_connection(("127.0.0.1", server.port)) as s:
                body = b'{"query": "fox", "documents": ["a", "b", "c"]}'
                s.sendall(b"POST /v2/rerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          b"Authorization: Bearer " + API_KEY.encode() + b"\r\n"
                          b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        disconnected.set()

    with ThreadPoolExecutor(33) as ex:
        futures = [ex.submit(client, jobs) for jobs in requests] + [ex.submit(leaver)]
        done = [f.result(timeout=300) for f in futures]
    assert sum(d for d in done if d) == 32 * 20
    after = metric_samples(server.url)
    merged = after[("prorank_merged_batches_total", ())] - before.get(("prorank_merged_batches_total", ()), 0)
    assert merged >= 1
    assert after[("prorank_batch_requests_count", ())] > after[("prorank_batch_requests_bucket", (("le", "1.0"),))]
    deadline = time.monotonic() + 10
    while after.get(("prorank_client_disconnects_total", ()), 0) < 1 and time.monotonic() < deadline:
        time.sleep(0.2)
        after = metric_samples(server.url)
    assert after[("prorank_client_disconnects_total", ())] >= 1
    # no request compiled anything: every shape was compiled before /health said ready
    assert after[("prorank_compiles_total", (("phase", "serving"),))] == 0
    assert after[("prorank_compiles_total", (("phase", "startup"),))] >= after[("prorank_compiled_shapes", ())] == 4


def test_info_and_health(server):
    info = httpx.get(server.url + "/info", timeout=10).json()
    assert info["max_input_length"] == MAX_LENGTH and info["ready"] and info["batch_shapes"] == 4
    assert info["devices"] and info["model_type"] == "qwen2" and "raw_scores" in info["score"]
    assert httpx.get(server.url + "/health", timeout=10).json() == {"status": "ok"}
    assert httpx.get(server.url + "/openapi.json", timeout=10).json()["paths"].keys() >= {"/v1/rerank", "/v2/rerank",
                                                                                         "/rerank"}


# ----------------------------------------------------------------------------- shutdown
def test_sigterm_drains_in_flight_requests_and_exits_0(servers, reference):
    draining = servers[1]
    result = {}

    def request():
        r = httpx.post(draining.url + "/v2/rerank", json={"query": QUERY, "documents": DOCUMENTS[:2]},
                       headers=auth(), timeout=60)
        result["status"], result["body"] = r.status_code, r.json()

    thread = threading.Thread(target=request)
    thread.start()
    deadline = time.monotonic() + 30
    while metric_samples(draining.url).get(("prorank_requests_in_flight", ()), 0) < 1:
        assert time.monotonic() < deadline, "request never reached the server"
        time.sleep(0.05)
    draining.proc.send_signal(signal.SIGTERM)
    thread.join(60)
    assert draining.proc.wait(60) == 0, draining.output()
    assert result["status"] == 200
    expected = reference.predict([QUERY] * 2, DOCUMENTS[:2], normalize=True)
    np.testing.assert_allclose(sorted(x["relevance_score"] for x in result["body"]["results"]), sorted(expected),
                               atol=ATOL, rtol=0)
