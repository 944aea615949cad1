"""Real checkpoint configs in stage 1: a list of EOS ids, and one length policy for prompts.

* A config.json with a list of EOS ids (as many hub checkpoints have) loads, its config
  hashes (it is a static jit argument), it samples and trains, and a completion ends at
  any EOS id of config.json, generation_config.json or the tokenizer.
* On the Qwen2.5 stage-1 shapes (max_length 512 + the prompt template) the pipeline pads a
  batch to its length bucket and the sampler prefills exactly that width: before, it
  re-padded the top bucket to the next power of two.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml

from prorank_jax import hf, model, sampling, training
from prorank_jax.config import ModelConfig
from prorank_jax.data import bundled_data_dir
from prorank_jax.bundled import bundled_tokenizer_dir
from prorank_jax.data.examples import PairExample
from prorank_jax.data.pipeline import DataConfig, make_stage1_iterator
from prorank_jax.pretrained import ModelSource, generation_eos_token_ids, load_model, load_tokenizer
from prorank_jax.prompts import RerankPrompt
from rl.config import GRPOConfig
from rl.rollout import rollout, sampling_config
from rl.train import grpo_loss

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(bundled_tokenizer_dir(), ModelConfig.from_hf(bundled_data_dir() / "tiny_model.json"))


def _prompts(tokenizer, config, n, max_length=112, document_words=0):
    prompt = RerankPrompt(tokenizer, max_length, config.max_position_embeddings)
    examples = [PairExample(str(i), str(i), f"question number {i}",
                            f"an answer {i} " + " ".join(f"w{j}" for j in range(document_words)), i % 2)
                for i in range(n)]
    data = DataConfig(source="bundled", batch_size=n, max_length=max_length, shuffle=False)
    return prompt, next(iter(make_stage1_iterator(examples, prompt, data, training=False)))


def test_eos_list_config_hashes_and_round_trips():
    base = ModelConfig.from_hf(bundled_data_dir() / "tiny_model.json").to_hf()
    config = ModelConfig.from_hf(dict(base, eos_token_id=[3, 5]))
    assert config.eos_token_id == (3, 5) and config.eos_token_ids == (3, 5)
    assert hash(config) == hash(ModelConfig.from_hf(dict(base, eos_token_id=[3, 5])))
    assert config.to_hf()["eos_token_id"] == [3, 5]
    assert ModelConfig.from_hf(dict(base, eos_token_id=7)).eos_token_ids == (7,)
    with pytest.raises(ValueError, match="eos_token_id=\\[3, 'x'\\]"):
        ModelConfig.from_hf(dict(base, eos_token_id=[3, "x"]))


def test_eos_list_checkpoint_loads_samples_and_trains_and_stops_at_every_eos(tmp_path, tokenizer):
    small = ModelConfig.from_hf(bundled_data_dir() / "tiny_model.json")
    params = model.init_params(small, jax.random.key(1), init_std=0.3)
    _, batch = _prompts(tokenizer, small, 4)
    greedy = sampling.SamplingConfig(max_new_tokens=3, eos_token_ids=(tokenizer.eos_token_id,),
                                     pad_token_id=tokenizer.pad_token_id, greedy=True)
    free = np.asarray(sampling.sample(params, small, batch["input_ids"], batch["attention_mask"], jax.random.key(0),
                                      greedy).tokens)
    # Two EOS ids, each the first occurrence of a token in its own row (row_a at step_a for
    # config.json, row_b at step_b for generation_config.json) and absent from the other
    # row up to its own stop; neither is the tokenizer's EOS.
    (row_a, step_a), (row_b, step_b) = _two_stops(free, tokenizer.eos_token_id)
    config_eos, generation_eos = int(free[row_a, step_a]), int(free[row_b, step_b])

    folder = hf.save(params, small.replace(eos_token_id=[config_eos]), tmp_path / "model")
    generation = json.loads((folder / "generation_config.json").read_text())
    (folder / "generation_config.json").write_text(json.dumps(dict(generation, eos_token_id=[generation_eos])))
    source = ModelSource(path=str(folder), tokenizer=str(bundled_tokenizer_dir()))
    config, loaded, _ = load_model(source)
    assert config.eos_token_id == (config_eos,)
    grpo = GRPOConfig(group_size=2, max_completion_tokens=3, beta=0.04, updates_per_rollout=2)
    sampler = sampling_config(grpo, tokenizer, config, generation_eos_token_ids(source))
    assert set(sampler.eos_token_ids) == {tokenizer.eos_token_id, config_eos, generation_eos}

    stopped = sampling.sample(loaded, config, batch["input_ids"], batch["attention_mask"], jax.random.key(0),
                              dataclasses.replace(sampler, greedy=True))
    lengths, finished = np.asarray(stopped.lengths), np.asarray(stopped.finished)
    assert [lengths[row_a], lengths[row_b]] == [step_a + 1, step_b + 1]  # each ends at its own EOS id
    assert finished[row_a] and finished[row_b]

    train_batch, _ = rollout(loaded, loaded, config, batch, jax.random.key(2), grpo, sampler, tokenizer)
    tx = training.make_optimizer(training.OptimizerConfig(learning_rate=1e-2, warmup_steps=0), 2)
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1, 1), ("data", "fsdp", "tensor"))
    state = training.init_train_state(loaded, tx)
    abstract = jax.eval_shape(lambda p: training.init_train_state(p, tx), loaded)
    step = training.make_train_step(functools.partial(grpo_loss, config=config, grpo=grpo), tx, mesh=mesh,
                                    state_sharding=training.state_shardings(abstract, tx, mesh),
                                    batch_example=train_batch, donate=False)
    new_state, metrics = step(state, train_batch)
    assert np.isfinite(float(metrics["loss"])) and int(new_state.skipped) == 0


def _two_stops(tokens: np.ndarray, tokenizer_eos: int):
    """Two (row, step) places whose tokens can serve as EOS ids ending exactly those rows there."""
    def first(r, s):
        return int(tokens[r, s]) not in tokens[r, :s] and int(tokens[r, s]) != tokenizer_eos \
            and tokenizer_eos not in tokens[r, :s]
    places = [(r, s) for r in range(tokens.shape[0]) for s in range(tokens.shape[1]) if first(r, s)]
    for a in places:
        for b in places:
            ta, tb = int(tokens[a]), int(tokens[b])
            if a[0] != b[0] and ta != tb and ta not in tokens[b[0], :b[1] + 1] and tb not in tokens[a[0], :a[1] + 1]:
                return a, b
    raise AssertionError(f"no two rows of the random model's greedy tokens end apart: {tokens}")


def test_qwen25_stage1_prompts_are_prefilled_at_their_bucket(tokenizer, monkeypatch):
    raw = yaml.safe_load((REPO / "launch" / "configs" / "grpo_qwen25_05b.yaml").read_text())
    qwen_positions = 32768  # Qwen2.5-0.5B's max_position_embeddings
    small = ModelConfig.from_hf(bundled_data_dir() / "tiny_model.json").replace(max_position_embeddings=qwen_positions)
    prompt, batch = _prompts(tokenizer, small, 2, max_length=raw["data"]["max_length"], document_words=600)
    width = batch["input_ids"].shape[1]
    assert width == -(-prompt.max_total_length // 8) * 8 > 512  # the top bucket: 512 + template, rounded up to 8
    assert sampling.bucket_length(width) == 1024  # what the sampler prefilled before: a second padding

    prefilled = []
    generate = sampling._generate_jit
    monkeypatch.setattr(sampling, "_generate_jit", lambda params, ids, *a, **kw: prefilled.append(ids.shape[1])
                        or generate(params, ids, *a, **kw))
    params = model.init_params(small, jax.random.key(0))
    grpo = GRPOConfig(group_size=2, max_completion_tokens=1, beta=0.0)
    rollout(params, params, small, batch, jax.random.key(0), grpo, sampling_config(grpo, tokenizer, small), tokenizer)
    assert prefilled == [width]
