"""`prorank import-gguf FILE.gguf OUT_DIR [--dtype float32|bfloat16]`: a GGUF model (llama.cpp's
format; Llama, SmolLM, Qwen2, Qwen3, quantised or not) as a Hugging Face folder.

The weights are dequantised by transformers' own GGUF reader and written as safetensors
with config.json and the tokenizer (chat template included), so every command then loads
OUT_DIR like any HF folder. It needs torch, gguf and accelerate:
pip install -r requirements-gguf.txt.
"""

from __future__ import annotations

import argparse
import sys


def parse_args(argv):
    from launch.command_help import help_kwargs
    from prorank_jax.gguf_import import IMPORT_DTYPES

    parser = argparse.ArgumentParser(prog="prorank import-gguf", description=__doc__.split("\n\n")[0].replace("\n", " "),
                                     **help_kwargs("import-gguf"))
    parser.add_argument("gguf_file", metavar="FILE.gguf", help="the GGUF file")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="the HF folder to write (replaced if it exists)")
    parser.add_argument("--dtype", choices=IMPORT_DTYPES, default="float32",
                        help="dtype of the written weights (default float32; quantised weights are dequantised)")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    from prorank_jax.gguf_import import GGUFImportError, import_gguf

    try:
        import_gguf(args.gguf_file, args.out_dir, dtype=args.dtype)
    except GGUFImportError as err:
        print(f"prorank import-gguf: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
