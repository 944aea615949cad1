"""Turning a request's texts into prompt ids, with the texts cut early.

A document can be megabytes long while the prompt keeps at most max_total_length of its
tokens. Tokenizing it whole costs time and memory (a 1 MB document is about 250,000 token
ids and the tokenizer's offsets beside them), so `cut_text_early` first cuts each text to a
prefix that still holds the budget plus a margin of tokens: the ids the prompt keeps are
the same, and the cut text's tokens are never more than about twice what a whole prompt
holds. Only for right-side truncation, where the kept ids are the text's first ones.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from prorank_jax.prompts import EncodedPair, RerankPrompt, document_text, query_text

# Tokens kept beyond the budget, so that the cut (which may split a word) never changes a
# kept id: a tokenizer's pieces only look a few characters across a word boundary.
CUT_MARGIN_TOKENS = 16
# First guess of characters per token; the prefix doubles until it holds enough tokens.
CHARS_PER_TOKEN_GUESS = 4


def cut_text_early(prompt, text: str, budget: int) -> str:
    """The shortest tried prefix of `text` holding budget + CUT_MARGIN_TOKENS tokens, or
    `text` itself when it has fewer (see the module docstring)."""
    need = budget + CUT_MARGIN_TOKENS
    chars = need * CHARS_PER_TOKEN_GUESS
    while chars < len(text):
        if len(prompt._encode_many([text[:chars]])[0]) >= need:
            return text[:chars]
        chars *= 2
    return text


def cut_texts_early(prompt, texts: Sequence[str]) -> list[str]:
    if getattr(prompt, "truncation_side", "right") != "right":
        return list(texts)
    return [cut_text_early(prompt, t, prompt.max_total_length) for t in texts]


def encode_pairs(
    prompt: RerankPrompt,
    query: str,
    documents: Sequence[str],
    instruction: str | None = None,
    max_tokens_per_doc: int | None = None,
) -> list[EncodedPair]:
    """mxbai's prompts of (query, document) pairs; max_tokens_per_doc (Cohere v2) first cuts
    each document piece ("document: {text}") to that many tokens, then mxbai's rules apply."""
    query = cut_texts_early(prompt, [query])[0]
    documents = cut_texts_early(prompt, documents)
    if max_tokens_per_doc is None:
        return prompt.encode_batch([query] * len(documents), list(documents), instruction=instruction)
    if not isinstance(prompt, RerankPrompt):
        raise ValueError("max_tokens_per_doc: supported for the mxbai-v2 prompt family only; this server's "
                         "family cuts the document by its own longest_first rule (send no max_tokens_per_doc)")
    prompt.encode_batch([query], [""], instruction=instruction)  # the same input checks
    query_ids = prompt._encode_many([query_text(query, instruction)])[0]
    out = []
    for doc_ids in prompt._encode_many([document_text(d) for d in documents]):
        pair = prompt._assemble(query_ids, doc_ids[:max_tokens_per_doc])
        if len(doc_ids) > max_tokens_per_doc:
            pair = dataclasses.replace(pair, document_truncated=True)
        out.append(pair)
    return out
