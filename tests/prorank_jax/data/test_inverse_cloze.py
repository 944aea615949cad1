"""Inverse-cloze groups: pseudo-queries drawn from their positive document, random negatives,
deterministic, reachable as the "inverse_cloze" source of both stages."""

import json
import random

import pytest

from prorank_jax.data import bundled_data_dir, load_corpus
from prorank_jax.data.inverse_cloze import (
    MIN_WORD_CHARS,
    content_words,
    inverse_cloze_groups,
    inverse_cloze_pairs,
    pseudo_query,
)
from prorank_jax.data.pipeline import DataConfig, load_config_examples
from prorank_jax.data.sources import load_examples

CORPUS = {
    "a": "Roquefort and Stilton are blue cheeses ripened with edible molds.",
    "b": "Boil the egg for six minutes for a soft yolk.",
    "c": "The sea tides go up.",  # 1 content word: never a positive with min_words=3
    "d": "Basil plants indoors need six hours of sunlight and well drained soil.",
    "e": "Carpets stained with red wine respond to cold water and salt.",
}


def is_subsequence(needle, haystack):
    it = iter(haystack)
    return all(word in it for word in needle)


def test_content_words_drop_short_words_and_punctuation():
    assert content_words("The egg, boiled (6 min) -- soft-yolk's best!") == ["boiled", "soft-yolk's", "best"]
    assert all(len(w) >= MIN_WORD_CHARS for w in content_words(CORPUS["d"]))


def test_pseudo_query_keeps_document_order_and_bounds():
    words = [f"w{i:02d}" for i in range(20)]
    rng = random.Random(0)
    for _ in range(200):
        q = pseudo_query(words, rng, 3, 8).split()
        assert 3 <= len(q) <= 8 and len(set(q)) == len(q)
        assert q == sorted(q)  # positions kept in order
    assert pseudo_query(["only", "two"], rng, 3, 8) == "only two"


def test_groups_are_drawn_from_their_positive_with_random_negatives():
    groups = inverse_cloze_groups(CORPUS, num_negatives=2, queries_per_document=5, min_words=3, max_words=6,
                                  max_foreign_words=0, seed=1)
    assert len(groups) == 4 * 5  # "c" is too short to be queried
    assert {g.doc_ids[0] for g in groups} == {"a", "b", "d", "e"}
    for g in groups:
        positive, *negatives = g.doc_ids
        assert g.labels == (1, 0, 0)
        assert g.documents == tuple(CORPUS[d] for d in g.doc_ids)
        assert positive not in negatives and len(set(negatives)) == 2
        assert is_subsequence(g.query.split(), content_words(CORPUS[positive]))
        assert g.query_id.startswith(f"ict:{positive}:")
    assert "c" in {d for g in groups for d in g.doc_ids[1:]}  # still a negative
    assert len({g.query_id for g in groups}) == len(groups)


def test_foreign_words_come_from_other_documents():
    groups = inverse_cloze_groups(CORPUS, num_negatives=1, queries_per_document=50, min_words=3, max_words=3,
                                  max_foreign_words=2, seed=0)
    vocabulary = {d: set(content_words(text)) for d, text in CORPUS.items()}
    counts = set()
    for g in groups:
        own = [w for w in g.query.split() if w in vocabulary[g.doc_ids[0]]]
        foreign = [w for w in g.query.split() if w not in vocabulary[g.doc_ids[0]]]
        assert len(own) >= 3 and len(foreign) <= 2
        assert all(any(w in vocabulary[d] for d in CORPUS if d != g.doc_ids[0]) for w in foreign)
        counts.add(len(foreign))
    assert counts == {0, 1, 2}


def test_run_configs_reach_the_options_and_misuse_is_named():
    options = {"max_foreign_words": 0, "max_words": 4, "queries_per_document": 3}
    config = DataConfig(source="inverse_cloze", num_negatives=3, inverse_cloze=options)
    assert load_config_examples(config, 2) == inverse_cloze_groups(
        load_corpus(bundled_data_dir() / "corpus.jsonl"), num_negatives=3, seed=0, **options)
    assert load_config_examples(config, 2) != load_config_examples(DataConfig(source="inverse_cloze"), 2)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['max_word'\]"):
        DataConfig(source="inverse_cloze", inverse_cloze={"max_word": 3})
    with pytest.raises(ValueError, match=r"DataConfig.inverse_cloze.max_words must be an integer, got '4'"):
        DataConfig(source="inverse_cloze", inverse_cloze={"max_words": "4"})
    with pytest.raises(ValueError, match="is for source 'inverse_cloze', not 'bundled'"):
        DataConfig(source="bundled", inverse_cloze={"max_words": 3})


def test_groups_are_deterministic_per_seed():
    kwargs = dict(num_negatives=2, queries_per_document=4)
    assert inverse_cloze_groups(CORPUS, seed=3, **kwargs) == inverse_cloze_groups(dict(reversed(CORPUS.items())),
                                                                                 seed=3, **kwargs)
    assert inverse_cloze_groups(CORPUS, seed=3, **kwargs) != inverse_cloze_groups(CORPUS, seed=4, **kwargs)


def test_pairs_flatten_the_groups():
    groups = inverse_cloze_groups(CORPUS, num_negatives=1, queries_per_document=2, seed=0)
    pairs = inverse_cloze_pairs(CORPUS, num_negatives=1, queries_per_document=2, seed=0)
    assert [(p.query, p.doc_id, p.label) for p in pairs] == [
        (g.query, d, label) for g in groups for d, label in zip(g.doc_ids, g.labels)
    ]


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_negatives=5), "need at least 6"),
    (dict(min_words=0), "min_words"),
    (dict(min_words=5, max_words=4), "min_words"),
    (dict(queries_per_document=0), "queries_per_document"),
    (dict(max_foreign_words=-1), "max_foreign_words"),
    (dict(min_words=40, max_words=40), "no document"),
])
def test_bad_settings_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        inverse_cloze_groups(CORPUS, **kwargs)


def test_source_reads_the_corpus_of_a_beir_folder_or_the_bundled_one(tmp_path):
    (tmp_path / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": k, "title": "", "text": v}) + "\n" for k, v in CORPUS.items()))
    groups = load_examples("inverse_cloze", 2, path=tmp_path, num_negatives=2, seed=5)
    assert groups == inverse_cloze_groups(CORPUS, num_negatives=2, seed=5)
    pairs = load_examples("inverse_cloze", 1, path=tmp_path, num_negatives=2, seed=5)
    assert pairs == inverse_cloze_pairs(CORPUS, num_negatives=2, seed=5)
    bundled = load_examples("inverse_cloze", 2, num_negatives=3, seed=0)
    assert bundled == inverse_cloze_groups(load_corpus(bundled_data_dir() / "corpus.jsonl"), num_negatives=3, seed=0)
    assert DataConfig(source="inverse_cloze").path is None  # no path needed
    with pytest.raises(ValueError, match="path is required"):
        DataConfig(source="jsonl")


def test_pretrain_tiny_config_trains_on_inverse_cloze_groups_from_a_wider_init(tmp_path):
    import jax.numpy as jnp

    from launch.cli import main
    from prorank_jax.pretrained import ModelSource, load_model
    from prorank_jax.training import read_metrics

    _, params, _ = load_model(ModelSource(init_std=0.1))
    assert float(jnp.std(params["model"]["embed_tokens"]["embedding"])) == pytest.approx(0.1, rel=0.05)
    with pytest.raises(ValueError, match="init_std"):
        ModelSource(init_std=0)
    rc = main(["train-score", "--config", "pretrain_tiny", f"out_dir={tmp_path}", "loop.steps=2", "loop.log_every=1",
               "loop.eval_every=0", "loop.save_every=0", "loop.progress_bar=false", "data.batch_size=4"])
    assert rc == 0
    rows = [r for r in read_metrics(tmp_path) if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["listwise_count"] == 4 and r["pointwise_count"] == 16 for r in rows)
