"""Self-supervised relevance examples from a corpus alone: the inverse cloze task.

A pseudo-query is a handful of words drawn from one document; that document is its
positive and documents drawn at random from the rest of the corpus are its negatives.
No queries and no judgments are read, so this is fair to run on any corpus, including
the documents of held-out queries (as Contriever and ICT pre-training do).

A randomly initialised tiny model trained only on a few dozen labelled queries
memorises them; trained first on these groups (launch/configs/pretrain_tiny.yaml) it
learns to match words between query and document and ranks queries it never saw above
chance. Real checkpoints (Qwen2.5 and up) bring that prior from their pre-training.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence

from prorank_jax.data.examples import GroupExample, PairExample

WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9'-]*")
DEFAULT_QUERIES_PER_DOCUMENT = 32
DEFAULT_MIN_WORDS = 3
DEFAULT_MAX_WORDS = 8
DEFAULT_MAX_FOREIGN_WORDS = 3
# Words this short are mostly function words ("the", "and", "of"); sampling them would
# make pseudo-queries that match every document.
MIN_WORD_CHARS = 4


def content_words(text: str) -> list[str]:
    """The lower-cased words of ``text`` with at least MIN_WORD_CHARS characters, in order."""
    return [w.lower() for w in WORD.findall(text) if len(w) >= MIN_WORD_CHARS]


def pseudo_query(words: Sequence[str], rng: random.Random, min_words: int, max_words: int,
                 foreign: Sequence[str] = ()) -> str:
    """Between min_words and max_words distinct positions of ``words``, kept in document order,
    with the ``foreign`` words inserted at random places."""
    count = min(len(words), rng.randint(min_words, max_words))
    picked = [words[i] for i in sorted(rng.sample(range(len(words)), count))]
    for word in foreign:
        picked.insert(rng.randint(0, len(picked)), word)
    return " ".join(picked)


class _OtherIds(Sequence):
    """doc_ids without the one at `skip`, as a view: copying the list for every document
    would make building the groups quadratic in the corpus size."""

    def __init__(self, doc_ids: Sequence[str], skip: int):
        self.doc_ids, self.skip = doc_ids, skip

    def __len__(self) -> int:
        return len(self.doc_ids) - 1

    def __getitem__(self, i: int) -> str:
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self.doc_ids[i + (i >= self.skip)]


def inverse_cloze_groups(
    corpus: Mapping[str, str],
    *,
    num_negatives: int = 3,
    queries_per_document: int = DEFAULT_QUERIES_PER_DOCUMENT,
    min_words: int = DEFAULT_MIN_WORDS,
    max_words: int = DEFAULT_MAX_WORDS,
    max_foreign_words: int = DEFAULT_MAX_FOREIGN_WORDS,
    seed: int = 0,
) -> list[GroupExample]:
    """``queries_per_document`` groups per document with enough content words: a pseudo-query,
    the document (label 1) and ``num_negatives`` other documents drawn uniformly (label 0).

    Each pseudo-query also gets 0 to ``max_foreign_words`` words of another random document:
    real queries share only some of their words with a relevant document, and a model that
    only saw pseudo-queries made of document words puts most real relevant pairs below its
    decision boundary (s < 0).

    Documents with fewer than ``min_words`` content words get no pseudo-query (they still
    serve as negatives). Deterministic for a seed; query ids are "ict:{doc_id}:{i}".
    """
    if not 1 <= min_words <= max_words:
        raise ValueError(f"need 1 <= min_words <= max_words, got min_words={min_words}, max_words={max_words}")
    if max_foreign_words < 0:
        raise ValueError(f"max_foreign_words must be >= 0, got {max_foreign_words}")
    if queries_per_document < 1:
        raise ValueError(f"queries_per_document must be >= 1, got {queries_per_document}")
    doc_ids = sorted(corpus)
    if len(doc_ids) < num_negatives + 1:
        raise ValueError(
            f"the corpus has {len(doc_ids)} documents; {num_negatives} negatives per group need at least "
            f"{num_negatives + 1}"
        )
    groups = []
    for position, doc_id in enumerate(doc_ids):
        words = content_words(corpus[doc_id])
        if len(words) < min_words:
            continue
        rng = random.Random(f"{seed}:ict:{doc_id}")
        others = _OtherIds(doc_ids, position)
        for i in range(queries_per_document):
            negatives = rng.sample(others, num_negatives)
            donor = content_words(corpus[rng.choice(others)])
            foreign = rng.sample(donor, min(len(donor), rng.randint(0, max_foreign_words)))
            groups.append(
                GroupExample(
                    query_id=f"ict:{doc_id}:{i}",
                    query=pseudo_query(words, rng, min_words, max_words, foreign),
                    doc_ids=(doc_id, *negatives),
                    documents=(corpus[doc_id], *(corpus[d] for d in negatives)),
                    labels=(1,) + (0,) * num_negatives,
                )
            )
    if not groups:
        raise ValueError(f"no document of the corpus has {min_words} or more words of {MIN_WORD_CHARS}+ characters")
    return groups


# The options a run config may set (DataConfig.inverse_cloze); the rest are the loader's.
OPTION_NAMES = ("queries_per_document", "min_words", "max_words", "max_foreign_words")


def inverse_cloze_pairs(corpus: Mapping[str, str], **kwargs) -> list[PairExample]:
    """The pairs of ``inverse_cloze_groups``: each group's positive and negatives, one pair each."""
    return [
        PairExample(query_id=g.query_id, doc_id=d, query=g.query, document=text, label=label)
        for g in inverse_cloze_groups(corpus, **kwargs)
        for d, text, label in zip(g.doc_ids, g.documents, g.labels)
    ]
