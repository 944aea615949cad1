"""The qwen3-reranker prompt family against an independent transcription of the Qwen3-Reranker
model card's transformers code, run on transformers' PyTorch Qwen3ForCausalLM.

The oracle below follows the card line by line (format_instruction, process_inputs with the
tokenizer's own truncation='longest_first', tokenizer.pad, compute_logits with its
log_softmax over [no, yes]); its literal strings are typed here, not imported from
prorank_jax.prompts. The model is a tiny random Qwen3 and the tokenizer a small BPE with the
Qwen chat tokens, <think> / </think> and "yes" / "no" as single tokens (tests/helpers).
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from prorank_jax import hf, prompts
from prorank_jax.pretrained import load_tokenizer
from scoring.reranker import Reranker, TruncationWarning
from tests.helpers.hf_models import LLAMA3_ROPE, make_hf_model
from tests.helpers.tokenizer import build_qwen3_test_tokenizer

CARD_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
    "Instruct provided. Note that the answer can only be \"yes\" or \"no\".<|im_end|>\n<|im_start|>user\n"
)
CARD_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
CARD_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"

QUERIES = ["what is the capital of France?", "北京是哪个国家的首都?"]
DOCUMENTS = [
    "Paris is the capital and most populous city of France.",
    "",
    "北京是中国的首都。",
    "Berlin ist die Hauptstadt Deutschlands. 🇩🇪",
    "القاهرة هي عاصمة مصر.",
    "The mitochondria is the powerhouse of the cell; it produces ATP through respiration. " * 3,
]
INSTRUCTIONS = [None, "Find the passage that names the city"]


class CardReranker:
    """The Qwen3-Reranker model card's transformers code, transcribed."""

    def __init__(self, tokenizer, model, max_length=8192):
        self.tokenizer, self.model, self.max_length = tokenizer, model, max_length
        self.prefix_tokens = tokenizer.encode(CARD_PREFIX, add_special_tokens=False)
        self.suffix_tokens = tokenizer.encode(CARD_SUFFIX, add_special_tokens=False)
        self.token_false_id = tokenizer.convert_tokens_to_ids("no")
        self.token_true_id = tokenizer.convert_tokens_to_ids("yes")

    @staticmethod
    def format_instruction(instruction, query, doc):
        if instruction is None:
            instruction = CARD_INSTRUCTION
        return "<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}".format(
            instruction=instruction, query=query, doc=doc)

    def process_inputs(self, pairs):
        inputs = self.tokenizer(
            pairs, padding=False, truncation="longest_first", return_attention_mask=False,
            max_length=self.max_length - len(self.prefix_tokens) - len(self.suffix_tokens),
        )
        for i, ele in enumerate(inputs["input_ids"]):
            inputs["input_ids"][i] = self.prefix_tokens + ele + self.suffix_tokens
        return self.tokenizer.pad(inputs, padding=True, return_tensors="pt", max_length=self.max_length)

    @torch.no_grad()
    def compute_logits(self, inputs):
        batch_scores = self.model(**inputs).logits[:, -1, :]
        true_vector = batch_scores[:, self.token_true_id]
        false_vector = batch_scores[:, self.token_false_id]
        batch_scores = torch.stack([false_vector, true_vector], dim=1)
        batch_scores = torch.nn.functional.log_softmax(batch_scores, dim=1)
        # the card returns exp of the "yes" column; its log-odds is what our raw score is
        return batch_scores[:, 1].exp().numpy(), (batch_scores[:, 1] - batch_scores[:, 0]).numpy()

    def score(self, queries, documents, instruction=None):
        pairs = [self.format_instruction(instruction, q, d) for q, d in zip(queries, documents)]
        return self.compute_logits(self.process_inputs(pairs))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("qwen3-reranker")
    tok_dir = build_qwen3_test_tokenizer(root / "Qwen3-Reranker-tiny")
    tokenizer = load_tokenizer(tok_dir)
    torch_model = make_hf_model(tok_dir, "qwen3", seed=3, vocab_size=len(tokenizer), hidden_size=32,
                                num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                max_position_embeddings=512, tie_word_embeddings=False, rope_theta=10000.0,
                                initializer_range=0.3)  # wide weights: scores spread over units
    config, params = hf.load(tok_dir)
    return tok_dir, tokenizer, torch_model, config, params


@pytest.fixture(scope="module")
def rerankers(tiny):
    """Rerankers by (max_length, reuse_prefix), built once: each compiles its shapes once.
    Packing (pack_tokens) is on for the shared-prefix path and off for whole prompts."""
    _, tokenizer, _, config, params = tiny
    built = {}

    def get(max_length: int, reuse_prefix: bool) -> Reranker:
        key = (max_length, reuse_prefix)
        if key not in built:
            built[key] = Reranker(config, params, tokenizer, dtype="float32", show_progress=False, batch_size=16,
                                  prompt_family="qwen3-reranker", max_length=max_length,
                                  reuse_prefix=reuse_prefix, pack_tokens=reuse_prefix)
        return built[key]

    return get


def pairs():
    return [q for q in QUERIES for _ in DOCUMENTS], DOCUMENTS * len(QUERIES)


def test_prompt_ids_equal_the_cards(tiny):
    _, tokenizer, torch_model, _, _ = tiny
    queries, documents = pairs()
    for max_length in (8192, 73, 100):
        card = CardReranker(tokenizer, torch_model, max_length)
        prompt = prompts.make_prompt("qwen3-reranker", tokenizer, max_length, 512)
        for instruction in INSTRUCTIONS:
            batch = card.process_inputs([card.format_instruction(instruction, q, d)
                                         for q, d in zip(queries, documents)])
            want = [row[m.bool()].tolist() for row, m in zip(batch["input_ids"], batch["attention_mask"])]
            got = prompt.encode_batch(queries, documents, instruction=instruction)
            assert [list(e.input_ids) for e in got] == want
    # the template is 61 tokens: at 100 long documents are cut (and the long Chinese query), at 73 every query
    cut = prompts.make_prompt("qwen3-reranker", tokenizer, 100, 512).encode_batch(queries, documents)
    assert any(e.document_truncated for e in cut) and not all(e.query_truncated for e in cut)
    cut = prompts.make_prompt("qwen3-reranker", tokenizer, 73, 512).encode_batch(queries, documents)
    assert all(e.query_truncated for e in cut)
    assert (prompt.yes_id, prompt.no_id) == (card.token_true_id, card.token_false_id)


@pytest.mark.parametrize("reuse_prefix", [False, True])
def test_scores_equal_the_cards(tiny, rerankers, reuse_prefix):
    _, tokenizer, torch_model, _, _ = tiny
    queries, documents = pairs()
    # the default and a custom instruction uncut; the default one with documents and a query cut
    for max_length, instructions in ((8192, INSTRUCTIONS), (100, INSTRUCTIONS[:1])):
        ours = rerankers(max_length, reuse_prefix)
        card = CardReranker(tokenizer, torch_model, max_length)
        for instruction in instructions:
            want_p, want_raw = card.score(queries, documents, instruction)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", TruncationWarning)
                raw = ours.predict(queries, documents, instruction=instruction)
                p = ours.predict(queries, documents, instruction=instruction, normalize=True)
            assert np.ptp(raw) > 0.5  # the scores spread, so equality means something
            np.testing.assert_allclose(raw, want_raw, atol=1e-4, rtol=0)
            np.testing.assert_allclose(p, want_p, atol=1e-4, rtol=0)
        assert ours.uses_prefix_path(queries) == reuse_prefix
        assert (ours.compiled_extend_shapes if reuse_prefix else ours.compiled_shapes)


def test_a_llama_with_the_qwen3_prompt_scores_as_the_card(tiny, tmp_path):
    """The prompt family is independent of the architecture: a Llama (biases, llama3 RoPE)
    reading Qwen3-Reranker's prompt scores as the card's code does with that model."""
    tok_dir, tokenizer, _, _, _ = tiny
    llama = make_hf_model(tmp_path, "llama", seed=4, vocab_size=len(tokenizer), hidden_size=32,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                          tie_word_embeddings=False, attention_bias=True, mlp_bias=True,
                          rope_scaling=dict(LLAMA3_ROPE, rope_theta=10000.0), initializer_range=0.3)
    config, params = hf.load(tmp_path)
    ours = Reranker(config, params, tokenizer, dtype="float32", show_progress=False, batch_size=16,
                    prompt_family="qwen3-reranker", reuse_prefix=False, pack_tokens=False)
    queries, documents = pairs()
    _, want_raw = CardReranker(tokenizer, llama, 8192).score(queries, documents)
    raw = ours.predict(queries, documents)
    assert config.model_type == "llama" and np.ptp(raw) > 0.5
    np.testing.assert_allclose(raw, want_raw, atol=1e-4, rtol=0)


def test_truncation_is_reported(rerankers):
    queries, documents = pairs()
    with pytest.warns(TruncationWarning, match="longest_first"):
        rerankers(100, False).predict(queries, documents)


def test_small_max_length_is_an_error(tiny):
    _, tokenizer, _, _, _ = tiny
    with pytest.raises(ValueError, match="Qwen3-Reranker template"):
        prompts.make_prompt("qwen3-reranker", tokenizer, 64, 512)


def test_family_of_a_folder(tiny, tmp_path):
    tok_dir = tiny[0]
    # the folder is named like the hub's Qwen3-Reranker checkpoints and holds a Qwen3 config
    assert prompts.detect_prompt_family(tok_dir) == "qwen3-reranker"
    assert prompts.detect_prompt_family(tok_dir, "mxbai-v2") == "mxbai-v2"  # forced
    plain = tmp_path / "plain"
    plain.mkdir()
    assert prompts.detect_prompt_family(plain) == "mxbai-v2"
    (plain / "config.json").write_text(json.dumps({"model_type": "qwen3", "_name_or_path": "Qwen/Qwen3-Reranker-4B"}))
    assert prompts.detect_prompt_family(plain) == "qwen3-reranker"
    (plain / "prorank.json").write_text(prompts.prorank_file_text("mxbai-v2"))
    assert prompts.detect_prompt_family(plain) == "mxbai-v2"  # a saved field wins over name hints
    (plain / "prorank.json").write_text(json.dumps({"prompt_family": "bert"}))
    with pytest.raises(ValueError, match="prorank.json: prompt_family='bert'"):
        prompts.detect_prompt_family(plain)
    loaded = Reranker.from_pretrained(tok_dir, dtype="float32", show_progress=False)
    assert loaded.family.name == "qwen3-reranker" and loaded.prompt.yes_id == tiny[1].convert_tokens_to_ids("yes")


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory):
    from prorank_jax.export import export_hf

    out = tmp_path_factory.mktemp("export") / "qwen3-prorank-tiny"
    export_hf(tiny[0], out)  # the family is detected from the folder (a Qwen3-Reranker name)
    return out


def test_export_records_the_family(exported):
    from tests.helpers.model_cards import parse_front_matter

    assert json.loads((exported / "prorank.json").read_text()) == {"prompt_family": "qwen3-reranker"}
    assert prompts.detect_prompt_family(exported) == "qwen3-reranker"
    card = (exported / "README.md").read_text()
    parse_front_matter(card)
    assert 'logit("yes") - logit("no")' in card and "### mxbai-rerank" not in card
    # vLLM's documented override for Qwen3-Reranker checkpoints
    assert '"classifier_from_token": ["no", "yes"]' in card and '"is_original_qwen3_reranker": true' in card
    assert '"architectures": ["Qwen3ForSequenceClassification"]' in card


def test_sentence_transformers_cross_encoder(exported, rerankers):
    """CrossEncoder on the exported folder feeds the model the card's ids and gives our scores and order."""
    from sentence_transformers import CrossEncoder
    from sentence_transformers.cross_encoder.modules import LogitScore

    ours = rerankers(8192, False)
    ce = CrossEncoder(str(exported))
    assert isinstance(ce[1], LogitScore)
    assert (ce[1].true_token_id, ce[1].false_token_id) == (ours.prompt.yes_id, ours.prompt.no_id)
    query = QUERIES[0]
    docs = DOCUMENTS
    for instruction in INSTRUCTIONS:
        features = ce[0].preprocess([(query, d) for d in docs], prompt=instruction)
        mask = features["attention_mask"].numpy().astype(bool)
        got_ids = [row[m].tolist() for row, m in zip(features["input_ids"].numpy(), mask)]
        want = ours.prompt.encode_batch([query] * len(docs), docs, instruction=instruction)
        assert got_ids == [list(e.input_ids) for e in want]
        theirs = ce.predict([(query, d) for d in docs], prompt=instruction)
        np.testing.assert_allclose(theirs, ours.predict([query] * len(docs), docs, instruction=instruction),
                                   atol=1e-4, rtol=0)
    assert [r["corpus_id"] for r in ce.rank(query, docs)] == [r.index for r in ours.rank(query, docs)]


def test_card_transformers_snippet(exported, rerankers):
    import re

    card = (exported / "README.md").read_text()
    section = card.split("### transformers (the Qwen3-Reranker model card's code)", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1).replace('"qwen3-prorank-tiny"', repr(str(exported)))
    printed = []
    exec(compile(code, "card", "exec"), {"print": lambda *a: printed.append(a), "__name__": "snippet"})
    docs = ["Paris is the capital of France.", "Berlin is in Germany."]
    np.testing.assert_allclose(printed[0][0], rerankers(8192, False).predict([QUERIES[0]] * 2, docs), atol=1e-4)


def test_family_from_a_hub_cache_path(tmp_path):
    snapshot = tmp_path / "qwen3-reranker-runs" / "models--Qwen--Qwen3-Reranker-0.6B" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps({"model_type": "qwen3"}))
    assert prompts.detect_prompt_family(snapshot) == "qwen3-reranker"
    # a parent folder's name alone says nothing about the model
    other = tmp_path / "qwen3-reranker-runs" / "mxbai"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "qwen3"}))
    assert prompts.detect_prompt_family(other) == "mxbai-v2"
    (snapshot / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    assert prompts.detect_prompt_family(snapshot) == "mxbai-v2"
