"""Stage 1 learns the answer format on the bundled tiny default (random init, fixed seed)."""

import json

from launch import config as cfglib
from launch.train_grpo import run_grpo
from tests.helpers.run_watch import assert_mfu_of_the_run


def test_grpo_teaches_the_format_on_the_bundled_default(tmp_path):
    raw = cfglib.load_config("grpo_tiny", [f"out_dir={tmp_path}", "loop.progress_bar=false",
                                           "loop.eval_every=0", "loop.save_every=0"])
    summary = run_grpo(raw)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "format_rate" in r]
    # A random 1,536-token model almost never answers "0" or "1" at first...
    assert train[0]["format_rate"] < 0.1
    # ...and GRPO makes it answer in format nearly always by the end.
    assert train[-1]["format_rate"] >= 0.9
    assert summary["eval"]["format_rate"] >= 0.9  # greedy answers on held-out pairs
    assert all(r["update_skipped"] == 0.0 for r in train)
    assert max(r["kl"] for r in train) > 0.0  # the policy moved away from the reference
    assert (tmp_path / "hf" / "model.safetensors").exists() and (tmp_path / "summary.json").exists()
    # Stage 1's mfu counts its updates' FLOPs (updates_per_rollout per step) over the whole
    # step, sampling included.
    assert_mfu_of_the_run(tmp_path, train, updates_per_step=raw["grpo"]["updates_per_rollout"])
