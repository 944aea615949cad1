"""Ranking metrics with trec_eval semantics, computed through ir_measures.

Conventions (all checked against pytrec_eval, the trec_eval oracle, in the tests):

* Qrels: {query_id: {doc_id: int relevance}}; a doc counts as relevant when its
  relevance is >= 1 (trec_eval's default level). nDCG uses the relevance as the gain.
* Run: {query_id: {doc_id: score}}, higher is better; scores must be finite.
* Ties. trec_eval orders a query's documents by score descending, then by doc id
  DESCENDING (strcmp in reverse). ir_measures does not keep that order for every measure:
  "nDCG@10", "AP", "R@100" and "RR" go to pytrec_eval (trec_eval's order), but "RR@10" goes
  to its msmarco provider, which sorts tied documents by doc id ASCENDING, so on a tie
  "RR@10" and "RR" could disagree on the same run. `evaluate_run` therefore replaces each
  query's scores by strictly decreasing ranks in trec_eval's order before calling
  ir_measures: every measure then sees trec_eval's ranking, and RR@10 equals trec_eval's
  recip_rank on the run cut to its top 10 in that order.
* Queries on one side only. A query with no judgments (absent from qrels or with an empty
  dict) has no defined value: it is left out and reported with a warning. A judged query
  missing from the run (or with an empty dict) is handled by `missing_queries`:
    "zero" (default): it scores 0 on every measure and counts in the mean; this is
      ir_measures' own behaviour and trec_eval's `-c` option, and the honest choice when a
      system failed to return anything for a query.
    "skip": it is left out of the mean, as plain trec_eval (without -c) and pytrec_eval do.
  Queries judged but with no relevant document are kept and score 0 (as in trec_eval).
  An empty run dict counts as absent, as in a trec_eval run file (which cannot express an
  empty ranking); pytrec_eval, given the dict directly, would instead evaluate it as 0.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import ir_measures

from prorank_jax.data.trec import ranked_doc_ids
from prorank_jax.files import atomic_text_writer
from prorank_jax.paths import as_path

logger = logging.getLogger(__name__)

DEFAULT_MEASURES = ("nDCG@10", "RR@10", "AP", "R@100")
MISSING_QUERY_MODES = ("zero", "skip")

Qrels = Mapping[str, Mapping[str, int]]
Run = Mapping[str, Mapping[str, float]]


def validate_qrels(qrels: Qrels) -> None:
    if not isinstance(qrels, Mapping):
        raise TypeError(f"qrels must be a mapping query_id -> {{doc_id: relevance}}, got {type(qrels).__name__}")
    for qid, docs in qrels.items():
        if not isinstance(qid, str) or not isinstance(docs, Mapping):
            raise TypeError(f"qrels[{qid!r}] must map a str query id to a dict doc_id -> int relevance")
        for did, rel in docs.items():
            if not isinstance(did, str):
                raise TypeError(f"qrels[{qid!r}] has a non-str doc id {did!r}")
            if isinstance(rel, bool) or not isinstance(rel, numbers.Integral):
                raise TypeError(f"qrels[{qid!r}][{did!r}] = {rel!r}: relevance must be an int")


def validate_run(run: Run) -> None:
    if not isinstance(run, Mapping):
        raise TypeError(f"run must be a mapping query_id -> {{doc_id: score}}, got {type(run).__name__}")
    for qid, docs in run.items():
        if not isinstance(qid, str) or not isinstance(docs, Mapping):
            raise TypeError(f"run[{qid!r}] must map a str query id to a dict doc_id -> float score")
        for did, score in docs.items():
            if not isinstance(did, str):
                raise TypeError(f"run[{qid!r}] has a non-str doc id {did!r}")
            if isinstance(score, bool) or not isinstance(score, numbers.Real) or not math.isfinite(score):
                raise ValueError(f"run[{qid!r}][{did!r}] = {score!r}: scores must be finite numbers")


def _parse_measures(measures: Iterable[str]) -> dict[str, Any]:
    names = list(measures)
    if not names:
        raise ValueError("no measures requested")
    parsed = {}
    for name in names:
        try:
            parsed[name] = ir_measures.parse_measure(name)
        except Exception as err:  # ir_measures raises several types for bad names
            raise ValueError(f"unknown measure {name!r} (ir_measures syntax, e.g. 'nDCG@10', 'RR@10', 'AP')") from err
        # evaluate_run averages per-query values; summed measures (NumRet, ...) would be wrong.
        if not isinstance(parsed[name].aggregator(), ir_measures.MeanAgg):
            raise ValueError(f"measure {name!r} is not averaged over queries; evaluate_run supports mean measures only")
    return parsed


def break_ties(run: Run) -> dict[str, dict[str, float]]:
    """Same ranking as trec_eval reads from `run`, with no ties: scores become n, n-1, ..., 1."""
    out = {}
    for qid, docs in run.items():
        order = ranked_doc_ids(docs)
        out[qid] = {did: float(len(order) - i) for i, did in enumerate(order)}
    return out


def _preview(ids: Iterable[str], n: int = 5) -> str:
    ids = sorted(ids)
    more = f" and {len(ids) - n} more" if len(ids) > n else ""
    return ", ".join(repr(i) for i in ids[:n]) + more


def evaluate_run(
    qrels: Qrels,
    run: Run,
    measures: Sequence[str] = DEFAULT_MEASURES,
    *,
    missing_queries: str = "zero",
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Score `run` against `qrels`: (mean per measure, {query_id: {measure: value}}).

    Keys are the measure names as given. See the module docstring for ties and for
    queries present on one side only (`missing_queries` = "zero" or "skip").
    """
    if missing_queries not in MISSING_QUERY_MODES:
        raise ValueError(f"missing_queries must be one of {MISSING_QUERY_MODES}, got {missing_queries!r}")
    validate_qrels(qrels)
    validate_run(run)
    parsed = _parse_measures(measures)

    judged = {qid for qid, docs in qrels.items() if docs}
    ranked = {qid for qid, docs in run.items() if docs}
    unjudged = ranked - judged
    unranked = judged - ranked
    if unjudged:
        logger.warning("%d run queries have no judgments and are not evaluated: %s", len(unjudged), _preview(unjudged))
    if unranked:
        action = "score 0" if missing_queries == "zero" else "are left out of the mean"
        logger.warning("%d judged queries have no run entries and %s: %s", len(unranked), action, _preview(unranked))

    evaluated = sorted(judged if missing_queries == "zero" else judged & ranked)
    if not evaluated:
        raise ValueError(
            f"no query to evaluate: {len(judged)} judged queries, {len(ranked)} ranked queries, "
            f"{len(judged & ranked)} in both (missing_queries={missing_queries!r})"
        )
    qrels_used = {qid: {d: int(r) for d, r in qrels[qid].items()} for qid in evaluated}
    run_used = break_ties({qid: run[qid] for qid in evaluated if qid in ranked})

    values: dict[str, dict[Any, float]] = {qid: {} for qid in evaluated}
    for metric in ir_measures.iter_calc(list(set(parsed.values())), qrels_used, run_used):
        values[metric.query_id][metric.measure] = float(metric.value)
    # ir_measures already gives judged-but-unranked queries the measure's default (0);
    # the explicit fallback keeps that rule visible and independent of the provider.
    per_query = {
        qid: {name: values[qid].get(m, float(m.DEFAULT)) for name, m in parsed.items()} for qid in evaluated
    }
    aggregate = {name: math.fsum(per_query[q][name] for q in evaluated) / len(evaluated) for name in parsed}
    return aggregate, per_query


def format_metrics_table(rows: Mapping[str, Mapping[str, float]], digits: int = 4) -> str:
    """Plain-text table, one row per system (e.g. "bm25", "reranked"), one column per measure.

    Columns follow first appearance across rows; a measure a row lacks shows as "-".
    """
    columns: list[str] = []
    for values in rows.values():
        columns += [m for m in values if m not in columns]
    header = ["system", *columns]
    body = [
        [name, *(f"{values[m]:.{digits}f}" if m in values else "-" for m in columns)] for name, values in rows.items()
    ]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]
        return "  ".join([first, *rest]).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in body)])


def write_metrics_json(path: str | os.PathLike, metrics: Mapping[str, Any]) -> Path:
    """Write a (possibly nested) mapping of metrics as JSON; NaN/inf are rejected, not written."""
    try:
        text = json.dumps(metrics, indent=2, sort_keys=True, allow_nan=False)
    except ValueError as err:
        raise ValueError(f"{path}: metrics contain a non-finite value ({err})") from err
    return _write_text(path, text + "\n")


def write_per_query_tsv(
    path: str | os.PathLike, per_query: Mapping[str, Mapping[str, float]], measures: Sequence[str] | None = None
) -> Path:
    """One row per query (sorted by id), one column per measure, full float precision."""
    if measures is None:
        measures = []
        for values in per_query.values():
            measures += [m for m in values if m not in measures]
    lines = ["\t".join(["query_id", *measures])]
    for qid in sorted(per_query):
        if any(c in qid for c in "\t\n\r"):
            raise ValueError(f"{path}: query id {qid!r} contains a tab or newline and cannot be written as TSV")
        missing = [m for m in measures if m not in per_query[qid]]
        if missing:
            raise ValueError(f"{path}: query {qid!r} has no value for {missing}")
        lines.append("\t".join([qid, *(repr(float(per_query[qid][m])) for m in measures)]))
    return _write_text(path, "\n".join(lines) + "\n")


def _write_text(path: str | os.PathLike, text: str) -> Path:
    path = as_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_text_writer(path) as f:
        f.write(text)
    return path
