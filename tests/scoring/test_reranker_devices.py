"""The Reranker on 8 simulated CPU devices: the same scores as on one device, and each
batch really split over the devices (each device's shard holds its own rows).

A subprocess, because the device count is fixed when jax is first imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.helpers.env import xla_flags

REPO = Path(__file__).resolve().parents[2]

_SCRIPT = """
import json, jax, numpy as np
from prorank_jax import model
from prorank_jax.config import ModelConfig
from prorank_jax.data import bundled_data_dir, load_beir
from prorank_jax.bundled import bundled_tokenizer_dir
from prorank_jax.pretrained import load_tokenizer
from scoring.reranker import Reranker

assert jax.local_device_count() == 8, jax.devices()
config = ModelConfig.from_hf(bundled_data_dir() / "tiny_model.json")
params = model.init_params(config, jax.random.key(0), init_std=0.1)
tokenizer = load_tokenizer(bundled_tokenizer_dir(), config)
data = load_beir(bundled_data_dir(), "test")
qids, dids = sorted(data.queries), sorted(data.corpus)
queries = [data.queries[qids[i % 5]] for i in range(21)]
documents = [data.corpus[dids[7 * i % len(dids)]] for i in range(21)]
kw = dict(max_length=112, batch_size=8, show_progress=False)
one = Reranker(config, params, tokenizer, devices=jax.devices()[:1], **kw)
many = Reranker(config, params, tokenizer, **kw)
fsdp = Reranker(config, params, tokenizer, shard_params=True, **kw)

seen = []
score_fn = many._score_fn
def spy(p, ids, mask, slots=None):
    out = score_fn(p, ids, mask, slots)
    full = np.asarray(ids)
    shards = [(s.device.id, s.index[0].start or 0, np.asarray(s.data)) for s in ids.addressable_shards]
    seen.append({"rows": full.shape[0], "devices": len(ids.sharding.device_set),
                 "out_devices": len(out.sharding.device_set),
                 "shard_rows": sorted({d.shape[0] for _, _, d in shards}),
                 "own_rows": all(np.array_equal(d, full[start:start + d.shape[0]]) for _, start, d in shards),
                 "distinct_starts": len({start for _, start, _ in shards})})
    return out
many._score_fn = spy

result = {"embed_spec_fsdp": str(fsdp.params["model"]["embed_tokens"]["embedding"].sharding.spec),
          "param_devices": len(many.params["model"]["norm"]["weight"].sharding.device_set)}
for name, r in (("one", one), ("many", many), ("fsdp", fsdp)):
    result[name] = {}
    r.reuse_prefix = False
    result[name]["whole"] = r.predict(queries, documents).tolist()
    r.reuse_prefix = True
    result[name]["prefix"] = r.predict(queries, documents).tolist()
    r.reuse_prefix = None
    result[name]["rank"] = [(x.index, x.score) for x in r.rank(queries[0], documents, top_k=21)]
result["seen"] = seen
print("RESULT" + json.dumps(result))
"""


def test_reranker_on_8_devices_scores_as_on_one_and_splits_each_batch():
    env = dict(os.environ, XLA_FLAGS=xla_flags(devices=8), JAX_PLATFORMS="cpu",
               PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", _SCRIPT], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(next(l for l in proc.stdout.splitlines() if l.startswith("RESULT"))[len("RESULT"):])
    assert result["param_devices"] == 8  # replicated on every device
    assert "fsdp" in result["embed_spec_fsdp"]  # shard_params splits the weights
    for name in ("many", "fsdp"):
        for path in ("whole", "prefix"):
            np.testing.assert_allclose(result[name][path], result["one"][path], atol=1e-5, err_msg=f"{name}/{path}")
        got, want = result[name]["rank"], result["one"]["rank"]
        np.testing.assert_allclose([s for _, s in got], [s for _, s in want], atol=1e-5)
        assert [i for i, _ in got] == [i for i, _ in want]
    full = [s for s in result["seen"] if s["rows"] == 8]
    assert full, result["seen"]
    for s in full:  # a full batch of 8 rows: one row on each device, its own, and the output stays split
        assert s["devices"] == 8 and s["shard_rows"] == [1] and s["own_rows"] and s["distinct_starts"] == 8
        assert s["out_devices"] == 8
