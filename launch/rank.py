"""`prorank rank`: rerank the documents of a file for one query and print the ranking.

    prorank rank --model PATH --query "what is X?" --documents docs.jsonl [--top-k 10]

--documents: a .jsonl / .ndjson file with one JSON object per line holding a "text" (or
"document") string, or any other file as plain text with one document per line. Blank lines
of a plain-text file separate nothing and are skipped (their count is reported on stderr);
a blank JSONL line is skipped as JSON Lines allows. Problems are reported as
`path:line: message` and exit status 2, before the model is loaded.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from launch.command_help import help_kwargs
from prorank_jax.data import DataError, read_jsonl
from prorank_jax.prompts import PROMPT_FAMILIES

JSONL_SUFFIXES = (".jsonl", ".ndjson")
TEXT_FIELDS = ("text", "document")
PREVIEW_CHARS = 80
BUNDLED_MODEL = "bundled_warm_start"


def read_documents(path: str | Path) -> tuple[list[str], list[int], int]:
    """(documents, their 1-based line numbers, blank lines skipped) of a JSONL or text file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "documents file not found")
    if path.suffix.lower() in JSONL_SUFFIXES:
        documents, lines = [], []
        for line, row in read_jsonl(path):
            documents.append(_text_field(path, line, row))
            lines.append(line)
        return documents, lines, 0
    return _read_text_lines(path)


def _text_field(path: Path, line: int, row: dict) -> str:
    for name in TEXT_FIELDS:
        if name in row:
            if not isinstance(row[name], str):
                raise DataError(path, f"field {name!r} must be a string, got {type(row[name]).__name__}", line)
            return row[name]
    raise DataError(path, f"expected a {' or '.join(map(repr, TEXT_FIELDS))} field, got keys {sorted(row)}", line)


def _read_text_lines(path: Path) -> tuple[list[str], list[int], int]:
    documents, lines, blank = [], [], 0
    with open(path, "rb") as f:
        for line, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                raise DataError(path, f"not valid UTF-8 ({e.reason} at byte {e.start})", line) from None
            if not text.strip():
                blank += 1
                continue
            documents.append(text)
            lines.append(line)
    return documents, lines, blank


def preview(text: str, width: int = PREVIEW_CHARS) -> str:
    """One-line display form; the full text is what was scored."""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def format_ranking(results, lines: list[int]) -> str:
    header = f"{'rank':>4}  {'score':>10}  {'line':>6}  document"
    rows = [
        f"{rank:>4}  {r.score:>10.4f}  {lines[r.index]:>6}  {preview(r.document or '')}"
        for rank, r in enumerate(results, start=1)
    ]
    return "\n".join([header, *rows])


def add_reranker_args(parser: argparse.ArgumentParser, *, several_models: bool = False) -> None:
    """The options `rank` and `evaluate` share: which model, and how it reads the prompt."""
    parser.add_argument("--model", required=True, action="append" if several_models else "store",
                        help=f"HF model folder, prorank run folder or {BUNDLED_MODEL} (the bundled tiny model)"
                             + (" (twice: compare two)" if several_models else ""))
    parser.add_argument("--instruction", default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--max-length", type=int, default=8192,
                        help="query + document token budget (qwen3-reranker: the whole prompt) (default 8192)")
    parser.add_argument("--prompt-family", default=None, choices=sorted(PROMPT_FAMILIES),
                        help="force the prompt family (default: the model folder's; see docs/reranking.md)")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step of a run folder (default: latest)")


def load_reranker(model: str, **kwargs):
    """Reranker.from_pretrained of a model folder, or of the bundled tiny model with its tokenizer
    for `bundled_warm_start` (as `prorank serve` takes it)."""
    from scoring.reranker import Reranker

    if model == BUNDLED_MODEL:
        from prorank_jax.data import bundled_tokenizer_dir
        from prorank_jax.pretrained import bundled_warm_start_dir

        return Reranker.from_pretrained(bundled_warm_start_dir(), tokenizer=bundled_tokenizer_dir(), **kwargs)
    return Reranker.from_pretrained(model, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prorank rank", description=__doc__.splitlines()[0],
                                     **help_kwargs("rank"))
    add_reranker_args(parser)
    parser.add_argument("--query", required=True)
    parser.add_argument("--documents", required=True, help="JSONL (text/document field) or plain text, one per line")
    parser.add_argument("--top-k", type=int, default=10)
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        if not args.query.strip():
            raise ValueError("--query is empty; a reranking prompt needs a non-empty query")
        if args.top_k <= 0:
            raise ValueError(f"--top-k must be positive, got {args.top_k}")
        documents, lines, blank = read_documents(args.documents)
        if blank:
            print(f"prorank rank: skipped {blank} blank lines of {args.documents}", file=sys.stderr)
        if not documents:
            raise DataError(args.documents, "no documents to rank")
        from scoring.reranker import DEFAULT_BATCH_SIZE  # JAX starts only once the inputs are fine

        reranker = load_reranker(
            args.model, max_length=args.max_length, batch_size=args.batch_size or DEFAULT_BATCH_SIZE, step=args.step,
            prompt_family=args.prompt_family,
        )
        results = reranker.rank(args.query, documents, top_k=args.top_k, instruction=args.instruction)
    except (DataError, ValueError, FileNotFoundError) as err:
        print(f"prorank rank: error: {err}", file=sys.stderr)
        return 2
    print(format_ranking(results, lines))
    return 0
