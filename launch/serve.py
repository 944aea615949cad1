"""`prorank serve`: a rerank HTTP server speaking the Cohere / Jina / vLLM, Infinity and
Hugging Face TEI APIs, with /health, /info, /metrics and OpenAPI at /docs.

    prorank serve --model DIR [--host 127.0.0.1] [--port 8080] [--max-length L] [...]

--model is an HF reranker folder or a prorank run folder (as Reranker.from_pretrained), or
`bundled_warm_start` for the bundled tiny model. Concurrent requests are interleaved in
batches of at most --max-batch-tokens padded tokens, waiting at most --max-wait-ms for
company. All batch shapes are compiled before /health answers 200 (progress on stderr).
SIGTERM (or Ctrl-C) stops accepting connections, answers the requests fully received and
exits 0 within --shutdown-timeout; a second signal exits at once. `prorank serve --help`
lists every limit and timeout.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from launch.command_help import help_kwargs
from prorank_jax import paths


class StopBeforeServing(BaseException):
    """SIGTERM / SIGINT while the model was still loading."""


def _stop_before_serving(signum, frame):
    raise StopBeforeServing(signal.Signals(signum).name)


def build_parser() -> argparse.ArgumentParser:
    from scoring.server import (
        DEFAULT_BODY_TIMEOUT_S,
        DEFAULT_HEADER_TIMEOUT_S,
        DEFAULT_KEEP_ALIVE_TIMEOUT_S,
        DEFAULT_MAX_BATCH_TOKENS,
        DEFAULT_MAX_DOCUMENTS,
        DEFAULT_MAX_REQUEST_BYTES,
        DEFAULT_MAX_WAIT_MS,
        DEFAULT_SHUTDOWN_TIMEOUT_S,
    )

    parser = argparse.ArgumentParser(prog="prorank serve", description=__doc__.split("\n\n")[0].replace("\n", " "),
                                     **help_kwargs("serve"))
    parser.add_argument("--model", required=True, help="HF model folder, prorank run folder or bundled_warm_start (the bundled tiny model)")
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the model's own)")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step of a run folder (default: latest)")
    parser.add_argument("--model-name", default=None, help="model id reported by /info and responses "
                                                           "(default: the folder name)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--max-length", type=int, default=8192, help="query + document token budget (default 8192)")
    parser.add_argument("--max-batch-tokens", type=int, default=DEFAULT_MAX_BATCH_TOKENS,
                        help=f"padded tokens (rows x length) per batch (default {DEFAULT_MAX_BATCH_TOKENS})")
    parser.add_argument("--max-batch-rows", type=int, default=32, help="pairs per batch at most (default 32)")
    parser.add_argument("--max-wait-ms", type=float, default=DEFAULT_MAX_WAIT_MS,
                        help=f"how long a request waits for others to share its batch (default {DEFAULT_MAX_WAIT_MS})")
    parser.add_argument("--max-documents", type=int, default=DEFAULT_MAX_DOCUMENTS,
                        help=f"documents per request at most (default {DEFAULT_MAX_DOCUMENTS}); more -> 413")
    parser.add_argument("--max-request-bytes", type=int, default=DEFAULT_MAX_REQUEST_BYTES,
                        help=f"request body bytes at most (default {DEFAULT_MAX_REQUEST_BYTES}); more -> 413")
    parser.add_argument("--max-inflight-bytes", type=int, default=None,
                        help="bytes of request bodies being read or answered at once (default 1/64 of the "
                             "machine's memory, 16-256 MiB); more -> 429 with Retry-After")
    parser.add_argument("--max-queued-tokens", type=int, default=None,
                        help="prompt tokens waiting to be scored (default 64 x --max-batch-tokens); more -> 429 "
                             "with Retry-After")
    parser.add_argument("--header-timeout", type=float, default=DEFAULT_HEADER_TIMEOUT_S,
                        help=f"seconds a connection may take to send a request's headers (default "
                             f"{DEFAULT_HEADER_TIMEOUT_S:g}); then it is closed")
    parser.add_argument("--body-timeout", type=float, default=DEFAULT_BODY_TIMEOUT_S,
                        help=f"seconds a request may take to send its body after the headers (default "
                             f"{DEFAULT_BODY_TIMEOUT_S:g}); then 408")
    parser.add_argument("--keep-alive-timeout", type=float, default=DEFAULT_KEEP_ALIVE_TIMEOUT_S,
                        help=f"seconds an idle keep-alive connection stays open (default {DEFAULT_KEEP_ALIVE_TIMEOUT_S:g})")
    parser.add_argument("--shutdown-timeout", type=float, default=DEFAULT_SHUTDOWN_TIMEOUT_S,
                        help=f"seconds SIGTERM waits for requests fully received to be answered (default "
                             f"{DEFAULT_SHUTDOWN_TIMEOUT_S:g}); then the process exits 0 anyway")
    parser.add_argument("--api-key-file", default=None,
                        help="file holding the API key clients must send as 'Authorization: Bearer KEY'")
    parser.add_argument("--steps-per-octave", type=int, choices=(1, 2, 4, 8), default=4,
                        help="padded lengths per doubling of the prompt length (default 4): fewer means fewer "
                             "shapes to compile at start-up and more padding")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                        help="compute dtype (default float32 on CPU, bfloat16 on GPU/TPU)")
    parser.add_argument("--prompt-family", default=None, choices=("mxbai-v2", "qwen3-reranker"),
                        help="force the prompt family (default: the model folder's; see docs/reranking.md)")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    return parser


def read_api_key(path: str) -> str:
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"{path}: --api-key-file not found")
    key = file.read_text().strip()
    if not key:
        raise ValueError(f"{path}: --api-key-file is empty; it must hold the API key")
    if any(c.isspace() for c in key):
        raise ValueError(f"{path}: the API key must be one line without spaces")
    return key


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Loading and building take a while; a stop signal then ends the process cleanly.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _stop_before_serving)
    try:
        return _load_and_serve(args)
    except StopBeforeServing as stop:
        print(f"prorank serve: {stop} before the server started; exiting", file=sys.stderr)
        return 0


def _load_and_serve(args) -> int:
    try:
        from scoring.server import ServerSettings

        api_key = read_api_key(args.api_key_file) if args.api_key_file else None
        model_path, tokenizer = args.model, args.tokenizer  # bundled names: Reranker.from_pretrained resolves them
        settings = ServerSettings(
            model_name=args.model_name or paths.as_path(args.model).name, max_batch_tokens=args.max_batch_tokens,
            max_batch_rows=args.max_batch_rows, max_wait_ms=args.max_wait_ms, max_documents=args.max_documents,
            max_request_bytes=args.max_request_bytes, max_inflight_bytes=args.max_inflight_bytes,
            max_queued_tokens=args.max_queued_tokens, header_timeout_s=args.header_timeout,
            body_timeout_s=args.body_timeout, keep_alive_timeout_s=args.keep_alive_timeout,
            shutdown_timeout_s=args.shutdown_timeout, requested_max_length=args.max_length, api_key=api_key)

        from scoring.reranker import Reranker
        from scoring.server import create_app

        reranker = Reranker.from_pretrained(model_path, max_length=args.max_length, dtype=args.dtype,
                                            step=args.step, tokenizer=tokenizer, show_progress=False,
                                            steps_per_octave=args.steps_per_octave,
                                            reuse_prefix=False, pack_tokens=False,
                                            prompt_family=args.prompt_family)
        app = create_app(reranker, settings)
    except (ValueError, FileNotFoundError) as err:
        print(f"prorank serve: error: {err}", file=sys.stderr)
        return 2
    from scoring.server_runtime import serve

    started = serve(app, host=args.host, port=args.port, log_level=args.log_level,
                    header_timeout_s=settings.header_timeout_s, keep_alive_timeout_s=settings.keep_alive_timeout_s,
                    shutdown_timeout_s=settings.shutdown_timeout_s)
    return 0 if started else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
