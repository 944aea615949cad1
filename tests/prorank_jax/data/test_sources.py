"""Every source yields the same examples for the same data; bad rows are reported with their place."""

import importlib.util
import json
import sys

import pytest

from prorank_jax.data import DataError
from prorank_jax.data.examples import GroupExample, PairExample
from prorank_jax.data.sources import (
    bundled_group_examples,
    bundled_pair_examples,
    hf_group_examples,
    hf_pair_examples,
    load_examples,
    read_group_jsonl,
    read_pair_jsonl,
    tfds_examples,
    write_group_jsonl,
    write_pair_jsonl,
)


@pytest.fixture(scope="module")
def bundled():
    return {
        "pairs": bundled_pair_examples("train", negatives_per_query=3, seed=0),
        "groups": bundled_group_examples("train", num_negatives=3, seed=0),
    }


@pytest.fixture(scope="module")
def jsonl_files(bundled, tmp_path_factory):
    folder = tmp_path_factory.mktemp("jsonl")
    paths = {"pairs": folder / "pairs.jsonl", "groups": folder / "groups.jsonl"}
    assert write_pair_jsonl(paths["pairs"], bundled["pairs"]) == len(bundled["pairs"])
    assert write_group_jsonl(paths["groups"], bundled["groups"]) == len(bundled["groups"])
    return paths


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    from prorank_jax.data.tfds_bundled import prepare_bundled

    data_dir = tmp_path_factory.mktemp("tfds")
    names = prepare_bundled(data_dir)
    assert names == {"pairs": "prorank_bundled/pairs", "groups": "prorank_bundled/groups"}
    return data_dir


def _write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# --- JSONL -----------------------------------------------------------------


def test_jsonl_round_trip_keeps_every_field(bundled, jsonl_files):
    assert read_pair_jsonl(jsonl_files["pairs"]) == bundled["pairs"]
    assert read_group_jsonl(jsonl_files["groups"]) == bundled["groups"]
    # The files really are the documented schema, not a private encoding.
    first = json.loads(jsonl_files["groups"].read_text().splitlines()[0])
    assert set(first) >= {"query", "positive", "negatives", "positive_label", "negative_labels"}
    assert first["positive"] == bundled["groups"][0].documents[0]


def test_minimal_jsonl_rows_get_documented_defaults(tmp_path):
    path = _write_rows(tmp_path / "g.jsonl", [{"query": "q", "positive": "p", "negatives": ["n1", "n2"]}])
    assert read_group_jsonl(path) == [
        GroupExample(query_id="", query="q", doc_ids=("", "", ""), documents=("p", "n1", "n2"), labels=(1, 0, 0))
    ]
    path = _write_rows(tmp_path / "p.jsonl", [{"query": "q", "document": "d", "label": 2}])
    assert read_pair_jsonl(path) == [PairExample(query_id="", doc_id="", query="q", document="d", label=2)]


@pytest.mark.parametrize(
    "row, fragment",
    [
        ({"query": "q", "negatives": ["n"]}, "missing field 'positive'"),
        ({"query": "q", "positive": "p", "negatives": "n"}, "field 'negatives' must be a list"),
        ({"query": "q", "positive": "p", "negatives": ["n", 3]}, "field 'negatives'[1] must be a string"),
        ({"query": "q", "positive": "p", "negatives": ["n"], "negative_labels": [0, 1]}, "has 2 entries"),
        (
            {"query": "q", "positive": "p", "negatives": ["n"], "positive_label": "2"},
            "'positive_label' must be an integer",
        ),
        ({"query": "", "positive": "p", "negatives": ["n"]}, "field 'query' is empty"),
    ],
)
def test_bad_group_rows_name_file_line_and_field(tmp_path, row, fragment):
    good = {"query": "q", "positive": "p", "negatives": ["n"]}
    path = tmp_path / "groups.jsonl"
    # Line 3 is the bad one: a blank line counts, as in an editor.
    path.write_text(json.dumps(good) + "\n\n" + json.dumps(row) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        read_group_jsonl(path)
    assert info.value.line == 3 and info.value.path == str(path)
    assert fragment in str(info.value) and str(info.value).startswith(f"{path}:3: ")


@pytest.mark.parametrize(
    "row, fragment",
    [
        ({"query": "q", "document": "d"}, "missing field 'label'"),
        ({"query": "q", "document": "d", "label": True}, "'label' must be an integer, got bool"),
        ({"query": "q", "document": "d", "label": 1.5}, "'label' must be an integer, got float"),
        ({"query": "q", "document": 7, "label": 1}, "'document' must be a string"),
    ],
)
def test_bad_pair_rows_name_file_line_and_field(tmp_path, row, fragment):
    path = _write_rows(tmp_path / "pairs.jsonl", [{"query": "q", "document": "d", "label": 0}, row])
    with pytest.raises(DataError, match=rf"pairs\.jsonl:2: .*{fragment[:12]}") as info:
        read_pair_jsonl(path)
    assert fragment in str(info.value)


def test_empty_jsonl_is_an_error_not_an_empty_dataset(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n", encoding="utf-8")
    with pytest.raises(DataError, match="no examples"):
        read_pair_jsonl(path)


# --- tfds --------------------------------------------------------------------


def test_tensorflow_is_not_installed():
    # The tfds source must work from array_record alone; if TF appears here, the check below proves nothing.
    assert importlib.util.find_spec("tensorflow") is None


def test_tfds_array_record_yields_the_jsonl_examples(bundled, jsonl_files, tfds_dir):
    pairs = tfds_examples("prorank_bundled/pairs", "train", data_dir=tfds_dir, kind="pairs")
    groups = tfds_examples("prorank_bundled/groups", "train", data_dir=tfds_dir, kind="groups")
    assert list(pairs) == read_pair_jsonl(jsonl_files["pairs"]) == bundled["pairs"]
    assert list(groups) == read_group_jsonl(jsonl_files["groups"]) == bundled["groups"]
    # Random access, as grain needs, straight from the array_record files.
    assert groups[len(groups) - 1] == bundled["groups"][-1] and groups[-1] == groups[len(groups) - 1]
    assert list((tfds_dir / "prorank_bundled" / "groups" / "1.0.0").glob("*.array_record*"))
    assert "tensorflow" not in sys.modules


def test_tfds_test_split_and_custom_parameters(tmp_path):
    from prorank_jax.data.tfds_bundled import prepare_bundled

    names = prepare_bundled(tmp_path, ("groups",), num_negatives=5, seed=3)
    assert names == {"groups": "prorank_bundled/groups_n5_seed3"}
    got = tfds_examples(names["groups"], "test", data_dir=tmp_path, kind="groups")
    assert list(got) == bundled_group_examples("test", num_negatives=5, seed=3)
    assert list(load_examples("tfds", 2, path=tmp_path, split="test", num_negatives=5, seed=3)) == list(got)


def test_any_tfds_dataset_with_the_row_features_is_a_source(tmp_path):
    """Not only the bundled builder: a dataset of someone else's, prepared as array_record,
    whose features carry the row schema's names (extra features are ignored)."""
    import numpy as np
    import tensorflow_datasets as tfds

    from prorank_jax.data.pipeline import DataConfig, load_config_examples

    rows = [
        {"query": "blue cheese", "document": "Roquefort is a blue cheese.", "label": 2, "query_id": "q1",
         "doc_id": "d1", "url": "https://example.org/1"},
        {"query": "blue cheese", "document": "Boil the egg.", "label": 0, "query_id": "q1", "doc_id": "d2",
         "url": "https://example.org/2"},
        {"query": "tides", "document": "", "label": 1, "query_id": "q2", "doc_id": "d3", "url": ""},
    ]

    class HandmadePairs(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("0.1.0")

        @tfds.core.utils.classproperty
        @classmethod
        def code_path(cls):  # as in tfds_bundled: a builder in a package has no source folder to find
            return None

        def _info(self):
            text = tfds.features.Text
            features = {"query_id": text(), "doc_id": text(), "query": text(), "document": text(),
                        "label": np.int32, "url": text()}
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features),
                                         disable_shuffling=True)

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for index, row in enumerate(rows):
                yield f"{index:03d}", row

    HandmadePairs(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
    expected = [PairExample(r["query_id"], r["doc_id"], r["query"], r["document"], r["label"]) for r in rows]
    assert list(load_examples("tfds", 1, path=tmp_path, tfds_name="handmade_pairs")) == expected
    config = DataConfig(source="tfds", path=str(tmp_path), tfds_name="handmade_pairs")
    assert list(load_config_examples(config, 1)) == expected
    with pytest.raises(DataError, match=r"handmade_pairs\[train\].*record 0: missing field 'positive'"):
        load_examples("tfds", 2, path=tmp_path, tfds_name="handmade_pairs")[0]


def test_unprepared_tfds_dataset_is_a_clear_error(tfds_dir):
    with pytest.raises(DataError, match=r"not prepared.*prepared configs .*\['groups', 'pairs'\]"):
        tfds_examples("prorank_bundled/groups_n9_seed9", "train", data_dir=tfds_dir, kind="groups")


# --- HF datasets ---------------------------------------------------------------


def test_hf_saved_dataset_and_json_files_yield_the_jsonl_examples(bundled, jsonl_files, tmp_path):
    import datasets

    for kind, load in (("pairs", hf_pair_examples), ("groups", hf_group_examples)):
        expected = bundled[kind]
        rows = [json.loads(line) for line in jsonl_files[kind].read_text().splitlines()]
        saved = tmp_path / f"saved_{kind}"
        datasets.Dataset.from_list(rows).save_to_disk(str(saved))
        assert load(saved, "train") == expected
        # A saved DatasetDict: the split is chosen by name.
        dict_dir = tmp_path / f"dict_{kind}"
        datasets.DatasetDict({"test": datasets.Dataset.from_list(rows[:5])}).save_to_disk(str(dict_dir))
        assert load(dict_dir, "test") == expected[:5]
        # The JSONL file itself through load_dataset("json"), and a parquet copy.
        assert load(jsonl_files[kind], "train", cache_dir=str(tmp_path / "cache")) == expected
        parquet = tmp_path / f"{kind}.parquet"
        datasets.Dataset.from_list(rows).to_parquet(str(parquet))
        assert load(parquet, "train", cache_dir=str(tmp_path / "cache")) == expected


def test_hf_sentence_transformers_layouts(tmp_path):
    import datasets

    triplets = datasets.Dataset.from_list(
        [{"anchor": "q1", "positive": "p1", "negative": "n1"}, {"anchor": "q2", "positive": "p2", "negative": "n2"}]
    )
    assert hf_group_examples("triplets", dataset=triplets) == [
        GroupExample("", "q1", ("", ""), ("p1", "n1"), (1, 0)),
        GroupExample("", "q2", ("", ""), ("p2", "n2"), (1, 0)),
    ]
    # Hard-negative layout: negative_1..negative_n gathered in numeric order (negative_10 last).
    row = {"query": "q", "positive": "p", **{f"negative_{i}": f"n{i}" for i in (1, 2, 10)}}
    hard = datasets.Dataset.from_list([row])
    assert hf_group_examples("hard", dataset=hard)[0].documents == ("p", "n1", "n2", "n10")


def test_hf_column_mapping(tmp_path):
    import datasets

    table = datasets.Dataset.from_list([{"q": "q1", "pos": "p1", "hard": ["a", "b"], "rel": 2}])
    got = hf_group_examples(
        "mapped", dataset=table, columns={"query": "q", "positive": "pos", "negatives": "hard", "positive_label": "rel"}
    )
    assert got == [GroupExample("", "q1", ("", "", ""), ("p1", "a", "b"), (2, 0, 0))]
    pairs = datasets.Dataset.from_list([{"question": "q1", "passage": "d1", "label": 1}])
    assert hf_pair_examples("pairs", dataset=pairs) == [PairExample("", "", "q1", "d1", 1)]


def test_hf_missing_column_lists_available_columns():
    import datasets

    table = datasets.Dataset.from_list([{"text": "q1", "pos": "p1", "neg": "n1"}])
    with pytest.raises(DataError, match=r"no column for field 'query'.*available columns: 'text', 'pos', 'neg'"):
        hf_group_examples("odd", dataset=table)
    with pytest.raises(DataError, match=r"column 'nope' \(mapped to field 'query'\).*available columns: 'text'"):
        hf_group_examples("odd", dataset=table, columns={"query": "nope"})


def test_hf_bad_row_names_the_row_and_field():
    import datasets

    table = datasets.Dataset.from_list(
        [{"query": "q", "positive": "p", "negative_1": "a"}, {"query": "q", "positive": "p", "negative_1": None}]
    )
    with pytest.raises(DataError, match=r"hard\[train\]: row 2: field 'negatives'\[0\] must be a string, got NoneType"):
        hf_group_examples("hard", dataset=table)


# --- one entry point -------------------------------------------------------------


def test_load_examples_dispatches_to_every_source(bundled, jsonl_files, tfds_dir, tmp_path):
    import datasets

    assert load_examples("bundled", 2) == bundled["groups"]
    assert load_examples("jsonl", 2, path=jsonl_files["groups"]) == bundled["groups"]
    assert list(load_examples("tfds", 1, path=tfds_dir)) == bundled["pairs"]
    # A saved dataset (load_from_disk) so that nothing is written to the user's HF cache.
    rows = [json.loads(line) for line in jsonl_files["pairs"].read_text().splitlines()]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    assert load_examples("hf", 1, path=tmp_path / "saved") == bundled["pairs"]
    with pytest.raises(ValueError, match="needs a path"):
        load_examples("jsonl", 1)
    with pytest.raises(ValueError, match="source kind must be one of"):
        load_examples("csv", 1, path="x")
