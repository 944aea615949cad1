"""`prorank export-hf --checkpoint DIR [--step N] --out HF_DIR`: a folder for transformers,
mxbai-rerank and sentence-transformers (CrossEncoder), with a model card.

--checkpoint is a prorank run folder (the latest complete step unless --step) or an HF
folder. The folder is written atomically and only after reloading it reproduces the
checkpoint's scores (see prorank_jax/export/). --push-to-hub REPO_ID uploads it
afterwards; it needs HF_TOKEN in the environment.

--format seq-cls writes a one-label Qwen2/Qwen3ForSequenceClassification folder instead
(score.weight = W["1"] - W["0"], the rerank chat template), which vLLM and Infinity serve
as a classifier (see prorank_jax/export/seq_cls.py).
"""

from __future__ import annotations

import argparse
import sys

from launch.command_help import help_kwargs


def parse_args(argv):
    from prorank_jax.export import DEFAULT_LICENSE, EXPORT_DTYPES
    from prorank_jax.prompts import PROMPT_FAMILIES

    parser = argparse.ArgumentParser(prog="prorank export-hf", description=__doc__.split("\n\n")[0].replace("\n", " "),
                                     **help_kwargs("export-hf"))
    parser.add_argument("--checkpoint", required=True, help="prorank run folder (or an HF folder)")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest complete one)")
    parser.add_argument("--out", required=True, help="output folder (created; must not exist or be empty)")
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the run's tokenizer/)")
    parser.add_argument("--dtype", choices=EXPORT_DTYPES, default="float32", help="weights dtype (default float32)")
    parser.add_argument("--license", default=DEFAULT_LICENSE, help=f"model card license (default {DEFAULT_LICENSE})")
    parser.add_argument("--base-model", default=None,
                        help="hub id for the card's base_model (default: from the run config when it names one)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    parser.add_argument("--prompt-family", default=None, choices=sorted(PROMPT_FAMILIES),
                        help="force the prompt family (default: the checkpoint's; see docs/reranking.md)")
    parser.add_argument("--format", choices=("causal-lm", "seq-cls"), default="causal-lm",
                        help="causal-lm (default): transformers / mxbai-rerank / sentence-transformers folder; "
                             "seq-cls: one-label sequence classifier for vLLM / Infinity")
    parser.add_argument("--push-to-hub", default=None, metavar="REPO_ID",
                        help="upload the folder to this Hub repo afterwards (needs HF_TOKEN)")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    from prorank_jax.export import ExportCheckError, ExportError, export_hf, export_seq_cls
    from prorank_jax.paths import RemotePathError

    try:
        if args.format == "seq-cls":
            if args.push_to_hub:
                raise ExportError("--push-to-hub is not supported with --format seq-cls; upload the folder yourself")
            export_seq_cls(args.checkpoint, args.out, step=args.step, tokenizer=args.tokenizer, dtype=args.dtype,
                           overwrite=args.overwrite, prompt_family=args.prompt_family)
            return 0
        export_hf(args.checkpoint, args.out, step=args.step, tokenizer=args.tokenizer, dtype=args.dtype,
                  license=args.license, base_model=args.base_model, push_to_hub=args.push_to_hub,
                  overwrite=args.overwrite, prompt_family=args.prompt_family)
    except (ExportError, ExportCheckError, FileNotFoundError, RemotePathError) as err:
        print(f"prorank export-hf: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
