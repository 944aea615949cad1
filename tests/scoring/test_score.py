"""The score reads two LM-head columns; it must equal the full-logit difference."""

import jax
import numpy as np
import pytest

from prorank_jax import hf, model
from prorank_jax.score import rerank_scores
from tests.helpers.hf_models import PARITY_CONFIGS, left_padded_batch, make_hf_model, torch_logits

YES, NO = 17, 42


@pytest.mark.parametrize("name", ["qwen2-mha-tied", "qwen2-gqa2-untied", "qwen3-gqa7-bias"])
def test_score_equals_logit_difference_of_full_forward_and_transformers(tmp_path, name):
    torch_model = make_hf_model(tmp_path, **PARITY_CONFIGS[name])
    config, params = hf.load(tmp_path)
    ids, mask, positions = left_padded_batch(config.vocab_size, [12, 5, 9], seed=4)
    scores = np.asarray(jax.jit(rerank_scores, static_argnums=(1, 4, 5))(params, config, ids, mask, YES, NO))
    full = np.asarray(model.full_logits(params, config, ids, mask))
    np.testing.assert_allclose(scores, full[:, -1, YES] - full[:, -1, NO], atol=1e-5)
    ref = torch_logits(torch_model, ids, mask, positions)
    np.testing.assert_allclose(scores, ref[:, -1, YES] - ref[:, -1, NO], atol=1e-4)
    assert scores.dtype == np.float32
