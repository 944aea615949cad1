"""The rerank server's pure parts, without a server process: fair batch planning and the
batcher's interleaving and dropping (with a scorer that records what it ran), the early
cut of long texts (against the prompt's own ids of the whole text), and the strict body
parser (against json's and pydantic's own verdicts)."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from prorank_jax.data import bundled_tokenizer_dir
from prorank_jax.prompts import RerankPrompt
from scoring.dynamic_batcher import DynamicBatcher, Job, plan_fair_batch, serving_ladder
from scoring.server_api import CohereRerankRequest, TeiRerankRequest
from scoring.server_body import ApiError, MAX_JSON_DEPTH, json_depth, parse_rerank_body
from scoring.server_encoding import CUT_MARGIN_TOKENS, cut_text_early, encode_pairs

LADDER = serving_ladder(8, 64, max_batch_tokens=256, max_rows=8, steps_per_octave=1)


# ----------------------------------------------------------------------------- fair batching
def test_plan_fair_batch_interleaves_a_small_request_behind_a_large_one():
    big, small = [40] * 1000, [12, 10]
    taken, rows, length = plan_fair_batch([big, small], LADDER)
    assert taken[1] == 2 and sum(taken) == rows == LADDER.max_rows(length) and length == 40
    # alone, the large request fills the batch; a lone long pair still makes progress
    assert plan_fair_batch([big], LADDER)[0] == [LADDER.max_rows(40)]
    assert plan_fair_batch([[64], [8] * 10], LADDER)[0][0] == 1


def test_plan_fair_batch_grows_with_the_load():
    # a lone request of 20 pairs in 8-row batches of 16 tokens (LADDER: 256 tokens, 8 rows):
    # 8 + 8 + 4, no filler row; 5 pairs would leave 3 of 8 rows to filler, so 4 then 1
    assert LADDER.max_rows(16) == 8
    sizes, pending = [], [16] * 20
    while pending:
        taken, rows, length = plan_fair_batch([pending], LADDER)
        assert taken[0] == rows and length == 16
        sizes.append(rows)
        pending = pending[rows:]
    assert sizes == [8, 8, 4]
    assert plan_fair_batch([[16] * 5], LADDER) == ([4], 4, 16)
    assert plan_fair_batch([[16] * 3], LADDER) == ([3], 4, 16)  # one filler row of 4 is kept
    # with company the batch fills its rows: two requests of 3 and 2 pairs and one of 6
    assert plan_fair_batch([[16] * 3, [16] * 2, [16] * 6], LADDER) == ([3, 2, 3], 8, 16)
    # what goes back is the last taken, and the batch's length follows what stays
    assert plan_fair_batch([[8]] * 4 + [[32]], LADDER) == ([1, 1, 1, 1, 0], 4, 8)
    assert plan_fair_batch([[32], [8], [8], [8], [8]], LADDER) == ([1, 1, 1, 1, 0], 4, 32)


def test_plan_fair_batch_never_exceeds_the_shape_of_its_longest_pair():
    rng = np.random.RandomState(0)
    for _ in range(200):
        jobs = [sorted(rng.randint(1, 65, size=rng.randint(1, 30)).tolist(), reverse=True)
                for _ in range(rng.randint(1, 6))]
        taken, rows, length = plan_fair_batch(jobs, LADDER)
        lengths = [x for j, n in zip(jobs, taken) for x in j[:n]]
        assert taken[0] >= 1 and all(0 <= n <= len(j) for j, n in zip(jobs, taken))
        assert max(lengths) <= length and len(lengths) <= rows <= LADDER.max_rows(length)
        assert (rows, length) in LADDER.shapes


class RecordingScorer:
    """run_batch for a batcher: score = number of tokens of a row; `pairs` logs each batch's
    pairs (a pair's ids are all its own number; filler rows repeat one); `gate` holds each
    batch until the test lets it run."""

    def __init__(self, gated: bool = False):
        self.pairs: list[set[int]] = []
        self.gate = threading.Semaphore(0) if gated else None

    @property
    def batches(self) -> list[int]:
        return [len(p) for p in self.pairs]

    def __call__(self, ids, mask):
        if self.gate is not None:
            self.gate.acquire(timeout=30)
        self.pairs.append({int(i) for i in ids[:, -1]})
        return mask.sum(axis=1).astype(np.float32)


_next_pair = [1]


def _job(lengths, results, name, scorer=None):
    """A job whose answer lands in results[name], with the number of batches run by then."""
    first = _next_pair[0]
    _next_pair[0] += len(lengths)
    return Job([[first + k] * n for k, n in enumerate(lengths)],
               lambda value: results.__setitem__(name, (value, len(scorer.batches) if scorer else None)))


def _wait_for(results, names, timeout=30.0):
    import time

    deadline = time.monotonic() + timeout
    while not set(names) <= set(results):
        assert time.monotonic() < deadline, f"no answer for {set(names) - set(results)}"
        time.sleep(0.01)


def test_batcher_answers_a_small_request_within_a_batch_or_two_of_a_large_one():
    scorer = RecordingScorer(gated=True)
    batcher = DynamicBatcher(scorer, lambda rows, length: None, LADDER, pad_id=0, max_batch_tokens=256,
                             max_wait_s=0.0)
    batcher.start()
    results: dict = {}
    big = [30 + i % 30 for i in range(200)]
    batcher.submit(_job(big, results, "big", scorer))
    scorer.gate.release()  # the first batch (big only) runs
    while not scorer.batches:
        threading.Event().wait(0.01)
    batcher.submit(_job([9, 17], results, "small", scorer))
    for _ in range(400):
        scorer.gate.release()
    _wait_for(results, ["big", "small"])
    assert batcher.stop(timeout=30)
    np.testing.assert_array_equal(results["big"][0], big)
    np.testing.assert_array_equal(results["small"][0], [9, 17])
    assert sum(scorer.batches) == len(set().union(*scorer.pairs)) == len(big) + 2  # each pair once
    # Answered once at most 4 batches had run (the one running when it arrived, the next one
    # already planned, its own, and the one dispatched before its scores were collected),
    # while the large request took more than 30.
    assert results["small"][1] <= 4 < 30 < results["big"][1]


def test_batcher_drops_the_rest_of_a_request_whose_client_left():
    scorer = RecordingScorer(gated=True)
    batcher = DynamicBatcher(scorer, lambda rows, length: None, LADDER, pad_id=0, max_batch_tokens=256,
                             max_wait_s=0.0)
    batcher.start()
    results: dict = {}
    gone = batcher.submit(_job([40] * 100, results, "gone"))
    scorer.gate.release()
    while not scorer.batches:
        threading.Event().wait(0.01)
    gone.cancel()
    batcher.submit(_job([10, 11, 12], results, "stays"))
    for _ in range(100):
        scorer.gate.release()
    _wait_for(results, ["stays"])
    assert batcher.stop(timeout=30)
    np.testing.assert_array_equal(results["stays"][0], [10, 11, 12])
    assert "gone" not in results
    # at most the batch running and the one planned beside it were computed for the client that left
    assert sum(scorer.batches) - 3 <= 2 * LADDER.max_rows(40)
    assert batcher.queued_tokens == 0


# ----------------------------------------------------------------------------- early cut
@pytest.fixture(scope="module")
def prompt():
    from transformers import AutoTokenizer

    return RerankPrompt(AutoTokenizer.from_pretrained(bundled_tokenizer_dir()), 48, 1024)


LONG_TEXTS = [
    "Plants make food from sunlight, water and carbon dioxide. " * 400,
    "a" * 50_000,
    "🌱🌞" * 5_000,
    " " * 20_000 + "x",
    "日本語のテキスト" * 3_000,
    "word\n\n" * 4_000,
    "x",
    "",
]


def test_early_cut_keeps_exactly_the_ids_the_whole_text_gives(prompt):
    for text in LONG_TEXTS:
        cut = cut_text_early(prompt, text, prompt.max_total_length)
        assert text.startswith(cut)
        whole = prompt._encode_many(["document: " + text])[0]
        assert prompt._encode_many(["document: " + cut])[0][: prompt.max_total_length] == \
            whole[: prompt.max_total_length], text[:20]
        if len(cut) < len(text):
            assert len(prompt._encode_many([cut])[0]) >= prompt.max_total_length + CUT_MARGIN_TOKENS
    assert encode_pairs(prompt, "a query", LONG_TEXTS) == prompt.encode_batch(["a query"] * len(LONG_TEXTS),
                                                                              LONG_TEXTS)
    assert len(cut_text_early(prompt, LONG_TEXTS[0], 48)) < 2_000


# ----------------------------------------------------------------------------- strict bodies
def _parse(body, content_type="application/json"):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return parse_rerank_body(raw, content_type)


def test_body_kind_follows_its_fields():
    assert isinstance(_parse({"query": "q", "texts": ["a"]}), TeiRerankRequest)
    assert isinstance(_parse({"query": "q", "documents": ["a", {"text": "b"}]}), CohereRerankRequest)
    assert isinstance(_parse({"query": "q", "documents": ["a"]}, "application/json; charset=utf-8"),
                      CohereRerankRequest)


@pytest.mark.parametrize("body, content_type, status, needle", [
    ({"query": "q", "documents": ["a"], "top_n": True}, "application/json", 422, "top_n: Input should be a valid integer"),
    ({"query": "q", "documents": ["a"], "top_n": "1"}, "application/json", 422, "top_n:"),
    ({"query": "q", "documents": ["a"], "top_n": 1.0}, "application/json", 422, "top_n:"),
    ({"query": "q", "documents": ["a"], "return_documents": "yes"}, "application/json", 422, "return_documents:"),
    ({"query": "q", "texts": ["a"], "truncate": 1}, "application/json", 422, "truncate:"),
    ({"query": "q", "documents": ["ok", "\ud800"]}, "application/json", 422, "documents[1]: contains a lone UTF-16"),
    ({"query": "\udfff", "texts": ["a"]}, "application/json", 422, "query: contains a lone UTF-16"),
    ([1, 2], "application/json", 422, "body: expected a JSON object, got an array"),
    ({"query": "q", "documents": ["a"]}, None, 415, "Content-Type: missing"),
    ({"query": "q", "documents": ["a"]}, "text/plain", 415, "Content-Type: expected application/json"),
    ({"query": "q", "documents": ["a"]}, "application/json; charset=latin-1", 415, "charset must be utf-8"),
    (b'{"query": "q", "documents": ["caf\xe9"]}', "application/json", 400, "not valid UTF-8 (byte 0xe9 at offset 33)"),
    (b"[" * 100_000 + b"]" * 100_000, "application/json", 400, "nested 100000 levels deep"),
    (b'{"query": "q", "documents": ["a"]', "application/json", 400, "malformed JSON"),
])
def test_bad_bodies_are_refused_naming_the_problem(body, content_type, status, needle):
    with pytest.raises(ApiError) as err:
        _parse(body, content_type)
    assert err.value.status == status and needle in err.value.message, err.value.message


def test_json_depth_ignores_brackets_in_strings():
    assert json_depth(b'{"a": "[[[[{{{{", "b": [[1]], "c": "\\"[["}') == 3
    assert json_depth(json.dumps({"q": "x", "documents": ["a"]}).encode()) == 2
    nested = b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH
    assert json_depth(nested) == MAX_JSON_DEPTH


# ----------------------------------------------------------------------------- docs
def test_serving_doc_lists_every_flag_of_serve_help():
    from pathlib import Path

    from launch.serve import build_parser

    doc = (Path(__file__).resolve().parents[2] / "docs" / "serving.md").read_text()
    section = doc.split("\n## `prorank serve`\n", 1)[1].split("\n## ", 1)[0]
    flags = {opt for action in build_parser()._actions for opt in action.option_strings
             if opt.startswith("--") and opt != "--help"}
    assert flags and not {f for f in flags if f not in section}, sorted(f for f in flags if f not in section)
