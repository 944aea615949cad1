import json
import math

import pytest

from prorank_jax.data import bundled_data_dir, bundled_tokenizer_dir, load_beir, load_queries
from prorank_jax.data.make_tokenizer import TEMPLATE_TEXTS, build

# The counts documented in bundled/README.md.
NUM_DOCS, NUM_TRAIN, NUM_TEST = 265, 31, 11


@pytest.fixture(scope="module")
def splits():
    return {split: load_beir(bundled_data_dir(), split) for split in ("train", "test")}


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(bundled_tokenizer_dir())


@pytest.fixture(scope="module")
def tiny_config():
    return json.loads((bundled_data_dir() / "tiny_model.json").read_text())


def test_splits_have_documented_sizes_and_disjoint_queries(splits):
    train, test = splits["train"], splits["test"]
    assert len(train.corpus) == len(test.corpus) == NUM_DOCS
    assert (len(train.queries), len(test.queries)) == (NUM_TRAIN, NUM_TEST)
    assert not set(train.queries) & set(test.queries)
    # Every written query belongs to exactly one split: nothing is left unused.
    all_queries = load_queries(bundled_data_dir() / "queries.jsonl")
    assert set(all_queries) == set(train.queries) | set(test.queries)


def test_every_query_has_graded_positives_and_judged_near_misses(splits):
    for data in splits.values():
        for query_id, judged in data.qrels.items():
            grades = sorted(judged.values())
            assert set(grades) <= {0, 1, 2, 3}, query_id
            assert 2 <= sum(g > 0 for g in grades) <= 5, query_id
            assert 3 in grades and grades.count(0) >= 2, query_id


def test_documents_are_short_and_distinct(splits):
    corpus = splits["train"].corpus
    assert len(set(corpus.values())) == len(corpus)
    for doc_id, text in corpus.items():
        assert 20 <= len(text.split()) <= 70, doc_id


def ndcg_at_10(ranked, judged):
    dcg = sum((2 ** judged.get(d, 0) - 1) / math.log2(i + 2) for i, d in enumerate(ranked[:10]) if judged.get(d, 0) > 0)
    ideal = sorted((g for g in judged.values() if g > 0), reverse=True)[:10]
    return dcg / sum((2**g - 1) / math.log2(i + 2) for i, g in enumerate(ideal))


def test_relevance_is_lexically_real_and_near_misses_compete(splits):
    # BM25 should find the relevant documents far better than chance (the
    # signal is learnable) but not perfectly, and the near-misses should rank
    # among its top ten for most queries (so reranking is not trivial).
    # Measured when the data was written: nDCG@10 0.85 train / 0.80 test,
    # near-miss in the top ten for 23/31 train and 9/11 test queries.
    import bm25s
    data = splits["train"]
    doc_ids = sorted(data.corpus)
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize([data.corpus[d] for d in doc_ids], show_progress=False), show_progress=False)
    for data in splits.values():
        query_ids = sorted(data.queries)
        tokens = bm25s.tokenize([data.queries[q] for q in query_ids], return_ids=False, show_progress=False)
        results, _ = retriever.retrieve(tokens, k=10, show_progress=False)
        ndcgs, near_miss_in_top = [], 0
        for query_id, row in zip(query_ids, results):
            ranked = [doc_ids[i] for i in row]
            judged = data.qrels[query_id]
            ndcgs.append(ndcg_at_10(ranked, judged))
            near_miss_in_top += any(judged.get(d) == 0 for d in ranked)
        assert 0.6 < sum(ndcgs) / len(ndcgs) < 0.95
        assert min(ndcgs) < 0.5  # some queries need more than word overlap
        assert near_miss_in_top >= 0.7 * len(query_ids)


def test_tokenizer_loads_with_qwen_special_tokens(tokenizer):
    assert type(tokenizer).__name__ == "Qwen2Tokenizer"
    assert tokenizer.pad_token == "<|endoftext|>" and tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.bos_token is None and tokenizer.unk_token is None
    for token in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"):
        ids = tokenizer(token, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and ids[0] in tokenizer.all_special_ids, token


def test_one_and_zero_are_single_distinct_tokens_and_digits_split(tokenizer):
    one = tokenizer("1", add_special_tokens=False)["input_ids"]
    zero = tokenizer("0", add_special_tokens=False)["input_ids"]
    assert len(one) == len(zero) == 1 and one != zero
    assert tokenizer.convert_ids_to_tokens(tokenizer("2024", add_special_tokens=False)["input_ids"]) == ["2", "0", "2", "4"]


@pytest.mark.parametrize("piece", [*TEMPLATE_TEXTS, "query: why is the sky blue", "document: Café 3.5 °C\n\tend"])
def test_template_pieces_round_trip(tokenizer, piece):
    ids = tokenizer(piece, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == piece


def test_tiny_model_config_matches_tokenizer(tokenizer, tiny_config):
    assert tiny_config["model_type"] == "qwen2"
    assert len(tokenizer) <= tiny_config["vocab_size"] < len(tokenizer) + 64
    assert tiny_config["vocab_size"] % 64 == 0
    assert tiny_config["bos_token_id"] == tiny_config["pad_token_id"] == tokenizer.pad_token_id
    assert tiny_config["eos_token_id"] == tokenizer.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tiny_config["hidden_size"] % tiny_config["num_attention_heads"] == 0


def test_tiny_config_loads_in_transformers(tiny_config, tmp_path):
    from transformers import AutoConfig

    (tmp_path / "config.json").write_text(json.dumps(tiny_config))
    config = AutoConfig.from_pretrained(tmp_path)
    assert (config.model_type, config.vocab_size, config.num_key_value_heads) == ("qwen2", tiny_config["vocab_size"], 2)


def test_bundled_files_are_small():
    total = sum(p.stat().st_size for p in bundled_tokenizer_dir().iterdir())
    assert total < 300_000


def test_tokenizer_rebuild_reproduces_the_bundled_files(tmp_path):
    config = build(bundled_data_dir(), tmp_path / "tok", tmp_path / "tiny_model.json")
    assert config == json.loads((bundled_data_dir() / "tiny_model.json").read_text())
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / "tok" / name).read_bytes() == (bundled_tokenizer_dir() / name).read_bytes(), name
