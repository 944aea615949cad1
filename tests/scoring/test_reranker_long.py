"""Long documents: the token-budget batches and blockwise attention give the scores of the old
path (fixed batch_size rows, XLA attention over the full score matrix) and of mxbai on
transformers, in less memory."""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from prorank_jax import hf
from prorank_jax.pretrained import load_tokenizer
from prorank_jax.prompts import RerankPrompt, left_pad, round_up_length
from scoring.reranker import Reranker
from tests.helpers.hf_models import make_hf_model
from tests.helpers.tokenizer import build_test_tokenizer

REPO = Path(__file__).resolve().parents[2]
MAX_POSITIONS = 4096
WORDS = "paris capital france city river photosynthesis light energy glucose cell respiration fox dog".split()
QUERY = "what converts light energy into chemical energy?"


@pytest.fixture(scope="module")
def long_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-long-reranker")
    build_test_tokenizer(folder)
    torch_model = make_hf_model(
        folder, vocab_size=448, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=MAX_POSITIONS, tie_word_embeddings=False, initializer_range=0.1,
    )
    return folder, torch_model


def documents(seed: int, words: list[int]) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(n)) for n in words]


def mxbai_scores(torch_model, tokenizer, docs, max_length):
    prompt = RerankPrompt(tokenizer, max_length, MAX_POSITIONS)
    ids = [e.input_ids for e in prompt.encode_batch([QUERY] * len(docs), docs)]
    batch, mask = left_pad(ids, round_up_length(max(map(len, ids)), 8), tokenizer.pad_token_id)
    with torch.no_grad():
        logits = torch_model(input_ids=torch.tensor(batch, dtype=torch.long), attention_mask=torch.tensor(mask)).logits
    return (logits[:, -1, prompt.yes_id] - logits[:, -1, prompt.no_id]).float().numpy(), [len(x) for x in ids]


def test_long_documents_score_as_the_old_path_and_mxbai(long_model):
    folder, torch_model = long_model
    config, params = hf.load(folder)
    tokenizer = load_tokenizer(folder, config)
    docs = documents(0, [330, 20, 200, 380, 5, 300])
    expected, lengths = mxbai_scores(torch_model, tokenizer, docs, max_length=2048)
    assert max(lengths) > 1100  # long enough for "auto" to take blockwise attention (> 1024 x 1024 scores)
    # The old path: batches of batch_size rows, XLA attention materialising every score.
    old = Reranker(config.replace(attn_implementation="xla"), params, tokenizer, max_length=2048, batch_size=8,
                   show_progress=False, max_batch_tokens=10**9, reuse_prefix=False)
    old_scores = old.predict([QUERY] * len(docs), docs)
    np.testing.assert_allclose(old_scores, expected, rtol=0, atol=1e-4)
    for reuse in (False, True):
        budget = 2400
        new = Reranker.from_pretrained(folder, max_length=2048, batch_size=8, show_progress=False,
                                       max_batch_tokens=budget, reuse_prefix=reuse)
        assert new.config.attn_implementation == "auto"
        got = new.predict([QUERY] * len(docs), docs)
        np.testing.assert_allclose(got, old_scores, rtol=0, atol=1e-5, err_msg=f"reuse_prefix={reuse}")
        shapes = new.compiled_extend_shapes if reuse else new.compiled_shapes
        # the long pairs ran one to a batch; short ones shared a batch
        rows_and_keys = [(s[0], s[1] + s[2]) if reuse else (s[0], s[1]) for s in shapes]
        assert all(r == 1 or r * keys <= budget for r, keys in rows_and_keys), shapes
        assert {r for r, _ in rows_and_keys} >= {1, 2}, shapes


PEAK_CODE = """
    import re, sys
    from scoring.reranker import Reranker
    from tests.scoring.test_reranker_long import QUERY, documents

    folder, budget, impl = sys.argv[1], sys.argv[2], sys.argv[3]
    kwargs = {} if budget == "default" else {"max_batch_tokens": int(budget)}
    rr = Reranker.from_pretrained(folder, max_length=2048, show_progress=False, **kwargs)
    if impl != "auto":
        rr = Reranker(rr.config.replace(attn_implementation=impl), rr.params, rr.tokenizer, max_length=2048,
                      show_progress=False, **kwargs)
    docs = documents(1, [600] * 8)
    lengths = [len(e.input_ids) for e in rr.prompt.encode_batch([QUERY] * len(docs), docs)]
    results = rr.rank(QUERY, docs)
    peak_kb = re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)
    print("PEAK_KB", peak_kb, "MIN_TOKENS", min(lengths), "RESULTS", len(results))
"""


def peak_memory_of_rank(folder, budget: str, impl: str) -> tuple[int, int]:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(PEAK_CODE), str(folder), budget, impl], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    peak_kb, min_tokens, n = map(int, re.search(r"PEAK_KB (\d+) MIN_TOKENS (\d+) RESULTS (\d+)", proc.stdout).groups())
    assert n == 8
    return peak_kb * 1024, min_tokens


def test_rank_of_long_documents_stays_under_a_memory_bound(long_model):
    """rank() of 8 documents of about 2,100 tokens (max_length 2048) with the default settings.

    The old path (one batch of 8 rows, XLA attention: the [8, 4, 2048, 2112] float32 scores of
    the shared-prefix extend, several times over), run as
    `peak_memory_of_rank(folder, "1000000000", "xla")`, peaked at 2.79 GB in this process on
    the development machine; the default token budget with blockwise attention peaked at
    1.00 GB (the process itself, with jax, transformers and the tokenizer, is most of it).
    The bound sits between the two."""
    peak, min_tokens = peak_memory_of_rank(long_model[0], "default", "auto")
    assert min_tokens > 2000
    assert peak < 1.5 * 2**30, f"peak {peak / 2**30:.2f} GiB"
