"""The group sampler against step-by-step full forwards of the same decoder."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prorank_jax import model
from prorank_jax import sampling as S
from prorank_jax.config import ModelConfig
from tests.helpers.env import xla_flags

REPO = Path(__file__).resolve().parents[2]
PROMPT_LENGTHS = (9, 5, 2)  # left padding of 0, 4 and 7 tokens
MAX_NEW = 6
PAD = 0


def tiny_config() -> ModelConfig:
    return ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=8)


def random_params(config: ModelConfig, seed: int = 0):
    """Random params with HF's layout; large enough weights that the top logits rarely tie.

    Built in numpy from the shapes of init_params (eval_shape), which is much faster
    than running the flax initialiser on CPU.
    """
    shapes = jax.eval_shape(lambda: model.init_params(config, jax.random.key(0)))
    rs = np.random.RandomState(seed)

    def fill(path, leaf):
        if path[-1].key == "weight":  # norms around 1, randomised so they matter
            return (1.0 + 0.2 * rs.randn(*leaf.shape)).astype(np.float32)
        return (0.3 * rs.randn(*leaf.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def left_padded_prompts(lengths, vocab_size: int, seed: int = 0):
    rs = np.random.RandomState(seed)
    width = max(lengths)
    ids = np.full((len(lengths), width), PAD, np.int32)
    mask = np.zeros((len(lengths), width), np.int32)
    for row, n in enumerate(lengths):
        ids[row, width - n:] = rs.randint(4, vocab_size, n)
        mask[row, width - n:] = 1
    return ids, mask


_full_logits = jax.jit(model.full_logits, static_argnums=1)
_sequence_logprobs = jax.jit(model.sequence_logprobs, static_argnums=(1, 4))


def reference_greedy(params, config, ids, mask, max_new, eos_ids):
    """Argmax decoding by a full forward over the whole growing sequence at every step.

    The sequence is right-padded to a fixed width (mask 0) so that one compiled forward
    serves every step; causal attention makes the padding invisible to earlier positions.
    """
    batch, width = ids.shape
    seq = np.concatenate([ids, np.full((batch, max_new), PAD, np.int32)], axis=1)
    seq_mask = np.concatenate([mask, np.zeros((batch, max_new), np.int32)], axis=1)
    done = np.zeros(batch, bool)
    completion_mask = np.zeros((batch, max_new), np.int32)
    for t in range(max_new):
        logits = np.asarray(_full_logits(params, config, seq, seq_mask))[:, width + t - 1]
        token = np.where(done, PAD, logits.argmax(-1))
        seq[:, width + t] = token
        seq_mask[:, width + t] = 1
        completion_mask[:, t] = ~done
        done |= np.isin(token, eos_ids)
    return seq[:, width:], completion_mask


def check_stop_semantics(out: S.SampleOutput, eos_ids):
    """Mask is 1 up to and including the first EOS, tokens after it are pad, logprobs 0 there."""
    tokens, mask = np.asarray(out.tokens), np.asarray(out.completion_mask)
    for row in range(tokens.shape[0]):
        hits = np.flatnonzero(np.isin(tokens[row], eos_ids) & (mask[row] == 1))
        stop = hits[0] + 1 if len(hits) else tokens.shape[1]
        np.testing.assert_array_equal(mask[row], np.arange(tokens.shape[1]) < stop)
        assert (tokens[row, stop:] == PAD).all()
        assert (np.asarray(out.logprobs)[row, stop:] == 0).all()
        assert bool(out.finished[row]) == bool(len(hits))
        assert int(out.lengths[row]) == stop


@pytest.fixture(scope="module")
def setup():
    config = tiny_config()
    params = random_params(config)
    ids, mask = left_padded_prompts(PROMPT_LENGTHS, config.vocab_size)
    return config, params, ids, mask


GREEDY = S.SamplingConfig(max_new_tokens=MAX_NEW, eos_token_ids=(1,), pad_token_id=PAD, temperature=0.0)
# Filtered sampling at T != 1; the returned log-probs must still be the unfiltered ones.
# Its EOS ids are tokens this model samples often, so that some rows stop early and some do not.
FILTERED = S.SamplingConfig(max_new_tokens=MAX_NEW, eos_token_ids=(20, 44), pad_token_id=PAD,
                            temperature=0.7, top_k=5, top_p=0.9)
GROUP = 4


@pytest.fixture(scope="module")
def greedy_out(setup):
    config, params, ids, mask = setup
    return S.sample(params, config, ids, mask, jax.random.key(0), GREEDY)


@pytest.fixture(scope="module")
def filtered_out(setup):
    config, params, ids, mask = setup
    return S.sample(params, config, ids, mask, jax.random.key(3), FILTERED, num_samples=GROUP)


# ----------------------------------------------------------------------------- greedy + EOS
def test_greedy_with_cache_equals_argmax_of_full_forwards(setup, greedy_out):
    config, params, ids, mask = setup
    tokens, completion_mask = reference_greedy(params, config, ids, mask, MAX_NEW, GREEDY.eos_token_ids)
    np.testing.assert_array_equal(np.asarray(greedy_out.tokens), tokens)
    np.testing.assert_array_equal(np.asarray(greedy_out.completion_mask), completion_mask)
    check_stop_semantics(greedy_out, GREEDY.eos_token_ids)


def test_eos_ends_the_completion_and_is_included(setup, greedy_out):
    config, params, ids, mask = setup
    free = np.asarray(greedy_out.tokens)
    # An EOS that the greedy path first emits at step k >= 2 of some row.
    row, step = next((r, t) for r in range(free.shape[0]) for t in range(2, MAX_NEW)
                     if free[r, t] not in free[r, :t])
    eos = int(free[row, step])
    stopping = S.SamplingConfig(max_new_tokens=MAX_NEW, eos_token_ids=(eos,), pad_token_id=PAD, greedy=True)
    out = S.sample(params, config, ids, mask, jax.random.key(0), stopping)

    np.testing.assert_array_equal(np.asarray(out.completion_mask)[row], np.arange(MAX_NEW) <= step)
    np.testing.assert_array_equal(np.asarray(out.tokens)[row, :step + 1], free[row, :step + 1])
    assert (np.asarray(out.tokens)[row, step + 1:] == PAD).all()
    assert bool(out.finished[row]) and int(out.lengths[row]) == step + 1
    tokens, completion_mask = reference_greedy(params, config, ids, mask, MAX_NEW, (eos,))
    np.testing.assert_array_equal(np.asarray(out.tokens), tokens)
    np.testing.assert_array_equal(np.asarray(out.completion_mask), completion_mask)
    check_stop_semantics(out, (eos,))


def test_top_k_1_sampling_equals_greedy_for_every_sample(setup, greedy_out):
    config, params, ids, mask = setup
    sampling = S.SamplingConfig(max_new_tokens=MAX_NEW, eos_token_ids=GREEDY.eos_token_ids, pad_token_id=PAD,
                                top_k=1, temperature=1.3)
    out = S.sample(params, config, ids, mask, jax.random.key(5), sampling, num_samples=2)
    # Both samples of prompt i (rows 2i, 2i+1) follow prompt i's greedy path.
    np.testing.assert_array_equal(np.asarray(out.tokens), np.repeat(np.asarray(greedy_out.tokens), 2, axis=0))
    np.testing.assert_array_equal(np.asarray(out.completion_mask),
                                  np.repeat(np.asarray(greedy_out.completion_mask), 2, axis=0))


@pytest.mark.parametrize("change", [dict(top_k=1, temperature=1.3), dict(top_p=1e-6, temperature=1.0),
                                    dict(greedy=True, temperature=0.5)], ids=["top_k=1", "top_p=1e-6", "greedy"])
def test_degenerate_filters_choose_the_argmax(change):
    sampling = S.SamplingConfig(max_new_tokens=1, eos_token_ids=(1,), pad_token_id=0, **change)
    logits = 3.0 * jax.random.normal(jax.random.key(0), (512, 64))
    step = jax.jit(S.choose_tokens, static_argnums=2)
    for seed in range(3):
        tokens, logprobs = step(logits, jax.random.key(seed), sampling)
        np.testing.assert_array_equal(np.asarray(tokens), np.asarray(logits).argmax(-1))
        # The log-probs stay those of the unfiltered distribution at the temperature.
        expected = jax.nn.log_softmax(logits / sampling.temperature)[jnp.arange(512), tokens]
        np.testing.assert_allclose(np.asarray(logprobs), np.asarray(expected), atol=1e-6)


# ----------------------------------------------------------------------------- sampling
def completed_sequences(ids, mask, out: S.SampleOutput, group: int):
    seq = np.concatenate([np.repeat(ids, group, axis=0), np.asarray(out.tokens)], axis=1)
    seq_mask = np.concatenate([np.repeat(mask, group, axis=0), np.asarray(out.completion_mask)], axis=1)
    return seq, seq_mask


def test_logprobs_equal_full_forward_at_sampling_temperature(setup, filtered_out):
    config, params, ids, mask = setup
    seq, seq_mask = completed_sequences(ids, mask, filtered_out, GROUP)
    recomputed = np.asarray(_sequence_logprobs(params, config, seq, seq_mask, FILTERED.temperature))
    recomputed = recomputed[:, ids.shape[1] - 1:]  # the predictions of the completion tokens
    real = np.asarray(filtered_out.completion_mask).astype(bool)
    assert real.sum() > GROUP * len(PROMPT_LENGTHS)  # more than one token per row is checked
    np.testing.assert_allclose(np.asarray(filtered_out.logprobs)[real], recomputed[real], atol=1e-5)
    check_stop_semantics(filtered_out, FILTERED.eos_token_ids)
    finished = np.asarray(filtered_out.finished)
    assert finished.any() and not finished.all()


def nucleus(logits: np.ndarray, top_k: int, top_p: float) -> set[int]:
    """The tokens top-k then top-p filtering may return, from HF's definition, in numpy."""
    order = np.argsort(-logits)[:top_k]
    probs = np.exp(logits[order] - logits[order].max())
    probs /= probs.sum()
    mass_above = np.cumsum(probs) - probs
    return set(order[mass_above < top_p].tolist())


def test_sampled_tokens_lie_in_the_top_k_and_nucleus(setup, filtered_out):
    config, params, ids, mask = setup
    seq, seq_mask = completed_sequences(ids, mask, filtered_out, GROUP)
    logits = np.asarray(_full_logits(params, config, seq, seq_mask)) / FILTERED.temperature
    tokens, real = np.asarray(filtered_out.tokens), np.asarray(filtered_out.completion_mask).astype(bool)
    width = ids.shape[1]
    for row, t in zip(*np.nonzero(real)):
        step_logits = logits[row, width + t - 1]
        assert tokens[row, t] in np.argsort(-step_logits)[:FILTERED.top_k]
        assert tokens[row, t] in nucleus(step_logits, FILTERED.top_k, FILTERED.top_p)


def test_group_rows_differ_and_rng_is_reproducible(setup, filtered_out):
    config, params, ids, mask = setup
    tokens = np.asarray(filtered_out.tokens)
    assert tokens.shape == (len(PROMPT_LENGTHS) * GROUP, MAX_NEW)
    for prompt in range(len(PROMPT_LENGTHS)):
        group = tokens[prompt * GROUP:(prompt + 1) * GROUP]
        assert len({tuple(r) for r in group}) > 1, f"all {GROUP} samples of prompt {prompt} are identical"

    again = S.sample(params, config, ids, mask, jax.random.key(3), FILTERED, num_samples=GROUP)
    for a, b in zip(again, filtered_out):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    other = S.sample(params, config, ids, mask, jax.random.key(4), FILTERED, num_samples=GROUP)
    assert (np.asarray(other.tokens) != tokens).any()


# ----------------------------------------------------------------------------- filters
def test_top_p_filter_keeps_the_smallest_set_reaching_top_p():
    logits = jax.random.normal(jax.random.key(0), (64, 50)) * 2.0
    for top_p in (0.05, 0.5, 0.9, 0.999):
        kept = np.asarray(jax.jit(S.top_p_filter, static_argnums=1)(logits, top_p)) > -1e29
        for row in range(logits.shape[0]):
            assert set(np.flatnonzero(kept[row]).tolist()) == nucleus(np.asarray(logits[row]), 50, top_p)
    np.testing.assert_array_equal(np.asarray(S.top_p_filter(logits, 1.0)), np.asarray(logits))


def test_top_k_filter_keeps_the_k_largest():
    logits = jax.random.normal(jax.random.key(1), (16, 30))
    kept = np.asarray(S.top_k_filter(logits, 4)) > -1e29
    expected = np.zeros_like(kept)
    np.put_along_axis(expected, np.argsort(-np.asarray(logits), axis=-1)[:, :4], True, axis=-1)
    np.testing.assert_array_equal(kept, expected)
    np.testing.assert_array_equal(np.asarray(S.top_k_filter(logits, 30)), np.asarray(logits))


# ----------------------------------------------------------------------------- buckets
def test_bucket_length():
    assert [S.bucket_length(n) for n in (0, 1, 16, 17, 100, 128, 129)] == [16, 16, 16, 32, 128, 128, 256]
    assert S.bucket_length(3, minimum=1) == 4
    with pytest.raises(S.SamplingError, match="n="):
        S.bucket_length(-1)


def test_prompt_widths_in_one_bucket_share_one_compilation(setup, greedy_out):
    config, params, ids, mask = setup
    wider_ids, wider_mask = np.pad(ids, ((0, 0), (4, 0))), np.pad(mask, ((0, 0), (4, 0)))  # width 13
    compiled = S._generate_jit._cache_size()
    out = S.sample(params, config, wider_ids, wider_mask, jax.random.key(0), GREEDY)
    assert S._generate_jit._cache_size() == compiled
    np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(greedy_out.tokens))


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize("field, value", [
    ("max_new_tokens", 0), ("eos_token_ids", ()), ("eos_token_ids", (-1,)), ("pad_token_id", -2),
    ("temperature", -0.5), ("temperature", float("nan")), ("top_p", 0.0), ("top_p", 1.5),
    ("top_k", -1), ("top_k", 2.0), ("greedy", 1),
])
def test_config_errors_name_the_field(field, value):
    kwargs = dict(max_new_tokens=4, eos_token_ids=(1,), pad_token_id=0)
    kwargs[field] = value
    with pytest.raises(S.SamplingError, match=f"SamplingConfig.{field}="):
        S.SamplingConfig(**kwargs)


def test_eos_list_becomes_a_hashable_tuple():
    config = S.SamplingConfig(max_new_tokens=2, eos_token_ids=[5, 6], pad_token_id=0)
    assert config.eos_token_ids == (5, 6)
    assert config == S.SamplingConfig(max_new_tokens=2, eos_token_ids=(5, 6), pad_token_id=0)
    hash(config)  # a static jit argument must hash


def test_sample_rejects_ids_outside_the_vocabulary(setup):
    config, params, ids, mask = setup
    for bad, field in ((dict(eos_token_ids=(64,)), "eos_token_ids"), (dict(pad_token_id=99), "pad_token_id")):
        sampling = S.SamplingConfig(**{"max_new_tokens": 2, "eos_token_ids": (1,), "pad_token_id": 0, **bad})
        with pytest.raises(S.SamplingError, match=f"SamplingConfig.{field}=.*vocab_size=64"):
            S.sample(params, config, ids, mask, jax.random.key(0), sampling)
    with pytest.raises(S.SamplingError, match="num_samples"):
        S.sample(params, config, ids, mask, jax.random.key(0), GREEDY, num_samples=0)


# ----------------------------------------------------------------------------- text
def test_completion_texts_drop_only_the_terminating_eos(tmp_path):
    from tests.helpers.tokenizer import build_test_tokenizer
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(build_test_tokenizer(tmp_path))
    one, zero = tok.encode("1", add_special_tokens=False), tok.encode("0", add_special_tokens=False)
    eos, pad = tok.eos_token_id, tok.pad_token_id
    start = tok.convert_tokens_to_ids("<|im_start|>")
    rows = [
        (one + [eos, pad, pad], [1, 1, 0, 0]),          # stopped: "1"
        ([start] + zero + [eos, pad], [1, 1, 1, 0]),    # a special token before the answer stays visible
        (zero + one + zero + one, [1, 1, 1, 1]),        # cut by the budget: everything decoded
    ]
    tokens, mask = np.array([r for r, _ in rows]), np.array([m for _, m in rows])
    assert S.completion_texts(tok, tokens, mask) == ["1", "<|im_start|>0", "0101"]
    assert S.completion_texts(tok, tokens, mask, eos_token_ids=(start,))[1] == "<|im_start|>0<|im_end|>"


# ----------------------------------------------------------------------------- mesh
_MESH_SCRIPT = """
import json, jax, numpy as np
from prorank_jax import sampling as S, sharding
from tests.prorank_jax.test_sampling import GREEDY, left_padded_prompts, random_params, tiny_config
assert jax.device_count() == 8, jax.devices()
config = tiny_config()
params = random_params(config)
ids, mask = left_padded_prompts((9, 5, 2, 7), config.vocab_size, seed=1)
mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
sharded_params = jax.device_put(params, sharding.param_shardings(params, mesh))
put = lambda x: jax.device_put(x, sharding.batch_sharding(mesh, 2))
result = {}
for where, args in (("mesh", (sharded_params, put(ids), put(mask))), ("single", (params, ids, mask))):
    out = S.sample(args[0], config, args[1], args[2], jax.random.key(7), GREEDY, num_samples=2)
    result[where] = {k: np.asarray(v).tolist() for k, v in out._asdict().items()}
    result[where + "/devices"] = len(out.tokens.sharding.device_set)
result["embed_spec"] = str(sharded_params["model"]["embed_tokens"]["embedding"].sharding.spec)
print("RESULT" + json.dumps(result))
"""


def test_sharded_greedy_sampling_on_an_8_device_mesh_matches_single_device():
    """Params by param_shardings and prompts by batch_sharding on a (2, 2, 2) mesh of CPU devices.

    A subprocess, because the device count is fixed when jax is first imported.
    """
    env = dict(os.environ, XLA_FLAGS=xla_flags(devices=8), JAX_PLATFORMS="cpu",
               PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", _MESH_SCRIPT], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(next(l for l in proc.stdout.splitlines() if l.startswith("RESULT"))[len("RESULT"):])
    assert result["embed_spec"] == str(jax.sharding.PartitionSpec("tensor", "fsdp"))
    mesh, single = result["mesh"], result["single"]
    assert result["mesh/devices"] == 8  # the outputs stay distributed, not gathered to one device
    for key in ("tokens", "completion_mask", "lengths", "finished"):
        np.testing.assert_array_equal(mesh[key], single[key], err_msg=key)
    np.testing.assert_allclose(mesh["logprobs"], single["logprobs"], atol=1e-5)
