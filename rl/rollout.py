"""One GRPO rollout: sample G completions per prompt, reward them, and assemble the
train batch (advantages, reference and old log-probs) for the update step.

Each process holds its own prompts (the stage-1 iterator is sharded per process), while
the parameters are global arrays that may be split over processes (mesh.fsdp or
mesh.tensor spanning hosts). So the prompts enter the jitted sampling and log-prob calls
as global arrays (sharding.shard_batch: each process contributes its rows), and what
comes back is read as this process's rows again (sharding.process_local_rows). Passing
the local NumPy arrays instead would tell JAX they are the same value on every process,
and the collectives would mix different processes' prompts. Rewards, advantages and the
train batch stay host-local, as the train step expects.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from prorank_jax import model, sampling
from prorank_jax import sharding as shd
from prorank_jax.config import ModelConfig
from rl.advantages import group_advantages
from rl.config import GRPOConfig
from rl.rewards import combined_rewards


def completion_logprobs(params, config: ModelConfig, prompt_ids, prompt_mask, completion_ids, completion_mask,
                        temperature: float, with_entropy: bool = False):
    """Per-token log-probs [N, T] of completion_ids after left-padded prompts, at a temperature.

    prompt_ids / prompt_mask are [B, P] with N = B * G: rows b * G ... b * G + G - 1 of the
    completions continue prompt b (np.repeat order; G = 1 takes one prompt per completion).
    Each prompt runs through the model once and its KV cache is shared by its G
    completions, so the update costs B prompts plus N completions rather than N whole
    sequences (G times less for one-token answers). Only the T completion positions are
    projected onto the vocabulary.
    """
    b, n, t = prompt_ids.shape[0], completion_ids.shape[0], completion_ids.shape[1]
    if n % b:
        raise ValueError(f"completion_logprobs: {n} completions do not split into groups over {b} prompts")
    group = n // b
    cache = model.init_cache(config, b, prompt_ids.shape[1])
    prompt_hidden, cache = model.forward_hidden(params, config, prompt_ids, prompt_mask, cache=cache)
    # The last prompt column predicts the first completion token (prompts are left padded).
    hidden = jnp.repeat(prompt_hidden[:, -1:], group, axis=0)
    if t > 1:
        rows = jnp.repeat(jnp.arange(b), group)
        completion_hidden, _ = model.extend_hidden(params, config, model.take_cache_rows(cache, rows),
                                                   completion_ids[:, :-1], completion_mask[:, :-1])
        hidden = jnp.concatenate([hidden, completion_hidden], axis=1)
    return model.token_logprobs(params, config, hidden, completion_ids, temperature, with_entropy=with_entropy)


@functools.partial(jax.jit, static_argnames=("config", "temperature"))
def _logprobs_jit(params, prompt_ids, prompt_mask, completion_ids, completion_mask, *, config, temperature):
    return completion_logprobs(params, config, prompt_ids, prompt_mask, completion_ids, completion_mask, temperature)


def eos_token_ids(tokenizer: Any, config: ModelConfig, extra: Sequence[int] = ()) -> tuple[int, ...]:
    """Every id that ends a completion: the tokenizer's EOS, the model config's EOS ids and
    `extra` (generation_config.json's, see pretrained.generation_eos_token_ids), each once."""
    ids: list[int] = []
    for source in ((tokenizer.eos_token_id,), config.eos_token_ids, tuple(extra)):
        ids += [int(t) for t in source if t is not None and int(t) not in ids]
    if not ids:
        raise ValueError("no EOS token id: neither the tokenizer, the model config nor generation_config.json names one")
    return tuple(ids)


def sampling_config(grpo: GRPOConfig, tokenizer: Any, config: ModelConfig,
                    extra_eos_token_ids: Sequence[int] = ()) -> sampling.SamplingConfig:
    eos_ids = eos_token_ids(tokenizer, config, extra_eos_token_ids)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    return sampling.SamplingConfig(
        max_new_tokens=grpo.max_completion_tokens, eos_token_ids=eos_ids, pad_token_id=int(pad),
        temperature=grpo.temperature, top_p=grpo.top_p, top_k=grpo.top_k,
    )


def rollout(
    params,
    ref_params,
    config: ModelConfig,
    prompts: Mapping[str, np.ndarray],
    rng: jax.Array,
    grpo: GRPOConfig,
    sampler: sampling.SamplingConfig,
    tokenizer: Any,
) -> tuple[dict[str, Any], dict[str, float]]:
    """prompts: {"input_ids" [B, P], "attention_mask" [B, P], "label" [B] (0/1)}, padded by the
    stage-1 pipeline to a length bucket P, which is the width the sampler prefills.

    Returns the train batch (B prompt rows, N = B * G completion rows) and host metrics of the rollout.
    """
    g = grpo.group_size
    mesh = shd.mesh_of(params)
    prompt_ids, prompt_mask = agree_width(np.asarray(prompts["input_ids"]), np.asarray(prompts["attention_mask"]))
    if mesh is None:  # plain single-device params: local arrays are the whole batch
        to_device, to_host = dict, lambda x: np.asarray(x)
        prompt_index = np.arange(prompt_ids.shape[0], dtype=np.int32)
    else:
        to_device = functools.partial(shd.shard_batch, mesh=mesh)
        to_host = functools.partial(shd.process_local_rows, mesh=mesh)
        prompt_index = shd.global_row_index(prompt_ids.shape[0], mesh)
    device_prompts = to_device({"ids": prompt_ids, "mask": prompt_mask})
    out = sampling.sample(params, config, device_prompts["ids"], device_prompts["mask"], rng, sampler, g,
                          prompt_index=prompt_index, bucketed=True)
    tokens, completion_mask = to_host(out.tokens), to_host(out.completion_mask)
    texts = sampling.completion_texts(tokenizer, tokens, completion_mask, sampler.eos_token_ids)
    labels = [grpo.allowed_labels[int(x)] for x in np.repeat(np.asarray(prompts["label"]), g)]  # label i's answer
    total, per_reward = combined_rewards(texts, labels, dict(grpo.reward_weights), allowed_labels=grpo.allowed_labels)
    advantages = group_advantages(jnp.asarray(total), g, scale=grpo.advantage_scale, ddof=grpo.std_ddof,
                                  eps=grpo.advantage_eps)

    batch: dict[str, Any] = {
        # One row per prompt; completion rows b * g ... b * g + g - 1 belong to prompt b.
        "prompt_ids": prompt_ids,
        "prompt_mask": prompt_mask,
        "completion_ids": tokens,
        "completion_mask": completion_mask,
        "advantages": np.asarray(advantages, np.float32),
    }
    completions = to_device({"ids": tokens, "mask": completion_mask})
    args = (device_prompts["ids"], device_prompts["mask"], completions["ids"], completions["mask"])
    if grpo.beta > 0:
        batch["ref_logp"] = to_host(_logprobs_jit(ref_params, *args, config=config, temperature=grpo.temperature))
    if grpo.updates_per_rollout > 1:
        # The policy that sampled: the ratio of later updates is measured against it.
        batch["old_logp"] = to_host(_logprobs_jit(params, *args, config=config, temperature=grpo.temperature))

    lengths = completion_mask.sum(axis=1)
    grouped = np.asarray(total).reshape(-1, g)
    metrics = {
        "reward": float(np.mean(total)),
        "reward_std_in_group": float(np.mean(grouped.std(axis=1))),
        "format_rate": float(np.mean(per_reward["format"])) if "format" in per_reward else float("nan"),
        "accuracy": float(np.mean(per_reward["correctness"])) if "correctness" in per_reward else float("nan"),
        "completion_length": float(np.mean(lengths)),
        "groups_without_signal": float(np.mean(grouped.std(axis=1) == 0)),
    }
    return batch, metrics


def agree_width(ids: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Left-pad this process's [B, P] prompts to the widest P over all processes.

    Each process's iterator pads its batch to its own length bucket, but a global array
    needs one shape; the widest local bucket is a bucket too, so no prompt is padded to a
    width outside the pipeline's length policy.
    """
    width = shd.max_over_processes(ids.shape[1])
    pad = ((0, 0), (width - ids.shape[1], 0))
    return np.pad(ids, pad), np.pad(mask, pad)
