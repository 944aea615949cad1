"""Rerank several BEIR datasets and report them in one table, as BEIR papers and model cards do.

    suite = evaluate_suite({"prorank": reranker}, ["data/scifact", "data/nfcorpus"], split="test")
    print(suite.markdown())

A loop over datasets calling the single-dataset `scoring.evaluate.evaluate`, so each row is
exactly what a single-dataset run gives. Per dataset the first stage runs once (BM25 with
`bm25` settings, stemmed English by default) and every reranker reranks the same top
`top_k`. The table has one row per dataset and an average row (the unweighted mean of the
rows, BEIR's convention): first-stage and reranked nDCG@10 and RR@10, and the first stage's
R@top_k (reranking only permutes the candidates, so it is every system's). It also states
the candidates' depth: queries whose first stage returned fewer than top_k documents, and
pairs whose query or document the reranker's prompt truncated.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from prorank_jax.data import load_beir
from prorank_jax.files import atomic_text_writer
from prorank_jax.paths import as_path, is_remote
from scoring.evaluate import RERANKED, EvaluationReport, evaluate, first_stage_run
from scoring.first_stage import BM25Settings

logger = logging.getLogger(__name__)

FIRST_STAGE = "bm25"
TABLE_MEASURES = ("nDCG@10", "RR@10")


@dataclass(frozen=True)
class DatasetResult:
    name: str
    folder: str
    reports: dict[str, EvaluationReport]  # reranker label -> report
    short_queries: int  # queries with fewer than top_k first-stage candidates
    truncated: dict[str, dict[str, int]]  # reranker label -> {"queries": n, "documents": n}

    def row(self, top_k: int) -> dict[str, float]:
        """Column -> value: first stage and each reranker on TABLE_MEASURES, then R@top_k."""
        first = next(iter(self.reports.values()))
        row = {}
        for measure in TABLE_MEASURES:
            row[f"{FIRST_STAGE} {measure}"] = first.metrics[first.first_stage][measure]
            for label, report in self.reports.items():
                row[f"{label} {measure}"] = report.metrics[RERANKED][measure]
        row[f"R@{top_k}"] = first.metrics[first.first_stage][f"R@{top_k}"]
        return row


@dataclass
class SuiteReport:
    split: str
    top_k: int
    first_stage: dict
    datasets: list[DatasetResult]
    files: dict[str, Path] = field(default_factory=dict)

    def rows(self) -> dict[str, dict[str, float]]:
        rows = {d.name: d.row(self.top_k) for d in self.datasets}
        columns = list(next(iter(rows.values())))
        rows["average"] = {c: math.fsum(r[c] for r in rows.values()) / len(self.datasets) for c in columns}
        return rows

    def markdown(self, digits: int = 4) -> str:
        rows = self.rows()
        columns = list(rows["average"])
        counts = {d.name: (d.reports[next(iter(d.reports))].n_queries, d.short_queries) for d in self.datasets}
        header = ["dataset", "queries", *columns]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for name, row in rows.items():
            queries = str(counts[name][0]) if name in counts else str(sum(q for q, _ in counts.values()))
            lines.append("| " + " | ".join([name, queries, *(f"{row[c]:.{digits}f}" for c in columns)]) + " |")
        return "\n".join(lines)

    def notes(self) -> str:
        """First stage, depth and truncation, one line each."""
        lines = [f"first stage: {self.first_stage.get('describe', self.first_stage)}; "
                 f"depth: top {self.top_k} reranked per query"]
        for d in self.datasets:
            cut = "; ".join(f"{label}: {t['documents']} pairs with the document truncated, {t['queries']} with the query"
                            for label, t in d.truncated.items())
            report = next(iter(d.reports.values()))
            lines.append(f"{d.name}: {report.n_queries} queries, {report.n_pairs} pairs; "
                         f"{d.short_queries} queries with fewer than {self.top_k} candidates; {cut}")
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {
            "split": self.split,
            "top_k": self.top_k,
            "first_stage": self.first_stage,
            "rerankers": list(self.datasets[0].reports) if self.datasets else [],
            "rows": self.rows(),
            "datasets": {
                d.name: {"folder": d.folder, "n_queries": next(iter(d.reports.values())).n_queries,
                         "n_pairs": next(iter(d.reports.values())).n_pairs, "short_queries": d.short_queries,
                         "truncated": d.truncated}
                for d in self.datasets
            },
        }


def dataset_names(folders: Sequence[str | os.PathLike]) -> list[str]:
    """Each folder's base name; a repeated one gets its parent prefixed until the names differ."""
    paths = [as_path(f) if is_remote(f) else Path(f).resolve() for f in folders]
    if len(set(paths)) != len(paths):
        raise ValueError(f"a dataset folder is given twice: {[os.fspath(f) for f in folders]}")
    depth = 1
    while True:
        names = ["/".join(p.parts[-depth:]) for p in paths]
        if len(set(names)) == len(names):
            return names
        depth += 1


def label_dirs(labels: Sequence[str]) -> dict[str, str]:
    """A folder name per reranker label (labels are often model paths): unsafe characters become
    "_", and a clash gets the label's position appended."""
    out: dict[str, str] = {}
    for i, label in enumerate(labels):
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_.") or "model"
        out[label] = name if name not in out.values() else f"{name}_{i}"
    return out


def truncation(reranker, queries: list[str], documents: list[str], instruction: str | None) -> dict[str, int]:
    """Pairs whose query / document the reranker's prompt cuts (counted on the prompts it builds)."""
    prompt = getattr(reranker, "prompt", None)
    if prompt is None:
        return {"queries": 0, "documents": 0}
    encoded = prompt.encode_batch(queries, documents, instruction=instruction)
    return {"queries": sum(e.query_truncated for e in encoded), "documents": sum(e.document_truncated for e in encoded)}


def evaluate_suite(
    rerankers: Mapping[str, object],
    folders: Sequence[str | os.PathLike],
    split: str = "test",
    *,
    top_k: int = 100,
    bm25: BM25Settings | None = None,
    instruction: str | None = None,
    batch_size: int | None = None,
    out_dir: str | os.PathLike | None = None,
    on_dataset: Callable[[int, str, int], None] | None = None,
) -> SuiteReport:
    """Rerank each folder's `split` with every reranker (see the module docstring).

    rerankers: label -> reranker (anything `evaluate` accepts); two labels give the side by
    side comparison. on_dataset(index, name, pairs) is called before each dataset (the CLI
    prints a header above that dataset's progress bar). With out_dir, each dataset and
    reranker gets evaluate's files under out_dir/NAME/LABEL/ (LABEL made a safe folder name,
    see label_dirs), and suite.md / suite.json
    are written at the top.
    """
    if not rerankers:
        raise ValueError("evaluate_suite needs at least one reranker")
    if not folders:
        raise ValueError("evaluate_suite needs at least one dataset folder")
    bm25 = bm25 or BM25Settings()
    names = dataset_names(folders)
    data_sets = [load_beir(folder, split) for folder in folders]  # all data errors before any model runs
    results = []
    sub_dirs = label_dirs(list(rerankers))
    for index, (name, folder, data) in enumerate(zip(names, folders, data_sets)):
        _, run = first_stage_run(data, None, top_k, bm25)  # once: every reranker sees the same candidates
        reports, truncated = {}, {}
        for label, reranker in rerankers.items():
            sub_dir = None if out_dir is None else as_path(out_dir) / name / sub_dirs[label]
            if on_dataset is not None and label == next(iter(rerankers)):
                on_dataset(index, name, sum(min(len(docs), top_k) for q, docs in run.items() if q in data.queries))
            reports[label] = evaluate(reranker, data, split, run=run, top_k=top_k, out_dir=sub_dir,
                                      instruction=instruction, batch_size=batch_size)
            pairs = [(q, d) for q, docs in reports[label].runs[RERANKED].items() for d in docs]
            truncated[label] = truncation(reranker, [data.queries[q] for q, _ in pairs],
                                          [data.corpus[d] for _, d in pairs], instruction)
        first = next(iter(reports.values()))
        short = sum(len(docs) < top_k for docs in first.runs[RERANKED].values())
        results.append(DatasetResult(name, os.fspath(folder), reports, short, truncated))
        logger.info("%s: %s", name, results[-1].row(top_k))
    suite = SuiteReport(split=split, top_k=top_k, first_stage={**bm25.as_dict(), "describe": bm25.describe()},
                        datasets=results)
    if out_dir is not None:
        suite.files.update(write_suite(suite, as_path(out_dir)))
    return suite


def write_suite(suite: SuiteReport, out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"markdown": out_dir / "suite.md", "json": out_dir / "suite.json"}
    with atomic_text_writer(files["markdown"]) as f:
        f.write(suite.markdown() + "\n\n" + suite.notes() + "\n")
    with atomic_text_writer(files["json"]) as f:
        f.write(json.dumps(suite.to_json(), indent=2, allow_nan=False) + "\n")
    return files


__all__ = ["DatasetResult", "SuiteReport", "dataset_names", "evaluate_suite", "label_dirs", "write_suite"]
