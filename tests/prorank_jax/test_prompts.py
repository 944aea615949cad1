"""The prompt builder against an independent transcription of MxbaiRerankV2.prepare_inputs.

The oracle below follows mxbai-rerank 0.1.6 line by line and uses the tokenizer's own
truncation (tokenizer(..., max_length=, truncation=True) and prepare_for_model(...,
truncation="only_second")), whereas prorank_jax.prompts tokenizes in full and cuts ids
itself. transformers 5 removed prepare_for_model from fast tokenizers (mxbai 0.1.6 itself
calls it), so the oracle tokenizer borrows HF's own implementation from PythonBackend.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
from scipy.special import expit
from transformers import PreTrainedTokenizerFast
from transformers.tokenization_python import PythonBackend

from prorank_jax import prompts
from prorank_jax.prompts import RerankPrompt, left_pad, round_up_length, sigmoid_normalize
from tests.helpers.tokenizer import build_test_tokenizer

# Literal template text from mxbai_rerank_v2.py (kept separate from prompts.py on purpose).
MX_SEP = "\n"
MX_INSTRUCTION = "instruction: {instruction}"
MX_QUERY = "query: {query}"
MX_DOC = "document: {document}"
MX_TASK = (
    "You are a search relevance expert who evaluates how well documents match search queries. For each "
    "query-document pair, carefully analyze the semantic relationship between them, then provide your binary "
    "relevance judgment (0 for not relevant, 1 for relevant).\nRelevance:"
)
MX_PREFIX = (
    "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\n"
)
MX_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n"


class OracleTokenizer(PreTrainedTokenizerFast):
    prepare_for_model = PythonBackend.prepare_for_model
    truncate_sequences = PythonBackend.truncate_sequences


def mxbai_prepare_ids(tok, queries, documents, instruction, max_length, model_max_length):
    """MxbaiRerankV2.prepare_predefined_inputs + prepare_inputs, minus the final padding."""

    def get_input_ids(x):
        return tok(x, return_tensors=None, add_special_tokens=False)["input_ids"]

    task, sep = get_input_ids(MX_TASK), get_input_ids(MX_SEP)
    prefix, suffix = get_input_ids(MX_PREFIX), get_input_ids(MX_SUFFIX)
    predefined_length = len(prefix) + len(task) + len(suffix) + len(sep)
    max_length = max_length or model_max_length
    if max_length + predefined_length > model_max_length:
        max_length = model_max_length - predefined_length

    out = []
    instruction_prompt = MX_INSTRUCTION.format(instruction=instruction) if instruction else None
    for query, document in zip(queries, documents):
        query_prompt = MX_QUERY.format(query=query)
        if instruction_prompt:
            query_prompt = "".join([instruction_prompt, MX_SEP, query_prompt])
        query_inputs = tok(
            query_prompt, return_tensors=None, add_special_tokens=False, max_length=max_length * 3 // 4, truncation=True
        )
        available = model_max_length - len(query_inputs["input_ids"]) - predefined_length
        doc_maxlen = min(available, max_length)
        document_inputs = tok(
            MX_DOC.format(document=document),
            return_tensors=None,
            add_special_tokens=False,
            max_length=doc_maxlen,
            truncation=True,
        )
        item = tok.prepare_for_model(
            query_inputs["input_ids"],
            sep + document_inputs["input_ids"],
            truncation="only_second",
            max_length=max_length,
            padding=False,
            return_attention_mask=False,
            return_token_type_ids=False,
            add_special_tokens=False,
        )
        out.append(prefix + item["input_ids"] + sep + task + suffix)
    return out


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return build_test_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def tok(tok_dir):
    return PreTrainedTokenizerFast.from_pretrained(str(tok_dir))


@pytest.fixture(scope="module")
def oracle_tok(tok_dir):
    return OracleTokenizer.from_pretrained(str(tok_dir))


WORDS = (
    "paris capital france city river seine photosynthesis light energy glucose cell mitochondria "
    "respiration fox dog lazy quick brown 1 0 2024 ünïcödé 東京 ?! , . query document relevance"
).split()


def random_text(rng: random.Random, n_words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n_words))


def make_cases(seed: int = 0):
    rng = random.Random(seed)
    queries = [random_text(rng, rng.randint(1, 12)) for _ in range(10)]
    documents = [random_text(rng, rng.randint(0, 60)) for _ in range(10)]
    queries += ["what is the capital of France?", random_text(rng, 400), "q", random_text(rng, 30)]
    documents += ["", "Paris is the capital of France.", random_text(rng, 2000), random_text(rng, 300)]
    return queries, documents


def template_len(tok) -> int:
    return sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in (MX_PREFIX, MX_SEP, MX_TASK, MX_SUFFIX))


@pytest.mark.parametrize("instruction", [None, "", "find passages that answer the question"])
@pytest.mark.parametrize(
    "max_length, extra_positions",
    [
        (8192, 100000),  # nothing binds but the document length
        (512, 4096),
        (48, 4096),  # small max_length: long queries hit 3/4, documents hit only_second
        (16, 4096),
        (64, 40),  # model_max_length binds: max_length lowered to template + 40
        (None, 70),  # mxbai's max_length=None means "the model's positions"
        (6, 4096),
    ],
)
def test_matches_mxbai_prepare_inputs(tok, oracle_tok, instruction, max_length, extra_positions):
    model_max_length = template_len(tok) + extra_positions
    queries, documents = make_cases()
    prompt = RerankPrompt(tok, max_length=max_length, model_max_length=model_max_length)
    expected = mxbai_prepare_ids(oracle_tok, queries, documents, instruction, max_length, model_max_length)
    got = prompt.encode_batch(queries, documents, instruction=instruction)
    for i, (g, e) in enumerate(zip(got, expected)):
        assert list(g.input_ids) == e, f"case {i}: query={queries[i][:40]!r} doc={documents[i][:40]!r}"
        assert len(g) <= prompt.max_total_length <= model_max_length
    single = prompt.encode(queries[0], documents[0], instruction=instruction)
    assert single == got[0]


def test_left_truncation_side_also_matches(tok_dir):
    tok = PreTrainedTokenizerFast.from_pretrained(str(tok_dir), truncation_side="left")
    oracle = OracleTokenizer.from_pretrained(str(tok_dir), truncation_side="left")
    queries, documents = make_cases(seed=3)
    prompt = RerankPrompt(tok, max_length=40, model_max_length=4096)
    expected = mxbai_prepare_ids(oracle, queries, documents, None, 40, 4096)
    assert [list(p.input_ids) for p in prompt.encode_batch(queries, documents)] == expected


def test_prompt_decodes_to_mxbai_text(tok):
    prompt = RerankPrompt(tok, max_length=512, model_max_length=4096)
    enc = prompt.encode("capital of France?", "Paris is the capital.", instruction="answer it")
    text = tok.decode(list(enc.input_ids))
    assert text == (
        MX_PREFIX
        + "instruction: answer it\nquery: capital of France?"
        + "\ndocument: Paris is the capital.\n"
        + MX_TASK
        + MX_SUFFIX
    )
    assert not enc.query_truncated and not enc.document_truncated


def test_truncation_flags(tok):
    rng = random.Random(1)
    prompt = RerankPrompt(tok, max_length=48, model_max_length=4096)
    long_q, long_d = random_text(rng, 200), random_text(rng, 500)
    full_q = len(tok(prompts.query_text(long_q), add_special_tokens=False)["input_ids"])
    enc = prompt.encode(long_q, "short")
    assert enc.query_truncated and full_q > 48 * 3 // 4
    assert not enc.document_truncated
    enc = prompt.encode("short query", long_d)
    assert enc.document_truncated and not enc.query_truncated
    assert len(enc) == prompt.max_total_length  # the document fills the budget exactly
    enc = prompt.encode("short query", "")
    assert not enc.query_truncated and not enc.document_truncated


def test_label_ids_and_template(tok):
    prompt = RerankPrompt(tok, max_length=None, model_max_length=4096)
    assert prompt.yes_id == tok("1", add_special_tokens=False)["input_ids"][0]
    assert prompt.no_id == tok("0", add_special_tokens=False)["input_ids"][0]
    assert prompt.yes_id != prompt.no_id
    assert prompt.template_length == template_len(tok)
    assert prompt.max_length == 4096 - template_len(tok)  # None -> model positions, minus the template
    assert prompt.pad_id == tok.pad_token_id


def test_tokenizer_without_chat_tokens_is_rejected(tmp_path):
    bad = PreTrainedTokenizerFast.from_pretrained(str(build_test_tokenizer(tmp_path, with_chat_tokens=False)))
    with pytest.raises(ValueError, match=r"<\|im_start\|>.*exactly one"):
        RerankPrompt(bad, max_length=64, model_max_length=4096)


def test_tokenizer_with_multi_token_label_is_rejected(tmp_path):
    bad = PreTrainedTokenizerFast.from_pretrained(str(build_test_tokenizer(tmp_path, split_digit_one=True)))
    with pytest.raises(ValueError, match=r"'1' must encode to exactly one"):
        RerankPrompt(bad, max_length=64, model_max_length=4096)


def test_bad_inputs_name_the_field(tok):
    prompt = RerankPrompt(tok, max_length=64, model_max_length=4096)
    with pytest.raises(ValueError, match=r"query at index 1 is empty"):
        prompt.encode_batch(["fine", "  "], ["a", "b"])
    with pytest.raises(TypeError, match=r"document at index 0 must be a str"):
        prompt.encode_batch(["q"], [None])
    with pytest.raises(ValueError, match=r"1 queries but 2 documents"):
        prompt.encode_batch(["q"], ["a", "b"])
    with pytest.raises(ValueError, match=r"model_max_length=.* leaves max_length"):
        RerankPrompt(tok, max_length=64, model_max_length=template_len(tok) + 2)
    with pytest.raises(ValueError, match=r"max_length must be a positive int"):
        RerankPrompt(tok, max_length=0, model_max_length=4096)


def test_sigmoid_normalize_is_mxbai_mapping():
    x = np.array([-30.0, -1.5, 0.0, 4.5, 6.0, 20.0, 1e4])
    for m in (9.0, 12.0):
        np.testing.assert_allclose(sigmoid_normalize(x, m), expit(x - m / 2), rtol=1e-12, atol=0)
    assert sigmoid_normalize(-1e6).item() == 0.0  # saturates, no NaN or warning-as-error
    np.testing.assert_allclose(sigmoid_normalize(x), expit(x - prompts.DEFAULT_ESTIMATED_MAX / 2))
    assert prompts.estimated_max_for("mixedbread-ai/mxbai-rerank-base-v2") == 9.0
    assert prompts.estimated_max_for("mixedbread-ai/mxbai-rerank-large-v2") == 12.0
    assert prompts.estimated_max_for("someone/else") == prompts.DEFAULT_ESTIMATED_MAX == 12.0


def test_left_pad():
    ids, mask = left_pad([[5, 6, 7], [], [9]], length=4, pad_id=0)
    np.testing.assert_array_equal(ids, [[0, 5, 6, 7], [0, 0, 0, 0], [0, 0, 0, 9]])
    np.testing.assert_array_equal(mask, [[0, 1, 1, 1], [0, 0, 0, 0], [0, 0, 0, 1]])
    assert ids.dtype == np.int32
    with pytest.raises(ValueError, match="sequence 1 has 3 tokens, more than the padded length 2"):
        left_pad([[1], [1, 2, 3]], length=2, pad_id=0)


def test_round_up_length():
    assert [round_up_length(n) for n in (0, 1, 8, 9, 16)] == [0, 8, 8, 16, 16]
    assert round_up_length(61, cap=63) == 61  # cap rounds down to 56 < 61: never cut a sequence
    assert round_up_length(50, cap=63) == 56
