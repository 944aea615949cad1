"""The summary of bench/real_model_run.sh OUT_DIR as Markdown, from the files the run wrote.

    python -m bench.real_model_summary OUT_DIR

Reads evaluate's per-model metrics.json under OUT_DIR/eval/cranfield/, the stage-1 run's metrics.jsonl (the greedy
evaluation on held-out pairs before the first step and after the last, and the sampled
reward / format rate of the first and last logged steps), the stage-2 run's metrics.jsonl
(the loss of the first and last logged steps) and OUT_DIR/times.tsv (the minutes of each step).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


MODELS = (("zero-shot", "zero-shot SmolLM2-135M-Instruct"), ("stage1", "stage 1 (GRPO)"), ("stage2", "stage 2 (score)"))
MEASURES = ("nDCG@10", "RR@10", "AP", "R@10")


def ranking_section(eval_dir: Path) -> list[str]:
    """BM25 and each model's reranking of its top 10, from evaluate's metrics.json files."""
    folders = {f.name: f for f in eval_dir.iterdir() if (f / "metrics.json").exists()}
    reports = {}
    for suffix, label in MODELS:
        match = [f for name, f in folders.items() if name.endswith(f"_{suffix}") or name == suffix]
        reports[label] = json.loads((match[0] / "metrics.json").read_text())
    first = next(iter(reports.values()))
    lines = [f"| system ({first['n_queries']} test queries) | " + " | ".join(MEASURES) + " |",
             "|---|" + "---|" * len(MEASURES)]
    rows = [("BM25 (stemmed)", first["metrics"]["first-stage"])]
    rows += [(f"BM25 + {label}", report["metrics"]["reranked"]) for label, report in reports.items()]
    lines += [f"| {name} | " + " | ".join(f"{m[k]:.4f}" for k in MEASURES) + " |" for name, m in rows]
    return lines


def stage1_section(rows: list[dict]) -> list[str]:
    evals = [r for r in rows if "eval/format_rate" in r]
    train = [r for r in rows if "reward" in r]
    lines = [f"Stage 1 (GRPO), greedy answers on {int(evals[0]['eval/pairs'])} held-out pairs "
             f"(test queries, never trained on):", "",
             "| model | answer in format | accuracy | score accuracy | score AUC |", "|---|---|---|---|---|"]
    for row, name in ((evals[0], "zero-shot (before stage 1)"), (evals[-1], f"after stage 1 (step {evals[-1]['step']})")):
        lines.append(f"| {name} | {row['eval/format_rate']:.3f} | {row['eval/accuracy']:.3f} | "
                     f"{row['eval/score_accuracy']:.3f} | {row['eval/score_auc']:.3f} |")
    lines += ["", f"(majority-class rate {evals[0]['eval/majority_rate']:.3f})"]
    if train:
        first, last = train[0], train[-1]
        lines += ["", "Sampled during training (step: reward, format rate, accuracy, KL): " + "; ".join(
            f"{r['step']}: {r['reward']:.3f}, {r['format_rate']:.3f}, {r['accuracy']:.3f}, {r['kl']:.4f}"
            for r in (first, last))]
    return lines


def stage2_section(rows: list[dict]) -> list[str]:
    train = [r for r in rows if "loss" in r]
    if not train:
        return []
    first, last = train[0], train[-1]
    return ["", f"Stage 2 training loss (listwise): step {first['step']} {first['loss']:.4f} -> "
                f"step {last['step']} {last['loss']:.4f}"]


def times_section(path: Path) -> list[str]:
    rows = [line.split("\t") for line in path.read_text().splitlines() if line.strip()]
    total_wall = sum(int(r[1]) for r in rows)
    total_cpu = sum(int(r[2]) for r in rows)
    lines = ["", "| step | wall min | CPU min |", "|---|---|---|"]
    lines += [f"| {name} | {int(wall) / 60:.1f} | {int(cpu) / 60:.1f} |" for name, wall, cpu in rows]
    lines.append(f"| total | {total_wall / 60:.1f} | {total_cpu / 60:.1f} |")
    return lines


def summary(out: Path) -> str:
    lines = ["# SmolLM2-135M-Instruct on Cranfield: BM25 top 10 reranked (held-out test queries)", ""]
    lines += ranking_section(out / "eval" / "cranfield")
    lines += [""] + stage1_section(read_metrics(out / "stage1" / "metrics.jsonl"))
    lines += stage2_section(read_metrics(out / "stage2" / "metrics.jsonl"))
    lines += times_section(out / "times.tsv")
    return "\n".join(lines)


if __name__ == "__main__":
    print(summary(Path(sys.argv[1])))
