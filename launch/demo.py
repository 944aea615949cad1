"""`prorank demo`: the whole method on the bundled tiny default, end to end.

Stage 1 (GRPO prompt warmup from the bundled warm start, grpo_tiny_warm.yaml), stage 2
(score learning from the stage-1 run, score_tiny_warm.yaml), evaluation on the bundled
test split (BM25 alone, then BM25 reranked by the warm start, the stage-1 model and the
stage-2 model), export of the stage-2 model as a Hugging Face folder, a summary table
and a PNG of the training curves.
Re-running with the same --out resumes the stages where they stopped.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from launch import config as cfglib
from launch.command_help import help_kwargs


def _stage_overrides(out: Path, steps: int | None) -> list[str]:
    overrides = [f"out_dir={out}"]
    if steps is not None:
        every = max(steps // 4, 1)
        overrides += [f"loop.steps={steps}", f"loop.log_every={max(steps // 20, 1)}",
                      f"loop.eval_every={every}", f"loop.save_every={every}"]
    return overrides


def plot_curves(grpo_dir: Path, score_dir: Path, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from prorank_jax.training import read_metrics

    stage1, stage2 = read_metrics(grpo_dir), read_metrics(score_dir)

    def series(rows, key):
        pts = [(r["step"], r[key]) for r in rows if key in r]
        return [p[0] for p in pts], [p[1] for p in pts]

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    axes[0].plot(*series(stage1, "reward"), label="sampled reward")
    for key in ("format_rate", "accuracy", "majority_rate"):
        axes[0].plot(*series(stage1, f"eval/{key}"), marker="o", label=f"held-out greedy {key}")
    axes[0].set_title("stage 1 (GRPO): reward and held-out answers")
    axes[1].plot(*series(stage1, "kl"), color="tab:red")
    axes[1].set_title("stage 1: KL to the reference policy")
    axes[2].plot(*series(stage2, "eval/ndcg@10"), marker="o", label="validation nDCG@10")
    axes[2].plot(*series(stage2, "accuracy"), label="train in-group accuracy")
    axes[2].set_title("stage 2 (score learning)")
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend()
    axes[2].legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


def stage_line(number: int, what: str, raw: dict) -> str:
    """The demo's one line per stage: what it trains, from which model, how many steps, where."""
    return (f"== stage {number}: {what}, {raw['loop']['steps']} steps ({Path(raw['_source']).name}) "
            f"-> {raw['out_dir']}")


def run_demo(out: Path, *, grpo_steps: int | None = None, score_steps: int | None = None, top_k: int = 20,
             show_config: bool = False) -> dict:
    from launch.train_grpo import run_grpo
    from launch.train_score import run_score
    from prorank_jax.data import bundled_data_dir, bundled_tokenizer_dir, load_beir
    from prorank_jax.pretrained import bundled_warm_start_dir
    from prorank_jax.export import export_hf
    from scoring.evaluate import RERANKED, evaluate
    from scoring.first_stage import BM25Settings
    from scoring.metrics import format_metrics_table
    from scoring.reranker import Reranker

    start = time.perf_counter()
    grpo_dir, score_dir = out / "grpo", out / "score"
    grpo_raw = cfglib.load_config("grpo_tiny_warm", _stage_overrides(grpo_dir, grpo_steps))
    print(stage_line(1, "GRPO prompt warmup of the bundled tiny model from its warm start", grpo_raw), flush=True)
    stage1 = run_grpo(grpo_raw, show_config=show_config)
    score_raw = cfglib.load_config("score_tiny_warm",
                                   _stage_overrides(score_dir, score_steps) + [f"model.path={grpo_dir}"])
    print(stage_line(2, "score learning from the stage-1 model", score_raw), flush=True)
    stage2 = run_score(score_raw, show_config=show_config)

    print(f"== evaluation: bundled test split, BM25 top {top_k} reranked", flush=True)
    data = load_beir(bundled_data_dir(), "test")
    rows: dict[str, dict[str, float]] = {}
    models = (("warm start", bundled_warm_start_dir(), bundled_tokenizer_dir()), ("stage 1 (GRPO)", grpo_dir, None),
              ("stage 2 (score)", score_dir, None))
    for name, run_dir, tokenizer in models:
        # unstemmed BM25: the analyser the README's demo table was measured with (stemmed is the default)
        report = evaluate(Reranker.from_pretrained(run_dir, tokenizer=tokenizer, show_progress=False), data,
                          top_k=top_k, out_dir=out / "eval" / run_dir.name, bm25=BM25Settings("unstemmed"))
        rows.setdefault(f"BM25 (first stage)", report.metrics[report.first_stage])
        rows[f"BM25 + {name}"] = report.metrics[RERANKED]

    print("== export: stage-2 model as a Hugging Face folder", flush=True)
    exported = export_hf(score_dir, out / "export", overwrite=True)
    plot = plot_curves(grpo_dir, score_dir, out / "curves.png")

    summary = {
        "stage1": stage1.get("eval", {}),
        "stage2": stage2.get("eval", stage2),
        "evaluation": rows,
        "export": str(exported.out_dir),
        "plot": str(plot),
        "minutes": round((time.perf_counter() - start) / 60, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print()
    print(f"stage 1 held-out pairs (greedy answers): {json.dumps(summary['stage1'])}")
    print(f"evaluation on the bundled test split ({len(data.qrels)} queries):")
    print(format_metrics_table(rows))
    print(f"export: {exported.out_dir}  (self-check max |score diff| "
          f"{getattr(exported.check, 'max_abs_diff', 'n/a')})")
    print(f"curves: {plot}")
    print(f"summary: {out / 'summary.json'}  ({summary['minutes']} min)")
    return summary


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="prorank demo", description=__doc__.splitlines()[0],
                                     **help_kwargs("demo"))
    parser.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    parser.add_argument("--grpo-steps", type=int, default=None, help="default: grpo_tiny_warm.yaml's loop.steps")
    parser.add_argument("--score-steps", type=int, default=None, help="default: score_tiny_warm.yaml's loop.steps")
    parser.add_argument("--top-k", type=int, default=20, help="BM25 candidates reranked per query")
    parser.add_argument("--show-config", action="store_true",
                        help="print each stage's resolved config (always saved as OUT/grpo|score/run_config.json)")
    args = parser.parse_args(argv)
    run_demo(Path(args.out), grpo_steps=args.grpo_steps, score_steps=args.score_steps, top_k=args.top_k,
             show_config=args.show_config)
    return 0
