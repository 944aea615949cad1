"""The examples at the end of each command's --help.

One place for them, so tests/launch/test_docs_commands.py checks them with the README's and
docs' commands: every flag an example uses must be one its command has.
"""

from __future__ import annotations

import argparse

EXAMPLES_HEADER = "examples:"

# command -> (command line, what it does); at most two each, the common case first.
EXAMPLES: dict[str, tuple[tuple[str, str], ...]] = {
    "demo": (
        ("prorank demo", "both stages, evaluation and export on the bundled data -> runs/demo"),
        ("prorank demo --out runs/demo-short --grpo-steps 20 --score-steps 10", "a shorter run"),
    ),
    "rank": (
        ('prorank rank --model runs/demo/export --query "how do plants make food?" --documents docs.jsonl --top-k 5',
         "docs.jsonl: one {\"text\": ...} per line, or plain text, one document per line"),
    ),
    "evaluate": (
        ("prorank evaluate --model runs/demo/score --data prorank_jax/data/bundled --split test --top-k 20 "
         "--out runs/eval", "BM25's top 20 of the bundled test queries, reranked"),
        ("prorank evaluate --model runs/score-qwen25-05b --data data/beir/scifact data/beir/nfcorpus --top-k 100 "
         "--out runs/eval-beir", "one table over several BEIR datasets"),
    ),
    "prepare-data": (
        ("prorank prepare-data --beir prorank_jax/data/bundled --split train --out data/bundled",
         "stage-1 pairs and stage-2 groups with BM25 hard negatives"),
        ("prorank prepare-data --beir data/beir/msmarco --split train --out data --num-negatives 7 "
         "--exclude-queries-of data/beir/scifact:test", "refuse training queries of an evaluation split"),
    ),
    "train-grpo": (
        ("prorank train-grpo --config grpo_tiny_warm out_dir=runs/grpo", "stage 1 on the bundled data"),
        ("prorank train-grpo --config grpo_qwen25_05b --dry-run mesh.data=1 mesh.fsdp=-1",
         "the mesh and memory per device, without loading the model"),
    ),
    "train-score": (
        ("prorank train-score --config score_tiny_warm model.path=runs/grpo out_dir=runs/score",
         "stage 2 from the stage-1 run"),
        ("prorank train-score --config score_qwen25_05b --compile-for v5e-8 model.path=null "
         "model.config=launch/configs/models/qwen2.5-0.5b-instruct", "will it fit a v5e-8? (needs libtpu)"),
    ),
    "export-hf": (
        ("prorank export-hf --checkpoint runs/demo/score --out exported/",
         "for transformers, mxbai-rerank and sentence-transformers"),
        ("prorank export-hf --checkpoint runs/demo/score --out exported-cls/ --format seq-cls",
         "a sequence classifier for vLLM / Infinity"),
    ),
    "serve": (
        ("prorank serve --model bundled_warm_start --max-length 256", "the bundled tiny model on 127.0.0.1:8080"),
        ("prorank serve --model runs/demo/export --port 8080 --api-key-file key.txt",
         "Cohere / Jina / TEI rerank APIs with a key"),
    ),
    "import-gguf": (
        ("prorank import-gguf SmolLM2-135M-Instruct.Q4_1.gguf runs/smollm2-135m-instruct",
         "an HF folder (float32) every command loads; needs pip install -r requirements-gguf.txt"),
        ("prorank import-gguf model.gguf runs/model-bf16 --dtype bfloat16", "bfloat16 weights"),
    ),
}


def epilog(command: str) -> str:
    lines = [EXAMPLES_HEADER]
    for line, what in EXAMPLES.get(command, ()):
        lines += [f"  {line}", f"      {what}"]
    return "\n".join(lines)


class HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, but the examples keep their lines (a command line must not wrap)."""

    def _fill_text(self, text, width, indent):
        if text.startswith(EXAMPLES_HEADER):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def help_kwargs(command: str) -> dict:
    """ArgumentParser keyword arguments that end the command's --help with its examples."""
    return dict(epilog=epilog(command), formatter_class=HelpFormatter)
