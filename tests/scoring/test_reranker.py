"""Reranker.predict / rank against mxbai-rerank's scoring with transformers' PyTorch Qwen2.

The oracle is MxbaiRerankV2.predict, transcribed: prompt ids from prorank_jax.prompts (checked
id for id against mxbai's prepare_inputs in tests/prorank_jax/test_prompts.py), the whole list
left-padded to the longest prompt rounded up to a multiple of 8, Qwen2ForCausalLM called with
input_ids and attention_mask only (no position_ids, as mxbai), and
logits[:, -1, yes] - logits[:, -1, no].
"""

from __future__ import annotations

import random
import warnings

import jax
import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from prorank_jax.prompts import RerankPrompt, left_pad, round_up_length
from scoring.batching import PACK_STEPS, packed_length, packed_lengths, token_slots
from scoring.reranker import (
    RankResult,
    Reranker,
    TruncationWarning,
    default_pack_tokens,
    length_buckets,
    max_compiled_prefix_shapes,
    max_compiled_shapes,
    plan_batches,
    plan_prefix_chunks,
    prefix_buckets,
    query_groups,
    right_pad,
    row_sizes,
    rows_for,
    shared_prefix_lengths,
    top_k_order,
)
from tests.helpers.hf_models import make_hf_model
from tests.helpers.tokenizer import build_test_tokenizer

MODEL_MAX_POSITIONS = 512
INSTRUCTION = "find passages that answer the question"
WORDS = (
    "paris capital france city river seine photosynthesis light energy glucose cell mitochondria "
    "respiration fox dog lazy quick brown 1 0 2024 ünïcödé 東京 ?! , . query document relevance"
).split()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-reranker")
    build_test_tokenizer(folder)
    # GQA, untied head; a larger init spreads the scores so rankings are not decided by float noise.
    torch_model = make_hf_model(
        folder, vocab_size=448, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=MODEL_MAX_POSITIONS, tie_word_embeddings=False, initializer_range=0.1,
    )
    return folder, torch_model


@pytest.fixture(scope="module")
def tok(model_dir):
    # As mxbai loads it. With model_type qwen2 in config.json, transformers picks Qwen2Tokenizer,
    # whose pre-tokenizer (Qwen's regex) differs from the raw tokenizer.json of the test tokenizer.
    return AutoTokenizer.from_pretrained(str(model_dir[0]), padding_side="left")


@pytest.fixture(scope="module")
def reranker(model_dir):
    return Reranker.from_pretrained(model_dir[0], batch_size=4, show_progress=False)


def mxbai_predict(torch_model, tok, queries, documents, *, instruction=None, max_length=8192):
    """MxbaiRerankV2.predict on transformers (see the module docstring)."""
    prompt = RerankPrompt(tok, max_length, MODEL_MAX_POSITIONS)
    ids = [e.input_ids for e in prompt.encode_batch(queries, documents, instruction=instruction)]
    width = round_up_length(max(len(x) for x in ids), 8)
    batch, mask = left_pad(ids, width, tok.pad_token_id)
    with torch.no_grad():
        logits = torch_model(input_ids=torch.tensor(batch, dtype=torch.long), attention_mask=torch.tensor(mask)).logits
    return (logits[:, -1, prompt.yes_id] - logits[:, -1, prompt.no_id]).float().numpy()


def text(rng, n):
    return " ".join(rng.choice(WORDS) for _ in range(n))


def cases(seed=0, n=8):
    rng = random.Random(seed)
    queries = ["what is the capital of France?"] + [text(rng, rng.randint(1, 10)) for _ in range(n - 1)]
    documents = [text(rng, rng.randint(0, 50)) for _ in range(n)]
    queries += ["q", "energy of light", text(rng, 300)]  # the last query exceeds 3/4 of small budgets
    documents += ["", text(rng, 2000), "Paris is the capital of France."]  # empty; longer than any budget
    return queries, documents


# ----------------------------------------------------------------------------- parity
@pytest.mark.parametrize("instruction", [None, INSTRUCTION])
@pytest.mark.parametrize("max_length", [8192, 48])
def test_predict_matches_mxbai_on_transformers(model_dir, tok, instruction, max_length):
    folder, torch_model = model_dir
    queries, documents = cases()
    expected = mxbai_predict(torch_model, tok, queries, documents, instruction=instruction, max_length=max_length)
    rr = Reranker.from_pretrained(folder, max_length=max_length, batch_size=4, show_progress=False)
    with pytest.warns(TruncationWarning):
        got = rr.predict(queries, documents, instruction=instruction)
    assert got.dtype == np.float32 and got.shape == (len(queries),)
    assert np.std(expected) > 1e-2  # the scores really differ between pairs
    print(f"max |ours - mxbai/transformers| = {np.abs(got - expected).max():.2e}")
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)  # observed ~5e-7
    np.testing.assert_array_equal(np.argsort(-got, kind="stable"), np.argsort(-expected, kind="stable"))


def test_instruction_changes_the_prompt_and_the_score(reranker):
    queries, documents = cases()
    plain = reranker.predict(queries[:4], documents[:4])
    instructed = reranker.predict(queries[:4], documents[:4], instruction=INSTRUCTION)
    assert np.abs(plain - instructed).max() > 1e-3
    # mxbai treats an empty instruction as none.
    np.testing.assert_array_equal(reranker.predict(queries[:4], documents[:4], instruction=""), plain)


@pytest.mark.parametrize("estimated_max", [None, 9.0])
def test_normalize_is_mxbai_sigmoid(model_dir, tok, estimated_max):
    folder, torch_model = model_dir
    queries, documents = cases(seed=1)
    queries, documents = queries[:6], documents[:6]
    rr = Reranker.from_pretrained(folder, estimated_max=estimated_max, show_progress=False)
    raw = mxbai_predict(torch_model, tok, queries, documents).astype(np.float64)
    # mxbai: estimated_max or estimated_max_cfg.get(model_name_or_path, 12.0); a local folder is not in the table.
    m = estimated_max or 12.0
    expected = 1 / (1 + np.exp(-(raw - m / 2)))
    got = rr.predict(queries, documents, normalize=True)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_bfloat16_compute_gives_float32_scores_close_to_reference(model_dir, tok):
    folder, torch_model = model_dir
    queries, documents = cases(seed=2)
    queries, documents = queries[:6], documents[:6]
    rr = Reranker.from_pretrained(folder, dtype="bfloat16", show_progress=False)
    got = rr.predict(queries, documents)
    expected = mxbai_predict(torch_model, tok, queries, documents)
    assert got.dtype == np.float32
    assert rr.config.dtype == "bfloat16"
    np.testing.assert_allclose(got, expected, rtol=0, atol=0.1 * np.abs(expected).max() + 0.05)


# ----------------------------------------------------------------------------- batching
def test_scores_do_not_depend_on_batching_or_buckets(model_dir, tok):
    folder, torch_model = model_dir
    queries, documents = cases(seed=3, n=10)
    expected = mxbai_predict(torch_model, tok, queries, documents, max_length=96)
    expected_order = top_k_order(expected, len(expected))
    for batch_size, steps, pack in [(1, 4, True), (3, 1, True), (3, 1, False), (5, 8, False), (64, 2, True)]:
        rr = Reranker.from_pretrained(folder, max_length=96, batch_size=batch_size, steps_per_octave=steps,
                                      show_progress=False, pack_tokens=pack)
        with pytest.warns(TruncationWarning):
            got = rr.predict(queries, documents)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4,
                                   err_msg=f"batch_size={batch_size} steps={steps} pack={pack}")
        np.testing.assert_array_equal(top_k_order(got, len(got)), expected_order)
        if batch_size == 1:  # per-call batch_size overrides the default and gives the same scores
            with pytest.warns(TruncationWarning):
                np.testing.assert_allclose(rr.predict(queries, documents, batch_size=2), got, rtol=0, atol=1e-5)


@pytest.mark.parametrize("pack", [True, False])
def test_compiled_shapes_are_bounded_and_compiled_once(model_dir, pack):
    rr = Reranker.from_pretrained(model_dir[0], max_length=128, batch_size=4, show_progress=False, pack_tokens=pack)
    queries, documents = cases(seed=4, n=14)
    with pytest.warns(TruncationWarning):
        rr.predict(queries, documents)
        rr.predict(queries[:3], documents[:3])
        rr.predict(queries[:1], documents[:1])
    padded = max_compiled_shapes(rr.prompt.max_total_length, 4)
    if pack:
        allowed = {(r, b, n) for r in row_sizes(4) for b in rr.buckets for n in packed_lengths(r, b)}
        assert len(allowed) <= rr.max_compiled_shapes == PACK_STEPS * padded
        # packing ran fewer token rows than the padded shapes hold (the pairs' lengths differ)
        assert any(n < r * b for r, b, n in rr.compiled_shapes)
    else:
        allowed = {(r, b, r * b) for r in row_sizes(4) for b in rr.buckets}
        assert len(allowed) == rr.max_compiled_shapes == padded
    assert rr.compiled_shapes <= allowed
    assert rr._score_fn._cache_size() == len(rr.compiled_shapes)
    compiled = rr._score_fn._cache_size()
    with pytest.warns(TruncationWarning):
        rr.predict(queries, documents)  # same shapes again: no new compilation
        rr.predict(queries[:3], documents[:3])
    assert rr._score_fn._cache_size() == compiled


def test_packed_lengths_and_token_slots():
    # 4 rows x 40 slots, step ceil(160 / 32) = 5: real tokens rounded up to a multiple of 5
    assert PACK_STEPS == 32
    assert packed_lengths(4, 40) == tuple(range(5, 161, 5))
    assert [packed_length(n, 4, 40) for n in (1, 5, 6, 159, 160)] == [5, 5, 10, 160, 160]
    assert packed_lengths(3, 8) == tuple(range(1, 25))
    assert packed_lengths(1, 8) == tuple(range(1, 9))
    for n in (0, 161):
        with pytest.raises(ValueError, match="cannot hold"):
            packed_length(n, 4, 40)
    # left padding: row r's n tokens are its last n columns; rows 2-3 are filler rows (not
    # run); 40 slots, step 2, so 5 real tokens run as 6
    slots = token_slots([3, 2], 4, 10, left_padded=True)
    assert slots.dtype == np.int32 and len(slots) == packed_length(5, 4, 10) == 6
    assert slots.tolist() == [7, 8, 9, 18, 19, 40]  # 40 = 4 * 10: a filler token, no slot
    assert token_slots([3, 2], 4, 10, left_padded=False).tolist() == [0, 1, 2, 10, 11, 40]
    with pytest.raises(ValueError, match="row 1 has 11 tokens; a row holds 1 to 10"):
        token_slots([3, 11], 4, 10, left_padded=True)


def test_pack_tokens_is_decided_per_call_on_cpu_only(reranker):
    assert default_pack_tokens("cpu") and not default_pack_tokens("gpu") and not default_pack_tokens("tpu")
    # None: scoring.path_cost picks packed or not per call on CPU; off on accelerators
    assert reranker.pack_tokens is (None if jax.default_backend() == "cpu" else False)
    with pytest.raises(ValueError, match="pack_tokens must be True, False or None"):
        Reranker(reranker.config, reranker.params, reranker.tokenizer, pack_tokens="yes")


def test_prefix_path_scores_do_not_depend_on_packing(model_dir, tok):
    folder, torch_model = model_dir
    queries, documents = grouped_cases(seed=11, docs_per_query=4)
    expected = mxbai_predict(torch_model, tok, queries, documents, max_length=96)
    got = {}
    for pack in (True, False):
        rr = Reranker.from_pretrained(folder, max_length=96, batch_size=3, show_progress=False, reuse_prefix=True,
                                      pack_tokens=pack)
        with pytest.warns(TruncationWarning):
            got[pack] = rr.predict(queries, documents)
        assert any(n < r * b for r, _, b, n in rr.compiled_extend_shapes) == pack  # packing ran fewer token rows
    np.testing.assert_allclose(got[True], got[False], rtol=0, atol=1e-5)
    np.testing.assert_allclose(got[True], expected, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(top_k_order(got[True], len(expected)), top_k_order(got[False], len(expected)))


def test_length_buckets():
    assert length_buckets(60) == (8, 16, 24, 32, 40, 48, 56, 64)
    assert length_buckets(300, steps_per_octave=4) == (
        8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 304)
    assert length_buckets(300, steps_per_octave=1) == (8, 16, 24, 32, 40, 48, 56, 64, 128, 256, 304)
    for total in (1, 8, 9, 64, 65, 1000, 8272, 32768):
        for steps in (1, 2, 4, 8):
            b = length_buckets(total, steps)
            assert list(b) == sorted(set(b)) and all(x % 8 == 0 for x in b)
            assert b[-1] >= total and b[-1] - total < 8
            # above 64 tokens padding wastes at most 1/steps of a batch
            assert all(hi <= lo * (1 + 1 / steps) for lo, hi in zip(b, b[1:]) if lo >= 64)
    assert len(length_buckets(8272, 4)) == 37  # Qwen2.5 with max_length 8192 and an ~80-token template
    with pytest.raises(ValueError, match="steps_per_octave"):
        length_buckets(100, 3)


def test_rows_and_plan():
    assert row_sizes(1) == (1,) and row_sizes(32) == (1, 2, 4, 8, 16, 32) and row_sizes(12) == (1, 2, 4, 8, 12)
    assert [rows_for(n, 12) for n in (1, 2, 3, 5, 9, 12)] == [1, 2, 4, 8, 12, 12]
    lengths = [5, 70, 9, 200, 64, 65, 3]
    buckets = length_buckets(200)
    plan = plan_batches(lengths, 3, buckets)
    assert sorted(np.concatenate([b.indices for b in plan]).tolist()) == list(range(len(lengths)))
    assert [len(b.indices) for b in plan] == [3, 3, 1]
    assert [b.rows for b in plan] == [3, 3, 1]
    assert [b.indices.tolist() for b in plan] == [[3, 1, 5], [4, 2, 0], [6]]  # longest first
    assert [b.length for b in plan] == [200, 64, 8]


# ----------------------------------------------------------------------------- rank
def test_top_k_order_breaks_ties_by_index():
    scores = np.array([1.0, 3.0, 3.0, 2.0, 3.0, -1.0], np.float32)
    assert top_k_order(scores, 6).tolist() == [1, 2, 4, 3, 0, 5]
    assert top_k_order(scores, 2).tolist() == [1, 2]  # lowest indices win ties at the cut


def test_rank_sorts_by_score_then_index(reranker):
    documents = ["Paris is the capital of France.", "light energy", "", "fox dog", "light energy", "cell"]
    query = "what is the capital of France?"
    scores = reranker.predict([query] * len(documents), documents)
    results = reranker.rank(query, documents, top_k=4)
    assert [r.index for r in results] == top_k_order(scores, 4).tolist()
    assert [r.score for r in results] == [float(scores[r.index]) for r in results]
    assert all(isinstance(r, RankResult) and r.document == documents[r.index] for r in results)
    assert all(a.score >= b.score for a, b in zip(results, results[1:]))
    # identical documents get identical prompts; when their scores tie, the lower index comes first
    if scores[1] == scores[4]:
        idx = [r.index for r in reranker.rank(query, documents, top_k=6)]
        assert idx.index(1) < idx.index(4)
    everything = reranker.rank(query, documents, top_k=100, return_documents=False)
    assert len(everything) == len(documents) and all(r.document is None for r in everything)
    assert reranker.rank(query, [], top_k=3) == []


def test_rank_equals_mxbai_order(model_dir, tok, reranker):
    folder, torch_model = model_dir
    _, documents = cases(seed=5, n=12)
    query = "capital of France"
    expected = mxbai_predict(torch_model, tok, [query] * len(documents), documents)
    with pytest.warns(TruncationWarning):
        results = reranker.rank(query, documents, top_k=5, instruction=None)
    assert [r.index for r in results] == np.lexsort((np.arange(len(expected)), -expected))[:5].tolist()


# ----------------------------------------------------------------------------- warnings and errors
def test_truncation_warning_counts(reranker):
    rng = random.Random(6)
    long_doc, long_query = text(rng, 1500), text(rng, 1500)
    documents = ["short", long_doc, "also short", long_doc + " x", ""]
    with pytest.warns(TruncationWarning, match=r"2 of 5 documents were truncated .*; 0 of 5 queries") as record:
        scores = reranker.predict(["q"] * 5, documents)
    assert len(record) == 1 and record[0].filename == __file__  # points at the caller
    assert scores.shape == (5,) and np.all(np.isfinite(scores))  # nothing dropped
    with pytest.warns(TruncationWarning, match=r"0 of 2 documents .*; 2 of 2 queries"):
        reranker.predict([long_query, long_query], ["a", "b"])
    with pytest.warns(TruncationWarning, match=r"1 of 3 documents") as record:
        reranker.rank("q", ["a", long_doc, "b"])
    assert record[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reranker.predict(["q", "r"], ["a", ""])


def test_bad_inputs_are_clear_errors(reranker, tmp_path):
    with pytest.raises(ValueError, match="2 queries but 1 documents"):
        reranker.predict(["a", "b"], ["x"])
    with pytest.raises(ValueError, match="query at index 1 is empty"):
        reranker.predict(["a", " "], ["x", "y"])
    with pytest.raises(ValueError, match="query is empty"):
        reranker.rank("", ["x"])
    with pytest.raises(TypeError, match="documents must be a list of strings"):
        reranker.rank("q", "one string")
    with pytest.raises(TypeError, match="document at index 1 must be a str"):
        reranker.predict(["a", "b"], ["x", 3])
    with pytest.raises(ValueError, match="top_k must be a positive int"):
        reranker.rank("q", ["x"], top_k=0)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        reranker.predict(["q"], ["x"], batch_size=0)
    assert reranker.predict([], []).shape == (0,)
    with pytest.raises(FileNotFoundError, match="model folder not found"):
        Reranker.from_pretrained(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="neither an HF model folder"):
        Reranker.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="dtype must be one of"):
        Reranker(reranker.config, reranker.params, reranker.tokenizer, dtype="int8")


def test_config_need_not_be_hashable(reranker):
    # Some Qwen configs list several eos ids; the jitted scorer must not hash the config.
    config = reranker.config.replace(eos_token_id=[1, 2])
    other = Reranker(config, reranker.params, reranker.tokenizer, show_progress=False)
    np.testing.assert_array_equal(other.predict(["q"], ["a document"]), reranker.predict(["q"], ["a document"]))


def test_run_folder_is_loaded_through_checkpoint_module(model_dir, tmp_path):
    from prorank_jax import checkpoint, run_folder_io
    from prorank_jax.run_folder import CHECKPOINTS_DIR
    import jax

    from prorank_jax import hf

    config, params = hf.load(model_dir[0])
    run_dir = tmp_path / "run"
    run_folder_io.write_run_metadata(run_dir, resolved_config={"note": "test"}, model_config=config.to_hf(),
                                     tokenizer_dir=model_dir[0])
    shifted = jax.tree_util.tree_map(lambda x: x * 1.5, params)
    with checkpoint.Checkpointer(run_dir / CHECKPOINTS_DIR, async_save=False) as ckpt:
        for step, p in ((1, params), (2, shifted)):
            ckpt.save(step, params=p, opt_state={"count": np.zeros((), np.int32)}, rng=jax.random.key(0),
                      data_state=None)
    queries, documents = cases(seed=7)
    queries, documents = queries[:5], documents[:5]
    from_hf = Reranker.from_pretrained(model_dir[0], show_progress=False).predict(queries, documents)
    step1 = Reranker.from_pretrained(run_dir, step=1, show_progress=False).predict(queries, documents)
    latest = Reranker.from_pretrained(run_dir, show_progress=False).predict(queries, documents)
    np.testing.assert_array_equal(step1, from_hf)
    assert np.abs(latest - from_hf).max() > 1e-3  # the default is the latest step (2), not step 1
    with pytest.raises(ValueError, match="applies to prorank run folders"):
        Reranker.from_pretrained(model_dir[0], step=1)


# ----------------------------------------------------------------------------- shared prefixes
def grouped_cases(seed=0, docs_per_query=4):
    """Queries of very different lengths (one cut at 3/4 of small budgets), each with several
    documents (an empty one, one longer than any budget), pairs interleaved across queries."""
    rng = random.Random(seed)
    queries = ["q", "what is the capital of France?", text(rng, 12), text(rng, 300)]
    pairs = []
    for qi, query in enumerate(queries):
        docs = ["", text(rng, 2000)] + [text(rng, rng.randint(1, 60)) for _ in range(docs_per_query - 2)]
        pairs += [(query, d) for d in docs]
    rng.shuffle(pairs)
    return [q for q, _ in pairs], [d for _, d in pairs]


# Batch sizes 1 (one row per call), 3 (a partial last batch) and 8 (every group in one call),
# spread over the two prompt settings rather than crossed with them: each combination
# compiles its own set of shapes, and the cross product cost the suite about a minute more.
@pytest.mark.parametrize("instruction,max_length,batch_size", [(None, 8192, 3), (INSTRUCTION, 96, 1),
                                                               (INSTRUCTION, 96, 8)])
def test_prefix_reuse_matches_whole_prompts_and_mxbai(model_dir, tok, batch_size, instruction, max_length):
    folder, torch_model = model_dir
    queries, documents = grouped_cases(seed=batch_size)
    expected = mxbai_predict(torch_model, tok, queries, documents, instruction=instruction, max_length=max_length)
    got = {}
    for reuse in (True, False):
        rr = Reranker.from_pretrained(folder, max_length=max_length, batch_size=batch_size, show_progress=False,
                                      reuse_prefix=reuse)
        with pytest.warns(TruncationWarning) as record:
            got[reuse] = rr.predict(queries, documents, instruction=instruction)
        assert len(record) == 1
        messages = got.setdefault("warnings", [])
        messages.append(str(record[0].message))
        if reuse:
            assert rr.compiled_prefix_shapes and rr.compiled_extend_shapes and not rr.compiled_shapes
        else:
            assert rr.compiled_shapes and not (rr.compiled_prefix_shapes or rr.compiled_extend_shapes)
    assert got["warnings"][0] == got["warnings"][1]  # same truncation counts either way
    assert got[True].dtype == np.float32 and got[True].shape == (len(queries),)
    assert np.std(expected) > 1e-2
    print(f"max |reuse - whole| = {np.abs(got[True] - got[False]).max():.2e}, "
          f"max |reuse - mxbai| = {np.abs(got[True] - expected).max():.2e}")
    np.testing.assert_allclose(got[True], got[False], rtol=0, atol=1e-5)
    np.testing.assert_allclose(got[True], expected, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(top_k_order(got[True], len(got[True])), top_k_order(got[False], len(got[False])))


def test_rank_order_is_the_same_with_and_without_prefix_reuse(model_dir, tok):
    folder, torch_model = model_dir
    _, documents = cases(seed=8, n=12)
    query = "capital of France"
    expected = mxbai_predict(torch_model, tok, [query] * len(documents), documents, instruction=INSTRUCTION)
    results = {}
    for reuse in (None, True, False):
        rr = Reranker.from_pretrained(folder, batch_size=4, show_progress=False, reuse_prefix=reuse)
        with pytest.warns(TruncationWarning, match=r"1 of 15 documents"):
            results[reuse] = rr.rank(query, documents, top_k=len(documents), instruction=INSTRUCTION)
        # auto in a fresh process: whole prompts, one program, while the prefix path's
        # programs would cost more to compile than they save (scoring.path_cost)
        assert bool(rr.compiled_extend_shapes) == (reuse is True)
        assert len(rr.compiled_prefix_shapes) == (1 if reuse is True else 0)  # one query: one prefill
    order = [r.index for r in results[False]]
    assert [r.index for r in results[True]] == [r.index for r in results[None]] == order
    assert order == top_k_order(expected, len(expected)).tolist()
    np.testing.assert_allclose([r.score for r in results[True]], [r.score for r in results[False]], atol=1e-5)


def test_auto_reuse_needs_two_pairs_per_query(reranker, model_dir):
    assert reranker.reuse_prefix is None
    assert not reranker.uses_prefix_path(["a", "b", "c"])
    assert not reranker.uses_prefix_path(["a", "a", "b"])  # 1.5 pairs per query
    assert reranker.uses_prefix_path(["a", "a", "b", "b"])
    assert reranker.uses_prefix_path(["a", "a"]) and not reranker.uses_prefix_path(["a"])
    assert not reranker.uses_prefix_path([])
    forced = Reranker.from_pretrained(model_dir[0], show_progress=False, reuse_prefix=True)
    assert forced.uses_prefix_path(["a", "b"]) and forced.uses_prefix_path(["a"])
    off = Reranker.from_pretrained(model_dir[0], show_progress=False, reuse_prefix=False)
    assert not off.uses_prefix_path(["a"] * 10)
    with pytest.raises(ValueError, match="reuse_prefix must be True, False or None"):
        Reranker(reranker.config, reranker.params, reranker.tokenizer, reuse_prefix="yes")


def test_prefix_reuse_of_single_pairs_and_mixed_groups(model_dir, tok):
    """Forced reuse with one pair per query (split one token before the end) and a mix of
    group sizes, including identical pairs, still gives mxbai's scores."""
    folder, torch_model = model_dir
    queries, documents = cases(seed=9, n=6)
    queries += [queries[0], queries[0], "q"]
    documents += [documents[0], "another document", "q"]
    expected = mxbai_predict(torch_model, tok, queries, documents)
    rr = Reranker.from_pretrained(folder, batch_size=4, show_progress=False, reuse_prefix=True)
    with pytest.warns(TruncationWarning):
        got = rr.predict(queries, documents)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    assert got[0] == pytest.approx(got[len(queries) - 3], abs=1e-6)  # the same pair twice


@pytest.mark.parametrize("pack", [True, False])
def test_prefix_shapes_are_bounded_and_compiled_once(model_dir, pack):
    rr = Reranker.from_pretrained(model_dir[0], max_length=128, batch_size=4, show_progress=False, reuse_prefix=True,
                                  pack_tokens=pack)
    queries, documents = grouped_cases(seed=10, docs_per_query=5)
    with pytest.warns(TruncationWarning):
        rr.predict(queries, documents)
        rr.predict(queries[:3], documents[:3])
        rr.rank(queries[0], documents[:7])
    rows = row_sizes(4)
    assert rr.compiled_prefix_shapes <= {(r, p) for r in rows for p in rr.prefix_buckets}
    per_shape = PACK_STEPS if pack else 1
    packed = packed_lengths if pack else lambda r, b: (r * b,)
    assert rr.compiled_extend_shapes <= {
        (r, p, b, n) for r in rows for p in rr.prefix_buckets for b in rr.buckets for n in packed(r, b)}
    assert rr.max_compiled_prefix_shapes == max_compiled_prefix_shapes(rr.prompt.max_total_length, 4, 4, per_shape)
    assert rr.max_compiled_prefix_shapes == len(rows) * len(rr.prefix_buckets) * (1 + per_shape * len(rr.buckets))
    fns = rr._prefix_fns
    assert fns.prefill._cache_size() == len(rr.compiled_prefix_shapes)
    assert fns.extend._cache_size() == len(rr.compiled_extend_shapes)
    sizes = (fns.prefill._cache_size(), fns.take._cache_size(), fns.extend._cache_size())
    with pytest.warns(TruncationWarning):
        rr.predict(queries, documents)  # same shapes again: no new compilation
        rr.rank(queries[0], documents[:7])
    assert (fns.prefill._cache_size(), fns.take._cache_size(), fns.extend._cache_size()) == sizes


def test_progress_bar_counts_pairs_on_the_prefix_path(model_dir, capsys):
    rr = Reranker.from_pretrained(model_dir[0], max_length=64, batch_size=2, show_progress=True, reuse_prefix=True)
    queries, documents = grouped_cases(seed=11, docs_per_query=3)
    with pytest.warns(TruncationWarning):
        rr.predict(queries, documents)
    err = capsys.readouterr().err
    assert "Reranking" in err and f"{len(queries)}/{len(queries)}" in err


def test_prefix_planning_helpers():
    assert prefix_buckets(60) == (16, 32, 64) and prefix_buckets(8272)[-2:] == (8192, 8272)
    assert prefix_buckets(8) == (8,) and prefix_buckets(100) == (16, 32, 64, 104)
    assert query_groups(["b", "a", "b", "c", "a"]).tolist() == [0, 1, 0, 2, 1]
    sequences = [(1, 2, 3, 4, 5), (7, 8, 9), (1, 2, 3, 9), (1, 2, 4), (7, 8, 9)]
    group_of = np.array([0, 1, 0, 0, 1])
    # group 0 shares (1, 2); group 1 is two identical prompts: split one token before the end
    assert shared_prefix_lengths(sequences, group_of).tolist() == [2, 2]
    assert shared_prefix_lengths([(5, 6, 7)], np.array([0])).tolist() == [2]
    ids, lengths = right_pad([(1, 2), (3,)], 4, pad_id=0)
    assert ids.tolist() == [[1, 2, 0, 0], [3, 0, 0, 0]] and lengths.tolist() == [2, 1]
    with pytest.raises(ValueError, match="more than the padded length"):
        right_pad([(1, 2, 3)], 2, pad_id=0)

    prefix_lengths = [40, 10, 70]
    group_of = np.array([0, 1, 2, 0, 1, 1, 2, 0])
    rest_lengths = [5, 30, 9, 50, 7, 8, 12, 20]
    chunks = plan_prefix_chunks(prefix_lengths, rest_lengths, group_of, 2, (16, 32, 64, 128), length_buckets(64))
    assert [c.groups.tolist() for c in chunks] == [[2, 0], [1]]  # longest prefixes first
    assert [(c.rows, c.length) for c in chunks] == [(2, 128), (1, 16)]
    assert [[b.indices.tolist() for b in c.batches] for c in chunks] == [[[3, 7], [6, 2], [0]], [[1, 5], [4]]]
    assert [[(b.rows, b.length) for b in c.batches] for c in chunks] == [[(2, 56), (2, 16), (1, 8)],
                                                                         [(2, 32), (1, 8)]]


def test_bfloat16_prefix_reuse_stays_close(model_dir, tok):
    folder, torch_model = model_dir
    queries, documents = grouped_cases(seed=12, docs_per_query=3)
    expected = mxbai_predict(torch_model, tok, queries, documents)
    got = {}
    for reuse in (True, False):
        rr = Reranker.from_pretrained(folder, dtype="bfloat16", show_progress=False, reuse_prefix=reuse)
        with pytest.warns(TruncationWarning):
            got[reuse] = rr.predict(queries, documents)
        assert got[reuse].dtype == np.float32
    tolerance = 0.1 * np.abs(expected).max() + 0.05  # as for whole prompts in bfloat16 above
    np.testing.assert_allclose(got[True], expected, rtol=0, atol=tolerance)
    np.testing.assert_allclose(got[True], got[False], rtol=0, atol=tolerance)


def test_a_model_folder_without_tokenizer_files_takes_a_tokenizer_folder(tmp_path, model_dir):
    """from_pretrained(tokenizer=...): the same scores as the folder with its own tokenizer."""
    import shutil

    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(model_dir[0] / name, bare / name)
    with pytest.raises(FileNotFoundError, match="no tokenizer files"):
        Reranker.from_pretrained(bare, show_progress=False)
    queries, documents = ["how do plants make food"] * 2, ["Leaves turn light into sugar.", "Trains run late."]
    borrowed = Reranker.from_pretrained(bare, tokenizer=model_dir[0], batch_size=4, show_progress=False)
    own = Reranker.from_pretrained(model_dir[0], batch_size=4, show_progress=False)
    np.testing.assert_array_equal(borrowed.predict(queries, documents), own.predict(queries, documents))
