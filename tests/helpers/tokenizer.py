"""A tiny byte-level BPE tokenizer in the Qwen style, built offline for tests.

Real Qwen tokenizers live on the Hugging Face hub, which tests must not touch, so this
trains a few-hundred-token BPE on a handful of sentences plus the reranking template.
It keeps the properties the prompt builder relies on: byte-level pieces (any text
encodes, nothing maps to <unk>), the chat markers as single special tokens, and the
digits "1" and "0" as single tokens.
"""

from __future__ import annotations

import os
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

CHAT_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

_TRAINING_TEXT = (
    "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n",
    "<|im_start|>user\n",
    "instruction: find passages that answer the question\nquery: what is the capital of France?\n",
    "document: Paris is the capital and most populous city of France.\n",
    "You are a search relevance expert who evaluates how well documents match search queries. "
    "For each query-document pair, carefully analyze the semantic relationship between them, "
    "then provide your binary relevance judgment (0 for not relevant, 1 for relevant).\nRelevance:",
    "<|im_end|>\n<|im_start|>assistant\n",
    "The quick brown fox jumps over the lazy dog. 0 1 10 100 2024",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "The mitochondria is the powerhouse of the cell; it produces ATP through respiration.",
    "Rerankers score each query and document pair and sort candidates by that score.",
)


# Qwen3-Reranker's template, its answers, and text in a few scripts, so that the Qwen3 test
# tokenizer has merges for them (any text still encodes, byte by byte if need be).
QWEN3_TRAINING_TEXT = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
    'provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n',
    "<Instruct>: Given a web search query, retrieve relevant passages that answer the query\n<Query>: what is the "
    "capital of France?\n<Document>: Paris is the capital and most populous city of France.",
    "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",
    "yes no yes no yes no yes no yes no yes no",
    "Berlin ist die Hauptstadt Deutschlands. París es la capital de Francia.",
    "北京是中国的首都。東京は日本の首都です。القاهرة هي عاصمة مصر.",
)
# Qwen3's tokenizer has these as added (not special) tokens.
QWEN3_THINK_TOKENS = ("<think>", "</think>")


def build_qwen3_test_tokenizer(directory: str | os.PathLike, vocab_size: int = 600) -> Path:
    """The test tokenizer with Qwen3-Reranker's needs: the chat tokens, <think> and </think> as
    single added tokens, and "yes" / "no" as single BPE tokens."""
    return build_test_tokenizer(directory, vocab_size=vocab_size, extra_text=QWEN3_TRAINING_TEXT,
                                added_tokens=QWEN3_THINK_TOKENS)


def build_test_tokenizer(
    directory: str | os.PathLike,
    *,
    with_chat_tokens: bool = True,
    split_digit_one: bool = False,
    vocab_size: int = 420,
    extra_text: tuple[str, ...] = (),
    added_tokens: tuple[str, ...] = (),
) -> Path:
    """Train and save the test tokenizer under `directory`; returns that folder.

    with_chat_tokens=False leaves <|im_start|>/<|im_end|> out of the special tokens, so
    they encode as several byte pieces (a tokenizer unfit for the Qwen chat template).
    split_digit_one=True adds a normalizer rewriting "1" as "1 1", so "1" encodes to two
    tokens (a tokenizer unfit for the yes/no label ids). Both exist to test errors.
    """
    specials = list(CHAT_SPECIAL_TOKENS) if with_chat_tokens else ["<|endoftext|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    if split_digit_one:
        tok.normalizer = normalizers.Replace("1", "1 1")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(_TRAINING_TEXT) + list(extra_text), trainer)
    if added_tokens:
        tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in added_tokens])
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>" if with_chat_tokens else "<|endoftext|>",
        pad_token="<|endoftext|>",
        model_max_length=1 << 20,
        padding_side="left",
    )
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    wrapped.save_pretrained(str(out))
    return out
