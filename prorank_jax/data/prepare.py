"""Training files for both stages from public data: what `prorank prepare-data` writes.

    prepared = prepare_beir(load_beir("data/msmarco", "train"), run=bm25_top100, options=PrepareOptions())
    write_prepared(prepared, "data", "train")   # data/stage1/train_pairs.jsonl, data/stage2/train_groups.jsonl

Sources:
  * a BEIR split plus an optional first-stage run (BM25 over the corpus or a TREC file)
    whose top ``depth`` documents that are not judged relevant are the hard negatives
    (``examples.pair_examples`` / ``examples.group_examples`` build the examples);
  * an HF `datasets` source in a layout ``sources.hf_group_examples`` reads (MS MARCO
    triplets, hard-negative rows ``negative_1..n``, our own schema): its rows' own
    negatives are used, stage-1 pairs are cut from the groups.

Then: exact duplicates are removed (a pair with the same query and document text; a group
with the same query, positive and negatives), groups where a negative's text equals the
positive's are removed (the same text labelled both ways), stage-1 negatives are trimmed
to ``negatives_per_positive`` per positive when a label balance is asked for, and the
summary counts what was written and what was removed. Nothing is dropped uncounted.

The overlap guard (``check_no_overlap``) refuses training queries that appear in an
evaluation split, by normalised text, and by id when both come from the same folder.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from prorank_jax.data.beir import BeirData, load_beir
from prorank_jax.data.errors import DataError
from prorank_jax.data.examples import GroupExample, PairExample, group_examples, pair_examples
from prorank_jax.data.sources import write_group_jsonl, write_pair_jsonl
from prorank_jax.files import atomic_text_writer
from prorank_jax.paths import as_path, is_remote

logger = logging.getLogger(__name__)

Run = Mapping[str, Mapping[str, float]]


@dataclass(frozen=True)
class PrepareOptions:
    """How examples are drawn (see the module docstring); every field is a CLI option."""

    num_negatives: int = 7  # stage 2: negatives per group (the configs' data.num_negatives)
    pair_negatives: int = 3  # stage 1: unjudged negatives added per query (hard first, then random)
    negatives_per_positive: float | None = None  # stage 1 label balance: at most this many label-0 pairs per positive
    depth: int = 100  # hard negatives come from the run's top `depth`
    seed: int = 0
    max_queries: int | None = None  # a seeded sample of the split's judged queries

    def __post_init__(self):
        for name in ("num_negatives", "pair_negatives", "depth"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.negatives_per_positive is not None and self.negatives_per_positive < 0:
            raise ValueError(f"negatives_per_positive must be >= 0, got {self.negatives_per_positive}")
        if self.max_queries is not None and self.max_queries <= 0:
            raise ValueError(f"max_queries must be positive, got {self.max_queries}")


@dataclass
class Prepared:
    pairs: list[PairExample]
    groups: list[GroupExample]
    removed: dict[str, int] = field(default_factory=dict)  # reason -> count
    settings: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------
# Overlap guard


class QueryOverlapError(ValueError):
    """Training queries appear in an evaluation split."""


def normalize_query(text: str) -> str:
    """Case- and whitespace-insensitive form under which two queries count as the same."""
    return " ".join(text.lower().split())


def parse_split_spec(spec: str) -> tuple[Path, str]:
    """``DIR:SPLIT`` -> (DIR, SPLIT); the split is what follows the last colon."""
    folder, sep, split = spec.rpartition(":")
    if not sep or not folder or not split:
        raise ValueError(f"expected DIR:SPLIT (a BEIR folder and a split, e.g. data/scifact:test), got {spec!r}")
    return as_path(folder), split


def query_overlap(
    train: Mapping[str, str], evaluation: Mapping[str, str], *, compare_ids: bool
) -> list[tuple[str, str, str]]:
    """(training id, evaluation id, text) of every training query found in ``evaluation``."""
    by_text = defaultdict(list)
    for qid, text in evaluation.items():
        by_text[normalize_query(text)].append(qid)
    found = []
    for qid, text in train.items():
        matches = set(by_text.get(normalize_query(text), ()))
        if compare_ids and qid in evaluation:
            matches.add(qid)
        found.extend((qid, eval_id, text) for eval_id in sorted(matches))
    return sorted(found)


def _same_folder(a, b) -> bool:
    if is_remote(a) or is_remote(b):
        return str(a).rstrip("/") == str(b).rstrip("/")
    return Path(a).resolve() == Path(b).resolve()


def check_no_overlap(
    train: Mapping[str, str], excluded: Sequence[tuple[Path, str]], *, source_folder: Path | None = None
) -> None:
    """Raise QueryOverlapError naming every training query that an excluded split also holds."""
    problems = []
    for folder, split in excluded:
        evaluation = load_beir(folder, split).queries
        same_folder = source_folder is not None and _same_folder(folder, source_folder)
        for train_id, eval_id, text in query_overlap(train, evaluation, compare_ids=same_folder):
            problems.append(f"  training query {train_id!r} = {folder}:{split} query {eval_id!r}: {text!r}")
    if problems:
        shown = "\n".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise QueryOverlapError(
            f"refusing to write training data: {len(problems)} training queries appear in an evaluation split\n{shown}"
        )


# ---------------------------------------------------------------------------
# Examples


def check_judged(data: BeirData, qrels_path: os.PathLike | str) -> None:
    """A split to train on needs judged-relevant queries; say which file has none."""
    if not data.qrels:
        raise DataError(qrels_path, "no judgments in this split (only the header?); nothing to train on")
    if not any(grade > 0 for docs in data.qrels.values() for grade in docs.values()):
        raise DataError(qrels_path, "no judgment in this split has a grade > 0; no positives to train on")


def sample_queries(data: BeirData, max_queries: int | None, seed: int) -> BeirData:
    """The split cut to a seeded sample of ``max_queries`` judged queries (all when None)."""
    if max_queries is None or max_queries >= len(data.qrels):
        return data
    keep = sorted(random.Random(f"sample:{seed}").sample(sorted(data.qrels), max_queries))
    return BeirData(corpus=data.corpus, queries={q: data.queries[q] for q in keep},
                    qrels={q: data.qrels[q] for q in keep})


def balance_pairs(pairs: Sequence[PairExample], negatives_per_positive: float | None) -> list[PairExample]:
    """Per query, all positives and at most round(ratio x positives) negatives, in their given order."""
    if negatives_per_positive is None:
        return list(pairs)
    positives = Counter(p.query_id for p in pairs if p.label > 0)
    kept_negatives: Counter = Counter()
    out = []
    for p in pairs:
        if p.label > 0:
            out.append(p)
        elif kept_negatives[p.query_id] < round(negatives_per_positive * positives[p.query_id]):
            kept_negatives[p.query_id] += 1
            out.append(p)
    return out


def dedupe_pairs(pairs: Sequence[PairExample]) -> tuple[list[PairExample], int]:
    """Pairs with a (query, document) text seen before removed; (kept, removed count)."""
    seen, out = set(), []
    for p in pairs:
        key = (p.query, p.document)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out, len(pairs) - len(out)


def dedupe_groups(groups: Sequence[GroupExample]) -> tuple[list[GroupExample], int, int]:
    """(kept, exact duplicates removed, groups removed because a negative's text is the positive's)."""
    seen, out, duplicates, contradictory = set(), [], 0, 0
    for g in groups:
        key = (g.query, g.documents)
        if key in seen:
            duplicates += 1
            continue
        seen.add(key)
        if g.documents[0] in g.documents[1:]:
            contradictory += 1
            continue
        out.append(g)
    return out, duplicates, contradictory


def _finish(pairs: list[PairExample], groups: list[GroupExample], options: PrepareOptions, settings: dict) -> Prepared:
    pairs, pairs_dup = dedupe_pairs(pairs)
    before = len(pairs)
    pairs = balance_pairs(pairs, options.negatives_per_positive)
    groups, groups_dup, groups_bad = dedupe_groups(groups)
    removed = {
        "duplicate_pairs": pairs_dup,
        "pair_negatives_over_label_balance": before - len(pairs),
        "duplicate_groups": groups_dup,
        "groups_with_positive_text_as_negative": groups_bad,
    }
    for reason, count in removed.items():
        if count:
            logger.info("prepare-data removed %d: %s", count, reason)
    return Prepared(pairs=pairs, groups=groups, removed=removed, settings={**asdict(options), **settings})


def prepare_beir(data: BeirData, *, run: Run | None, options: PrepareOptions, settings: Mapping | None = None) -> Prepared:
    """Stage-1 pairs and stage-2 groups of one BEIR split (hard negatives from ``run`` when given).

    ``settings`` (e.g. the source and the first stage that made ``run``) go into the summary.
    """
    data = sample_queries(data, options.max_queries, options.seed)
    pair_negatives = options.pair_negatives
    if options.negatives_per_positive is not None:
        # enough unjudged negatives that the balance can be met, then trimmed to it
        most_positives = max(sum(g > 0 for g in docs.values()) for docs in data.qrels.values())
        pair_negatives = max(pair_negatives, math.ceil(options.negatives_per_positive * most_positives))
    pairs = pair_examples(data, negatives_per_query=pair_negatives, seed=options.seed, run=run,
                          hard_negative_depth=options.depth)
    groups = group_examples(data, num_negatives=options.num_negatives, seed=options.seed, run=run,
                            hard_negative_depth=options.depth)
    return _finish(pairs, groups, options, dict(settings or {}))


def pairs_from_groups(groups: Sequence[GroupExample], options: PrepareOptions) -> list[PairExample]:
    """Stage-1 pairs cut from groups: the positive, then its first negatives (``pair_negatives``,
    or as many as the label balance allows), each with its group label."""
    pairs = []
    for g in groups:
        take = options.pair_negatives
        if options.negatives_per_positive is not None:
            take = math.ceil(options.negatives_per_positive)
        for i in range(min(len(g.documents), 1 + take)):
            pairs.append(PairExample(g.query_id, g.doc_ids[i], g.query, g.documents[i], g.labels[i]))
    return pairs


def prepare_groups(groups: Sequence[GroupExample], *, options: PrepareOptions, settings: Mapping | None = None) -> Prepared:
    """Both stages from already formed groups (an HF source): their own negatives, no run."""
    groups = list(groups)
    if options.max_queries is not None:
        queries = sorted({g.query for g in groups})
        if options.max_queries < len(queries):
            keep = set(random.Random(f"sample:{options.seed}").sample(queries, options.max_queries))
            groups = [g for g in groups if g.query in keep]
    return _finish(pairs_from_groups(groups, options), groups, options, dict(settings or {}))


# ---------------------------------------------------------------------------
# Summary and files


def _spread(values: Sequence[int]) -> dict:
    if not values:
        return {"mean": 0.0, "min": 0, "max": 0}
    return {"mean": round(sum(values) / len(values), 4), "min": min(values), "max": max(values)}


def summarize(prepared: Prepared) -> dict:
    """Counts of what the files hold (queries, positives, negatives per query, pairs per label)."""
    pairs, groups = prepared.pairs, prepared.groups
    pair_queries = defaultdict(lambda: [0, 0])
    for p in pairs:
        pair_queries[p.query_id or p.query][p.label > 0] += 1
    group_queries = defaultdict(int)
    for g in groups:
        group_queries[g.query_id or g.query] += 1
    return {
        "stage1": {
            "pairs": len(pairs),
            "queries": len(pair_queries),
            "positives": sum(pos for _, pos in pair_queries.values()),
            "negatives_per_query": _spread([neg for neg, _ in pair_queries.values()]),
            "pairs_per_label": {str(k): v for k, v in sorted(Counter(p.label for p in pairs).items())},
        },
        "stage2": {
            "groups": len(groups),
            "queries": len(group_queries),
            "positives": len(groups),
            "negatives_per_group": _spread([len(g.documents) - 1 for g in groups]),
            "groups_per_query": _spread(list(group_queries.values())),
            "labels": {str(k): v for k, v in sorted(Counter(x for g in groups for x in g.labels).items())},
        },
        "removed": dict(prepared.removed),
        "settings": prepared.settings,
    }


def output_paths(out_dir: str | os.PathLike, name: str) -> dict[str, Path]:
    """Where the files of split ``name`` go: the configs read {out}/stage1/NAME_pairs.jsonl and
    {out}/stage2/NAME_groups.jsonl; the summary sits beside both stage folders."""
    out = as_path(out_dir)
    return {"pairs": out / "stage1" / f"{name}_pairs.jsonl", "groups": out / "stage2" / f"{name}_groups.jsonl",
            "summary": out / f"{name}_summary.json"}


def write_prepared(prepared: Prepared, out_dir: str | os.PathLike, name: str) -> tuple[dict[str, Path], dict]:
    """Write both files and the summary (each atomically); returns (paths, summary)."""
    if not prepared.pairs or not prepared.groups:
        raise ValueError(f"nothing to write: {len(prepared.pairs)} pairs and {len(prepared.groups)} groups")
    paths = output_paths(out_dir, name)
    for path in paths.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    write_pair_jsonl(paths["pairs"], prepared.pairs)
    write_group_jsonl(paths["groups"], prepared.groups)
    summary = summarize(prepared)
    summary["files"] = {k: os.fspath(v) for k, v in paths.items() if k != "summary"}
    with atomic_text_writer(paths["summary"]) as f:  # one object in a bucket; written last
        f.write(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    return paths, summary


def format_summary(summary: Mapping) -> str:
    s1, s2 = summary["stage1"], summary["stage2"]
    labels = ", ".join(f"label {k}: {v}" for k, v in s1["pairs_per_label"].items())
    lines = [
        f"stage 1: {s1['pairs']} pairs over {s1['queries']} queries, {s1['positives']} positives, "
        f"negatives per query {s1['negatives_per_query']['mean']} (min {s1['negatives_per_query']['min']}, "
        f"max {s1['negatives_per_query']['max']}); {labels}",
        f"stage 2: {s2['groups']} groups over {s2['queries']} queries, negatives per group "
        f"{s2['negatives_per_group']['mean']} (min {s2['negatives_per_group']['min']}, "
        f"max {s2['negatives_per_group']['max']})",
    ]
    removed = {k: v for k, v in summary["removed"].items() if v}
    lines.append("removed: " + (", ".join(f"{k} {v}" for k, v in removed.items()) if removed else "nothing"))
    return "\n".join(lines)


__all__ = [
    "PrepareOptions",
    "Prepared",
    "QueryOverlapError",
    "check_judged",
    "check_no_overlap",
    "format_summary",
    "parse_split_spec",
    "prepare_beir",
    "prepare_groups",
    "query_overlap",
    "summarize",
    "write_prepared",
]
