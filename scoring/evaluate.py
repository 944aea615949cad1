"""Rerank a first-stage run on a BEIR split and compare both runs side by side.

    report = evaluate(reranker, "data/scifact", split="test", top_k=100, out_dir="runs/eval")
    print(report.table())

Choices (the usual reranking-evaluation protocol, made explicit):
  * First stage: a TREC run file (document ids checked against the corpus; an unknown id
    is a DataError naming the file and line), a {query_id: {doc_id: score}} dict, or, when
    no run is given, BM25 top_k (scoring.first_stage.BM25Settings; stemmed English by
    default), whose settings the report and metrics.json carry.
  * Candidates: each query's first-stage top_k in trec_eval order (score descending, ties
    by doc id descending), as scoring.first_stage.rerank_candidates gives them.
  * The reranked run holds exactly those top_k candidates with the reranker's scores.
    Documents below top_k are NOT appended under them: the written run is what the
    reranker ranked, which is how BEIR / MTEB rerank evaluations report it.
  * Both systems are scored on their top_k only: the first-stage row is the first-stage
    run cut to the same candidates, so R@top_k is identical in both rows (reranking only
    permutes) and every difference comes from the order.
  * Measures: nDCG@10, RR@10, AP and R@top_k through scoring.metrics.evaluate_run
    (trec_eval semantics; judged queries missing from a run score 0).
  * Run queries that the split does not judge (or whose text is not in the split) are not
    reranked; they are counted in a warning. Queries whose first stage returned nothing
    stay empty in both runs and score 0 (evaluate_run warns about them).
  * All (query, document) pairs go to one Reranker.predict call, so batches span queries
    and only the very last batch is padded. On several processes (jax.distributed) the
    queries are dealt out over the processes (sorted query ids, round robin), each process
    scores its queries' pairs on its own devices, and the scores are gathered: every
    process computes the same metrics, and only process 0 writes the files.

Files written to out_dir (each atomically): reranked.run and first_stage.run (TREC),
metrics.json (both systems' means plus the settings), per_query.tsv (one row per query,
"system:measure" columns).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from prorank_jax.data import BeirData, load_beir, read_run, write_run
from prorank_jax.paths import as_path
from scoring.first_stage import BM25Settings, rerank_candidates
from scoring.metrics import (
    evaluate_run,
    format_metrics_table,
    validate_run,
    write_metrics_json,
    write_per_query_tsv,
)

logger = logging.getLogger(__name__)

RERANKED = "reranked"
Run = dict[str, dict[str, float]]


@dataclass(frozen=True)
class EvaluationReport:
    """Both systems' metrics and runs; `table()` prints them side by side."""

    first_stage: str  # "bm25" or "first-stage"
    measures: tuple[str, ...]
    metrics: dict[str, dict[str, float]]  # system -> measure -> mean
    per_query: dict[str, dict[str, dict[str, float]]]  # system -> query -> measure -> value
    runs: dict[str, Run]  # system -> run (first stage cut to top_k, reranked)
    top_k: int
    n_queries: int
    n_pairs: int
    files: dict[str, Path] = field(default_factory=dict)
    first_stage_settings: dict[str, Any] = field(default_factory=dict)  # BM25's settings, or the run file

    def table(self, digits: int = 4) -> str:
        return format_metrics_table(self.metrics, digits)


def measures_for(top_k: int) -> tuple[str, ...]:
    return ("nDCG@10", "RR@10", "AP", f"R@{top_k}")


def check_run_documents(run: Mapping[str, Mapping[str, float]], corpus: Mapping[str, str]) -> None:
    """A run given as a dict must name corpus documents only (a file is checked line by line)."""
    unknown = [(qid, did) for qid, docs in run.items() for did in docs if did not in corpus]
    if unknown:
        preview = ", ".join(f"{q!r}/{d!r}" for q, d in unknown[:5])
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise ValueError(f"run names {len(unknown)} documents that are not in the corpus (query/doc): {preview}{more}")


def first_stage_run(data: BeirData, run: Any, top_k: int, bm25: BM25Settings | None = None) -> tuple[str, Run]:
    """(system name, run) from a path, a dict, or None for BM25 top_k (default BM25Settings())."""
    if run is None:
        return "bm25", (bm25 or BM25Settings()).run(data.corpus, data.queries, top_k)
    if isinstance(run, (str, os.PathLike)):
        return "first-stage", read_run(run, corpus_ids=data.corpus)
    if isinstance(run, Mapping):
        validate_run(run)
        check_run_documents(run, data.corpus)
        return "first-stage", {qid: dict(docs) for qid, docs in run.items()}
    raise TypeError(f"run must be None (BM25), a TREC run path or a dict, got {type(run).__name__}")


def rerankable(run: Run, queries: Mapping[str, str]) -> Run:
    """The run's queries that this split has text (hence judgments) for; the rest counted in a warning."""
    dropped = sorted(q for q in run if q not in queries)
    if dropped:
        preview = ", ".join(map(repr, dropped[:5])) + (" ..." if len(dropped) > 5 else "")
        logger.warning("%d run queries are not judged in this split and are not reranked: %s", len(dropped), preview)
    return {q: docs for q, docs in run.items() if q in queries}


def candidate_pairs(candidates: Mapping[str, list[str]]) -> list[tuple[str, str]]:
    """(query id, doc id) pairs in a fixed order: queries sorted, candidates in rank order."""
    return [(qid, did) for qid in sorted(candidates) for did in candidates[qid]]


def runs_from_scores(pairs: list[tuple[str, str]], scores, candidates: Mapping[str, list[str]]) -> Run:
    run: Run = {qid: {} for qid in candidates}
    for (qid, did), score in zip(pairs, scores, strict=True):
        run[qid][did] = float(score)
    return run


def cut_run(run: Run, candidates: Mapping[str, list[str]]) -> Run:
    return {qid: {did: run[qid][did] for did in docs} for qid, docs in candidates.items()}


def evaluate(
    reranker,
    data: BeirData | str | os.PathLike,
    split: str = "test",
    *,
    run: Any = None,
    top_k: int = 100,
    out_dir: str | os.PathLike | None = None,
    instruction: str | None = None,
    batch_size: int | None = None,
    bm25: BM25Settings | None = None,
) -> EvaluationReport:
    """Rerank the first stage's top_k per query and evaluate both (see the module docstring).

    reranker: anything with predict(queries, documents, *, instruction, batch_size), e.g.
    scoring.reranker.Reranker. data: a BeirData or a BEIR folder (then `split` is read).
    """
    if not isinstance(data, BeirData):
        data = load_beir(data, split)
    name, first = first_stage_run(data, run, top_k, bm25)
    candidates = rerank_candidates(rerankable(first, data.queries), top_k)
    pairs = candidate_pairs(candidates)
    scores = predict_over_processes(reranker, data, pairs, instruction=instruction, batch_size=batch_size)
    runs = {name: cut_run(first, candidates), RERANKED: runs_from_scores(pairs, scores, candidates)}
    measures = measures_for(top_k)
    metrics, per_query = {}, {}
    for system, system_run in runs.items():
        metrics[system], per_query[system] = evaluate_run(data.qrels, system_run, measures)
    report = EvaluationReport(
        first_stage=name,
        measures=measures,
        metrics=metrics,
        per_query=per_query,
        runs=runs,
        top_k=top_k,
        n_queries=len(candidates),
        n_pairs=len(pairs),
        first_stage_settings=first_stage_settings(run, bm25),
    )
    if out_dir is not None and _is_writer():
        report.files.update(write_report(report, as_path(out_dir), split=split, instruction=instruction))
    return report


def first_stage_settings(run: Any, bm25: BM25Settings | None) -> dict[str, Any]:
    if run is None:
        return (bm25 or BM25Settings()).as_dict()
    return {"run": os.fspath(run) if isinstance(run, (str, os.PathLike)) else "given as a dict"}


def _process_span() -> tuple[int, int]:
    import jax

    return jax.process_index(), jax.process_count()


def _is_writer() -> bool:
    return _process_span()[0] == 0


def predict_over_processes(reranker, data: BeirData, pairs: list[tuple[str, str]], *, instruction: str | None,
                           batch_size: int | None) -> np.ndarray:
    """Scores of `pairs` in their order. On several processes each scores the pairs of every
    n-th query (sorted ids), and the scores are all-gathered; one process scores all pairs."""
    index, count = _process_span()
    if count == 1:
        mine = list(range(len(pairs)))
    else:
        queries = sorted({q for q, _ in pairs})
        owner = {q: i % count for i, q in enumerate(queries)}
        mine = [i for i, (q, _) in enumerate(pairs) if owner[q] == index]
    local = reranker.predict([data.queries[pairs[i][0]] for i in mine], [data.corpus[pairs[i][1]] for i in mine],
                             instruction=instruction, batch_size=batch_size)
    local = np.asarray(local, np.float32)
    if count == 1:
        return local
    from jax.experimental import multihost_utils

    owners = np.array([owner[q] for q, _ in pairs])
    width = max(int(np.sum(owners == p)) for p in range(count))
    padded = np.zeros((width,), np.float32)
    padded[: len(local)] = local
    gathered = np.asarray(multihost_utils.process_allgather(padded))  # [processes, width]
    scores = np.zeros((len(pairs),), np.float32)
    for p in range(count):
        where = np.flatnonzero(owners == p)  # process p's pairs, in the order it scored them
        scores[where] = gathered[p, : len(where)]
    return scores


def write_report(report: EvaluationReport, out_dir: Path, *, split: str, instruction: str | None) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "reranked_run": out_dir / "reranked.run",
        "first_stage_run": out_dir / "first_stage.run",
        "metrics": out_dir / "metrics.json",
        "per_query": out_dir / "per_query.tsv",
    }
    write_run(report.runs[RERANKED], files["reranked_run"], tag="prorank")
    write_run(report.runs[report.first_stage], files["first_stage_run"], tag=report.first_stage)
    write_metrics_json(
        files["metrics"],
        {
            "split": split,
            "first_stage": report.first_stage,
            "first_stage_settings": report.first_stage_settings,
            "top_k": report.top_k,
            "instruction": instruction,
            "n_queries": report.n_queries,
            "n_pairs": report.n_pairs,
            "metrics": report.metrics,
        },
    )
    merged = {
        qid: {f"{system}:{m}": values[qid][m] for system, values in report.per_query.items() for m in report.measures}
        for qid in report.per_query[RERANKED]
    }
    columns = [f"{system}:{m}" for system in report.per_query for m in report.measures]
    write_per_query_tsv(files["per_query"], merged, columns)
    return files


__all__ = ["EvaluationReport", "evaluate", "first_stage_run", "measures_for", "predict_over_processes", "write_report"]
