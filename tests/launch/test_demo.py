"""The README's main job (`prorank demo`) end to end, with a few steps per stage."""

import json

from launch.demo import run_demo


def test_demo_runs_both_stages_evaluates_exports_and_plots(tmp_path):
    summary = run_demo(tmp_path, grpo_steps=4, score_steps=4, top_k=10)
    assert set(summary["evaluation"]) == {"BM25 (first stage)", "BM25 + warm start", "BM25 + stage 1 (GRPO)",
                                          "BM25 + stage 2 (score)"}
    for row in summary["evaluation"].values():
        assert 0.0 <= row["nDCG@10"] <= 1.0
    # BM25's own numbers come from the bundled data, not from the models
    assert summary["evaluation"]["BM25 (first stage)"]["nDCG@10"] > 0.5
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "export" / "model.safetensors").exists()
    assert json.loads((tmp_path / "summary.json").read_text())["export"] == str(tmp_path / "export")
