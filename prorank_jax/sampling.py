"""Group sampling for GRPO rollouts: jitted prefill + ``lax.while_loop`` decode over a KV cache.

``sample`` repeats each prompt G times (row ``i * G + g`` is sample g of prompt i) and
decodes up to ``max_new_tokens`` tokens per row with temperature, top-k and top-p
(nucleus) filtering, or greedily. The whole generation is one jitted function:

* the prompts are prefilled once per prompt (not once per sample) into a KV cache of
  ``bucket_length(P) + max_new_tokens - 1`` slots, which is then repeated G times;
* decoding is a ``lax.while_loop`` whose carry holds the cache, so XLA updates the cache
  buffers in place (a while-loop carry is aliased between iterations, which is what
  donating a per-step cache would buy) and the loop exits as soon as every row has
  emitted an EOS or the budget is spent;
* prompt lengths are padded (on the left, masked out) to power-of-two buckets, so a
  training run compiles once per (batch, prompt bucket, max_new_tokens) instead of once
  per distinct prompt length -- unless the caller's batch is already padded to a length
  bucket (the stage-1 pipeline's, ``bucketed=True``), which is then prefilled as it is,
  so a prompt is padded once;
* every completion row draws from its own key, fold_in(fold_in(rng, prompt index), sample
  index), then fold_in(., step): a row's sample depends on its prompt's index and the key
  only, not on how the batch is split over devices or processes, so a rollout sharded over
  several processes draws exactly what one process running the whole batch draws.

Nothing here is device specific: with params sharded by ``sharding.param_shardings``
and prompts by ``sharding.batch_sharding`` the same jit runs SPMD over the mesh.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from prorank_jax import model
from prorank_jax.config import ModelConfig

# Filtered-out logits get a large finite negative, never -inf (no NaN from -inf - -inf).
_MASKED = -1e30


class SamplingError(ValueError):
    """A sampling setting (or an input to `sample`) cannot be honoured."""


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How completions are drawn.

    temperature: logits are divided by it before filtering and sampling; 0 means greedy.
    greedy: argmax decoding whatever the temperature (top_k / top_p are then moot).
    top_k: keep the k most likely tokens (0 = off).
    top_p: nucleus filtering, applied after top-k: keep the smallest set of most likely
      tokens whose cumulative probability reaches top_p (the top token always stays;
      tokens tied with the last kept one stay too). 1.0 = off.
    max_new_tokens: completion budget per row.
    eos_token_ids: tokens that end a completion; the EOS itself is part of the completion
      (its mask is 1, it is rewarded and trained on), everything after it is pad_token_id.
    pad_token_id: filler for the positions after a row has stopped.

    The returned log-probs are always those of the unfiltered distribution
    log_softmax(logits / temperature) -- the quantity GRPO recomputes with a full forward
    -- at temperature ``logprob_temperature`` (the temperature, or 1.0 when it is 0).
    """

    max_new_tokens: int
    eos_token_ids: tuple[int, ...]
    pad_token_id: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    greedy: bool = False

    def __post_init__(self):
        def fail(field: str, why: str):
            raise SamplingError(f"SamplingConfig.{field}={getattr(self, field)!r}: {why}")

        if isinstance(self.eos_token_ids, (int, np.integer)):
            object.__setattr__(self, "eos_token_ids", (int(self.eos_token_ids),))
        elif isinstance(self.eos_token_ids, (list, np.ndarray)):
            # The config is a static jit argument, so it must hash: lists become tuples.
            object.__setattr__(self, "eos_token_ids", tuple(int(t) for t in self.eos_token_ids))
        if not _is_int(self.max_new_tokens) or self.max_new_tokens < 1:
            fail("max_new_tokens", "must be an int >= 1")
        if not isinstance(self.eos_token_ids, tuple) or not self.eos_token_ids:
            fail("eos_token_ids", "must be a non-empty tuple of token ids")
        if any(not _is_int(t) or t < 0 for t in self.eos_token_ids):
            fail("eos_token_ids", "every id must be an int >= 0")
        if not _is_int(self.pad_token_id) or self.pad_token_id < 0:
            fail("pad_token_id", "must be an int >= 0")
        if not _is_real(self.temperature) or not math.isfinite(self.temperature) or self.temperature < 0:
            fail("temperature", "must be a finite float >= 0 (0 = greedy)")
        if not _is_real(self.top_p) or not 0.0 < self.top_p <= 1.0:
            fail("top_p", "must be in (0, 1] (1.0 = off)")
        if not _is_int(self.top_k) or self.top_k < 0:
            fail("top_k", "must be an int >= 0 (0 = off)")
        if not isinstance(self.greedy, bool):
            fail("greedy", "must be a bool")

    @property
    def is_greedy(self) -> bool:
        return self.greedy or self.temperature == 0

    @property
    def logprob_temperature(self) -> float:
        """Temperature of the returned log-probs: 1.0 for temperature 0 (greedy)."""
        return self.temperature if self.temperature > 0 else 1.0

    def check_vocab(self, vocab_size: int) -> None:
        """Token ids must exist in the model's vocabulary."""
        for field, ids in (("eos_token_ids", self.eos_token_ids), ("pad_token_id", (self.pad_token_id,))):
            if any(t >= vocab_size for t in ids):
                raise SamplingError(
                    f"SamplingConfig.{field}={getattr(self, field)!r}: ids must be < vocab_size={vocab_size}"
                )


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _is_real(x: Any) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


class SampleOutput(NamedTuple):
    """Completions of B prompts x G samples, row i * G + g = sample g of prompt i.

    tokens [B*G, max_new] int32: sampled ids, pad_token_id after the first EOS.
    logprobs [B*G, max_new] float32: log_softmax(logits / logprob_temperature) of each
      sampled token, unfiltered by top-k / top-p; 0 where completion_mask is 0.
    completion_mask [B*G, max_new] int32: 1 up to and including the first EOS.
    lengths [B*G] int32: completion_mask.sum(-1).
    finished [B*G] bool: the row emitted an EOS (False = cut by max_new_tokens).
    """

    tokens: jax.Array
    logprobs: jax.Array
    completion_mask: jax.Array
    lengths: jax.Array
    finished: jax.Array


def bucket_length(n: int, minimum: int = 16) -> int:
    """The smallest power of two >= max(n, minimum): the padded prompt length."""
    if not _is_int(n) or n < 0:
        raise SamplingError(f"bucket_length: n={n!r} must be an int >= 0")
    if not _is_int(minimum) or minimum < 1:
        raise SamplingError(f"bucket_length: minimum={minimum!r} must be an int >= 1")
    return 1 << (max(n, minimum) - 1).bit_length()


# ----------------------------------------------------------------------------- filtering
def top_k_filter(logits: jax.Array, k: int) -> jax.Array:
    """Mask every logit below the k-th largest of its row (k >= vocab: unchanged)."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = jax.lax.top_k(logits, k)[0][..., -1:]
    return jnp.where(logits < kth, _MASKED, logits)


def top_p_filter(logits: jax.Array, top_p: float) -> jax.Array:
    """Keep the smallest set of top tokens whose cumulative probability is >= top_p.

    A token stays when the probability mass strictly above it is < top_p, so the top
    token always stays and the set stops at the first token that reaches top_p.
    """
    if top_p >= 1.0:
        return logits
    sorted_logits = -jnp.sort(-logits, axis=-1)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_above = jnp.cumsum(probs, axis=-1) - probs
    keep = mass_above < top_p
    threshold = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits < threshold, _MASKED, logits)


def choose_tokens(logits: jax.Array, key: jax.Array, sampling: SamplingConfig) -> tuple[jax.Array, jax.Array]:
    """One decoding step: float32 logits [N, V] -> (token ids [N], their log-probs [N]).

    key: one key for the whole step, or [N] keys, one per row.
    """
    logits = logits.astype(jnp.float32)
    scaled = logits / sampling.logprob_temperature
    if sampling.is_greedy:
        tokens = jnp.argmax(logits, axis=-1)
    else:
        filtered = top_p_filter(top_k_filter(scaled, sampling.top_k), sampling.top_p)
        if jnp.ndim(key) == 0:
            tokens = jax.random.categorical(key, filtered, axis=-1)
        else:
            tokens = jax.vmap(jax.random.categorical)(key, filtered)
    tokens = tokens.astype(jnp.int32)
    logprobs = jnp.take_along_axis(jax.nn.log_softmax(scaled, axis=-1), tokens[:, None], axis=-1)[:, 0]
    return tokens, logprobs


# ----------------------------------------------------------------------------- decoding
class _LoopState(NamedTuple):
    step: jax.Array  # index of the next token column to fill
    cache: model.KVCache
    last_token: jax.Array  # [N] the token written at column step - 1
    tokens: jax.Array
    logprobs: jax.Array
    mask: jax.Array
    done: jax.Array  # [N] the row has emitted an EOS


def _record(state: _LoopState, token, logprob, sampling: SamplingConfig, eos_ids) -> _LoopState:
    """Write column `state.step`; rows already stopped get pad / 0 / mask 0."""
    active = ~state.done
    token = jnp.where(active, token, sampling.pad_token_id)
    logprob = jnp.where(active, logprob, 0.0)
    column = (0, state.step)
    return state._replace(
        step=state.step + 1,
        last_token=token,
        tokens=jax.lax.dynamic_update_slice(state.tokens, token[:, None], column),
        logprobs=jax.lax.dynamic_update_slice(state.logprobs, logprob[:, None], column),
        mask=jax.lax.dynamic_update_slice(state.mask, active.astype(jnp.int32)[:, None], column),
        done=state.done | (active & jnp.isin(token, eos_ids)),
    )


def _repeat_cache(cache: model.KVCache, num_samples: int) -> model.KVCache:
    """Each prompt's cache repeated G times consecutively along the batch axis."""
    if num_samples == 1:
        return cache
    return model.KVCache(
        k=jnp.repeat(cache.k, num_samples, axis=1),
        v=jnp.repeat(cache.v, num_samples, axis=1),
        valid=jnp.repeat(cache.valid, num_samples, axis=0),
        index=cache.index,
        next_position=jnp.repeat(cache.next_position, num_samples, axis=0),
    )


def row_keys(rng: jax.Array, prompt_index: jax.Array, num_samples: int) -> jax.Array:
    """[B * G] keys: row i * G + g gets fold_in(fold_in(rng, prompt_index[i]), g)."""
    per_prompt = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(rng, prompt_index)
    samples = jnp.arange(num_samples, dtype=jnp.uint32)
    keys = jax.vmap(lambda k: jax.vmap(jax.random.fold_in, in_axes=(None, 0))(k, samples))(per_prompt)
    return keys.reshape(-1)


def _generate(params, prompt_ids, prompt_mask, prompt_index, rng, *, config: ModelConfig, sampling: SamplingConfig,
              num_samples: int) -> SampleOutput:
    batch, prompt_len = prompt_ids.shape
    rows, max_new = batch * num_samples, sampling.max_new_tokens
    eos_ids = jnp.asarray(sampling.eos_token_ids, jnp.int32)
    zero_index = jnp.zeros((rows,), jnp.int32)
    keys = row_keys(rng, prompt_index, num_samples)
    step_keys = lambda step: jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, step)  # noqa: E731

    # The last sampled token is never fed back, hence max_new - 1 decode slots.
    cache = model.init_cache(config, batch, prompt_len + max_new - 1)
    hidden, cache = model.forward_hidden(params, config, prompt_ids, prompt_mask, cache=cache)
    # Left padding puts every prompt's last real token in the last column.
    first_logits = jnp.repeat(model.logits_at(params, config, hidden[:, -1:], zero_index[:batch]),
                              num_samples, axis=0)
    state = _LoopState(
        step=jnp.zeros((), jnp.int32),
        cache=_repeat_cache(cache, num_samples),
        last_token=jnp.zeros((rows,), jnp.int32),
        tokens=jnp.full((rows, max_new), sampling.pad_token_id, jnp.int32),
        logprobs=jnp.zeros((rows, max_new), jnp.float32),
        mask=jnp.zeros((rows, max_new), jnp.int32),
        done=jnp.zeros((rows,), bool),
    )
    state = _record(state, *choose_tokens(first_logits, step_keys(0), sampling), sampling, eos_ids)

    def cond(state: _LoopState):
        return (state.step < max_new) & ~jnp.all(state.done)

    def body(state: _LoopState):
        hidden, cache = model.forward_hidden(
            params, config, state.last_token[:, None], jnp.ones((rows, 1), bool), cache=state.cache
        )
        logits = model.logits_at(params, config, hidden, zero_index)
        token, logprob = choose_tokens(logits, step_keys(state.step), sampling)
        return _record(state._replace(cache=cache), token, logprob, sampling, eos_ids)

    state = jax.lax.while_loop(cond, body, state)
    return SampleOutput(
        tokens=state.tokens,
        logprobs=state.logprobs,
        completion_mask=state.mask,
        lengths=state.mask.sum(axis=-1).astype(jnp.int32),
        finished=state.done,
    )


_generate_jit = jax.jit(_generate, static_argnames=("config", "sampling", "num_samples"))


def _pad_prompt(x, width: int):
    """Left-pad the columns of a [B, P] array (numpy or jax, possibly sharded) to width."""
    pad = width - x.shape[1]
    if pad == 0:
        return x
    if isinstance(x, jax.Array):
        return jnp.pad(x, ((0, 0), (pad, 0)))
    return np.pad(np.asarray(x), ((0, 0), (pad, 0)))


def sample(
    params,
    config: ModelConfig,
    prompt_ids,
    prompt_mask,
    rng: jax.Array,
    sampling: SamplingConfig,
    num_samples: int = 1,
    *,
    prompt_index=None,
    bucketed: bool = False,
) -> SampleOutput:
    """Sample `num_samples` completions of each left-padded prompt.

    prompt_ids, prompt_mask: [B, P], left padded (mask 0 on the padding); every prompt
    needs at least one real token. Unless `bucketed`, the prompt columns are padded on the
    left to bucket_length(P), so all prompt lengths within one power-of-two bucket share
    one compiled program; compilation is keyed on (B, width, config, sampling,
    num_samples). bucketed=True says P already is a length bucket (the stage-1 pipeline
    pads each batch to one of DataConfig.buckets) and prefills P columns as they are.
    prompt_index [B] (default 0 .. B-1): the index that keys each prompt's samples (see
    row_keys); a batch sharded over processes passes each row's global index.
    Returns a SampleOutput with B * num_samples rows, row i * G + g from prompt i.
    The same rng and prompt indices give the same samples.
    """
    if not _is_int(num_samples) or num_samples < 1:
        raise SamplingError(f"num_samples={num_samples!r} must be an int >= 1")
    if not isinstance(sampling, SamplingConfig):
        raise SamplingError(f"sampling must be a SamplingConfig, got {type(sampling).__name__}")
    sampling.check_vocab(config.vocab_size)
    if len(prompt_ids.shape) != 2 or tuple(prompt_ids.shape) != tuple(prompt_mask.shape):
        raise SamplingError(
            f"prompt_ids {tuple(prompt_ids.shape)} and prompt_mask {tuple(prompt_mask.shape)} must both be [B, P]"
        )
    if prompt_ids.shape[1] == 0:
        raise SamplingError("prompt_ids has 0 columns; every prompt needs at least one token")
    width = prompt_ids.shape[1] if bucketed else bucket_length(prompt_ids.shape[1])
    if prompt_index is None:
        prompt_index = np.arange(prompt_ids.shape[0], dtype=np.int32)
    if tuple(prompt_index.shape) != (prompt_ids.shape[0],):
        raise SamplingError(f"prompt_index {tuple(prompt_index.shape)} must be [B] = [{prompt_ids.shape[0]}]")
    return _generate_jit(
        params,
        _pad_prompt(prompt_ids, width),
        _pad_prompt(prompt_mask, width),
        prompt_index,
        rng,
        config=config,
        sampling=sampling,
        num_samples=int(num_samples),
    )


# ----------------------------------------------------------------------------- text
def completion_texts(tokenizer, tokens, mask, eos_token_ids: Sequence[int] | None = None) -> list[str]:
    """Decode each row's completion: the masked tokens, minus a terminating EOS.

    Decoded with skip_special_tokens=False on purpose: the rewards compare the stripped
    text with "0" / "1", and a completion such as "<|im_start|>1" must not pass for "1".
    Only the EOS that ended the row is dropped (eos_token_ids, default the tokenizer's
    eos_token_id), so "1<|im_end|>" decodes to "1".
    """
    if eos_token_ids is None:
        if tokenizer.eos_token_id is None:
            raise SamplingError("completion_texts: tokenizer has no eos_token_id; pass eos_token_ids")
        eos_token_ids = (tokenizer.eos_token_id,)
    eos = set(int(t) for t in eos_token_ids)
    tokens, mask = np.asarray(tokens), np.asarray(mask).astype(bool)
    if tokens.shape != mask.shape:
        raise SamplingError(f"completion_texts: tokens {tokens.shape} and mask {mask.shape} differ in shape")
    texts = []
    for row, row_mask in zip(tokens, mask):
        ids = [int(t) for t in row[row_mask]]
        if ids and ids[-1] in eos:
            ids = ids[:-1]
        texts.append(tokenizer.decode(ids, skip_special_tokens=False))
    return texts
