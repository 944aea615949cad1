"""The `prorank` command line: one subcommand per job, each in its own module."""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module under launch/, one-line help). Modules are imported only when
# their command runs, so `prorank --help` does not start JAX.
COMMANDS = {
    "demo": ("launch.demo", "run the whole method on the bundled tiny data: both stages, evaluation, export"),
    "rank": ("launch.rank", "rerank the documents of a file for one query"),
    "evaluate": ("launch.evaluate", "rerank a first-stage run on BEIR split(s) and compare nDCG@10, RR@10, AP, R@k"),
    "prepare-data": ("launch.prepare_data", "write stage-1 pairs and stage-2 groups from a BEIR split or HF dataset"),
    "train-grpo": ("launch.train_grpo", "stage 1: GRPO prompt warmup (or --dry-run / --compile-for TPU)"),
    "train-score": ("launch.train_score", "stage 2: fine-grained score learning (or --dry-run / --compile-for TPU)"),
    "export-hf": ("launch.export_hf", "export for transformers, mxbai-rerank, sentence-transformers, vLLM"),
    "serve": ("launch.serve", "serve a reranker over HTTP (Cohere / Jina / TEI rerank APIs)"),
    "import-gguf": ("launch.import_gguf", "write a GGUF model (llama.cpp format) as a Hugging Face folder"),
}
EPILOG = "Each command's --help ends with examples. New here? `prorank demo` (README: \"Two commands\")."


def quiet_transformers_without_torch() -> None:
    """prorank needs no PyTorch (`make demo` installs none), and uses transformers for its
    tokenizers only; transformers' notice that PyTorch was not found reads as a broken install."""
    import logging

    logging.getLogger("transformers").addFilter(
        lambda record: "PyTorch was not found" not in record.getMessage())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="prorank", description="ProRank rerankers in JAX", epilog=EPILOG)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    if argv[0] not in COMMANDS:
        parser.parse_args(argv)  # prints the usage error and exits
    # Library modules log their status lines; the command line shows them as "[prorank] ...".
    from prorank_jax.status import install_cli_handler

    install_cli_handler()
    # Before the command's module can start JAX: no libtpu probing on a machine without a TPU.
    from launch.backends import skip_tpu_probe

    skip_tpu_probe()
    quiet_transformers_without_torch()
    module = importlib.import_module(COMMANDS[argv[0]][0])
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
