"""A tfds builder for the bundled BEIR data, prepared as array_record for grain.

Two configs, one per training stage:

  prorank_bundled/pairs   stage-1 PairExamples   (examples.pair_examples)
  prorank_bundled/groups  stage-2 GroupExamples  (examples.group_examples)

with the splits of the bundled qrels (train, test). Records use the field
names of the row schema (rows.PAIR_FIELDS / GROUP_FIELDS), so
``sources.tfds_examples`` parses them with the same code as JSONL rows; any other
tfds dataset whose features carry those names is read the same way.

Preparing and reading need no TensorFlow: array_record files are written and
read by tfds' numpy path, and read back with ``tfds.data_source`` (random
access, which grain needs for global shuffles and resumable iterators).

    prepare_bundled(data_dir)   # writes data_dir/prorank_bundled/{pairs,groups}/1.0.0
    sources.tfds_examples("prorank_bundled/groups", "train", data_dir=data_dir, kind="groups")
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from prorank_jax.bundled import bundled_data_dir
from prorank_jax.data.beir import available_splits, load_beir
from prorank_jax.data.examples import group_examples, pair_examples
from prorank_jax.data.rows import group_to_row, pair_to_row

NAME = "prorank_bundled"
DEFAULT_NUM_NEGATIVES = 3
DEFAULT_SEED = 0


@dataclasses.dataclass
class BundledConfig(tfds.core.BuilderConfig):
    """``num_negatives`` and ``seed`` are those of the example builders (extra negatives per
    query for pairs, negatives per group for groups)."""

    num_negatives: int = DEFAULT_NUM_NEGATIVES
    seed: int = DEFAULT_SEED


def _pair_features() -> tfds.features.FeaturesDict:
    text = tfds.features.Text
    return tfds.features.FeaturesDict(
        {"query_id": text(), "doc_id": text(), "query": text(), "document": text(), "label": np.int32}
    )


def _group_features() -> tfds.features.FeaturesDict:
    texts = lambda: tfds.features.Sequence(tfds.features.Text())  # noqa: E731
    return tfds.features.FeaturesDict(
        {
            "query_id": tfds.features.Text(),
            "query": tfds.features.Text(),
            "positive_id": tfds.features.Text(),
            "positive": tfds.features.Text(),
            "positive_label": np.int32,
            "negative_ids": texts(),
            "negatives": texts(),
            "negative_labels": tfds.features.Sequence(np.int32),
        }
    )


class ProrankBundled(tfds.core.GeneratorBasedBuilder):
    """The bundled tiny reranking dataset as stage-1 pairs or stage-2 groups."""

    name = NAME
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First version."}
    BUILDER_CONFIGS = [
        BundledConfig(name="pairs", description="stage 1: (query, document, graded label) pairs"),
        BundledConfig(name="groups", description="stage 2: (query, positive, negatives) groups"),
    ]

    # tfds 4.9.10 locates a builder's source folder (for download checksums)
    # through importlib_resources, which it only declares as a dependency for
    # Python < 3.9, so a builder inside a package fails with
    # "No module named 'importlib_resources'". We download nothing, so there
    # are no checksums to find.
    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
        return None

    def __init__(self, *, beir_dir: str | os.PathLike | None = None, **kwargs):
        # Any BEIR folder works; the bundled one is the default and what the name promises.
        self._beir_dir = Path(beir_dir) if beir_dir is not None else bundled_data_dir()
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        features = _pair_features() if self.builder_config.name == "pairs" else _group_features()
        # disable_shuffling keeps the example builders' order, so the records read
        # back in the same order as the same examples written to JSONL.
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=features,
            disable_shuffling=True,
            license="CC0-1.0",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # everything is local
        return {split: self._generate_examples(split) for split in available_splits(self._beir_dir)}

    def _generate_examples(self, split: str):
        config = self.builder_config
        data = load_beir(self._beir_dir, split)
        if config.name == "pairs":
            rows = map(pair_to_row, pair_examples(data, negatives_per_query=config.num_negatives, seed=config.seed))
        else:
            rows = map(group_to_row, group_examples(data, num_negatives=config.num_negatives, seed=config.seed))
        for index, row in enumerate(rows):
            # Zero-padded keys: with shuffling disabled, records are stored in key order.
            yield f"{index:09d}", row


def config_name(kind: str, *, num_negatives: int = DEFAULT_NUM_NEGATIVES, seed: int = DEFAULT_SEED) -> str:
    """The tfds config name for ``kind`` ("pairs" or "groups") built with these parameters.

    The defaults keep the plain name; other parameters get their own name
    (e.g. "groups_n7_seed1") because tfds keys prepared files by name and
    version, and would otherwise silently reuse files built with other parameters.
    """
    if kind not in ("pairs", "groups"):
        raise ValueError(f"unknown config {kind!r}; {NAME} has configs 'pairs' and 'groups'")
    if num_negatives < 0:
        raise ValueError(f"num_negatives must be >= 0, got {num_negatives}")
    if (num_negatives, seed) == (DEFAULT_NUM_NEGATIVES, DEFAULT_SEED):
        return kind
    return f"{kind}_n{num_negatives}_seed{seed}"


def _builder_config(kind: str, num_negatives: int, seed: int) -> BundledConfig | str:
    name = config_name(kind, num_negatives=num_negatives, seed=seed)
    if name == kind:
        return name  # tfds only accepts a registered config by name, not an equal copy
    base = next(c for c in ProrankBundled.BUILDER_CONFIGS if c.name == kind)
    return dataclasses.replace(base, name=name, num_negatives=num_negatives, seed=seed)


def prepare_bundled(
    data_dir: str | os.PathLike,
    kinds: tuple[str, ...] = ("pairs", "groups"),
    *,
    num_negatives: int = DEFAULT_NUM_NEGATIVES,
    seed: int = DEFAULT_SEED,
    beir_dir: str | os.PathLike | None = None,
) -> dict[str, str]:
    """Prepare ``kinds`` as array_record under ``data_dir``; returns {kind: "prorank_bundled/<config>"}.

    The returned names are what ``tfds.data_source`` / ``sources.tfds_examples``
    read. Preparing again with the same parameters reuses the files.
    """
    names = {}
    for kind in kinds:
        config = _builder_config(kind, num_negatives, seed)
        builder = ProrankBundled(
            config=config, data_dir=os.fspath(data_dir), file_format="array_record", beir_dir=beir_dir
        )
        builder.download_and_prepare()
        names[kind] = f"{NAME}/{builder.builder_config.name}"
    return names
