"""Train the bundled tiny tokenizer and write the matching tiny model config.

Run ``python -m prorank_jax.data.make_tokenizer`` to rebuild
``bundled/tokenizer/`` and ``bundled/tiny_model.json`` from the bundled corpus,
queries and the reranking prompt template. The result is a byte-level BPE
built exactly like Qwen2's (NFC, Qwen's split regex with one token per digit,
byte-level pre-tokenizer and decoder) with Qwen's three special tokens added
after the learned vocabulary, so code written against Qwen2.5 tokenizers runs
unchanged on it. Training is deterministic: same input text, same files.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from prorank_jax.bundled import bundled_data_dir, bundled_tokenizer_dir
from prorank_jax.data.beir import load_corpus, load_queries
from prorank_jax.files import atomic_text_writer

# Qwen2's pre-tokenizer split (transformers' Qwen2Tokenizer.PRETOKENIZE_REGEX):
# \p{N} alone makes every digit its own pre-token, so "1" and "0" stay single tokens.
QWEN2_SPLIT_REGEX = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""

ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END)

# The reranking prompt pieces (ARCHITECTURE.md "Reranking prompt", mxbai-rerank
# v2). They are part of the training text so that every prompt costs few tokens.
TEMPLATE_TEXTS = (
    "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n<|im_start|>user\n",
    "instruction: ",
    "query: ",
    "\ndocument: ",
    "\nYou are a search relevance expert who evaluates how well documents match search queries. "
    "For each query-document pair, carefully analyze the semantic relationship between them, then provide "
    "your binary relevance judgment (0 for not relevant, 1 for relevant).\nRelevance:",
    "<|im_end|>\n<|im_start|>assistant\n",
)

# Learned vocabulary (256 bytes + merges); with the 3 special tokens the
# tokenizer has 1536 entries, already a multiple of 64.
DEFAULT_BPE_VOCAB_SIZE = 1533
TINY_MODEL_MAX_POSITIONS = 1024


# Every prompt repeats the template, so it is weighted like many prompts;
# otherwise words seen once in it ("system", "query") would stay unmerged.
TEMPLATE_REPEATS = 64
_SPECIAL_TOKEN_SPLIT = re.compile("|".join(re.escape(token) for token in SPECIAL_TOKENS))


def training_texts(data_dir: Path) -> Iterator[str]:
    """Documents, queries and the prompt template, in a fixed order.

    Template texts are cut at the chat markers, as encoding does (special
    tokens are matched before pre-tokenization), so the markers are never
    learned as byte sequences and "system" after ``<|im_start|>`` is learned
    as it will be seen.
    """
    corpus = load_corpus(data_dir / "corpus.jsonl")
    queries = load_queries(data_dir / "queries.jsonl")
    yield from (corpus[doc_id] for doc_id in sorted(corpus))
    yield from (queries[query_id] for query_id in sorted(queries))
    template_pieces = [piece for text in TEMPLATE_TEXTS for piece in _SPECIAL_TOKEN_SPLIT.split(text) if piece]
    for _ in range(TEMPLATE_REPEATS):
        yield from template_pieces


def train_tokenizer(texts: Iterator[str], bpe_vocab_size: int = DEFAULT_BPE_VOCAB_SIZE) -> Tokenizer:
    """A Qwen2-style byte-level BPE learned from ``texts``, special tokens appended after the BPE ids."""
    bpe = models.BPE(unk_token=None, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False, byte_fallback=False)
    tokenizer = Tokenizer(bpe)
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(
        vocab_size=bpe_vocab_size,
        min_frequency=2,
        show_progress=False,
        # Every byte is in the base vocabulary, so any text encodes without an unknown token.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    tokenizer.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in SPECIAL_TOKENS])
    return tokenizer


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def tiny_model_config(vocab_len: int, endoftext_id: int, im_end_id: int) -> dict:
    """HF Qwen2 config.json of the tiny test model; vocab rounded up to a multiple of 64 (TPU/GPU friendly)."""
    return {
        "model_type": "qwen2",
        "architectures": ["Qwen2ForCausalLM"],
        "vocab_size": round_up(vocab_len, 64),
        "hidden_size": 64,
        "intermediate_size": 176,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": TINY_MODEL_MAX_POSITIONS,
        "rope_theta": 10000.0,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": True,
        "hidden_act": "silu",
        "use_sliding_window": False,
        "bos_token_id": endoftext_id,
        "eos_token_id": im_end_id,
        "pad_token_id": endoftext_id,
    }


def _declare_qwen2_tokenizer_class(config_path: Path) -> None:
    # Real Qwen2.5 folders name Qwen2Tokenizer; AutoTokenizer then builds the
    # same class for the tiny tokenizer as for the real ones (it reads
    # tokenizer.json, so the ids do not change).
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "Qwen2Tokenizer"
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def save_hf_tokenizer(tokenizer: Tokenizer, out_dir: Path) -> None:
    """Save as a transformers tokenizer folder; each file is moved into place atomically."""
    from transformers import PreTrainedTokenizerFast

    hf_tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=None,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        unk_token=None,
        additional_special_tokens=[IM_START],
        clean_up_tokenization_spaces=False,
        model_max_length=TINY_MODEL_MAX_POSITIONS,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=f".{out_dir.name}.") as tmp:
        hf_tokenizer.save_pretrained(tmp)
        _declare_qwen2_tokenizer_class(Path(tmp) / "tokenizer_config.json")
        for name in sorted(os.listdir(tmp)):
            shutil.move(os.path.join(tmp, name), out_dir / f".{name}.tmp")
            os.replace(out_dir / f".{name}.tmp", out_dir / name)


def build(
    data_dir: Path, tokenizer_dir: Path, model_config_path: Path, bpe_vocab_size: int = DEFAULT_BPE_VOCAB_SIZE
) -> dict:
    """Train on ``data_dir``, write the tokenizer folder and the tiny model config; return the config."""
    tokenizer = train_tokenizer(training_texts(data_dir), bpe_vocab_size)
    save_hf_tokenizer(tokenizer, tokenizer_dir)
    config = tiny_model_config(
        tokenizer.get_vocab_size(with_added_tokens=True), tokenizer.token_to_id(ENDOFTEXT), tokenizer.token_to_id(IM_END)
    )
    with atomic_text_writer(model_config_path) as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    return config


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=bundled_data_dir())
    parser.add_argument("--tokenizer-dir", type=Path, default=bundled_tokenizer_dir())
    parser.add_argument("--model-config", type=Path, default=bundled_data_dir() / "tiny_model.json")
    parser.add_argument("--bpe-vocab-size", type=int, default=DEFAULT_BPE_VOCAB_SIZE)
    args = parser.parse_args(argv)
    config = build(args.data_dir, args.tokenizer_dir, args.model_config, args.bpe_vocab_size)
    print(f"wrote {args.tokenizer_dir} and {args.model_config} (vocab_size {config['vocab_size']})")


if __name__ == "__main__":
    main()
